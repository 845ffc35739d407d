"""The shard loader's batches are identical to the code path before the 512 px rework (same
values, same order) at 224 and 512 px: the oracle below is that code, copied verbatim."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from cxrjobs.data import transforms
from cxrjobs.data.shards import ShardDataset, passthrough
from cxrjobs.data.transforms import SCALE, SHIFT, prepare, rotate
from cxrjobs.specs.train import Augment

FINDINGS = ["Atelectasis", "Effusion", "Mass"]


# ----------------------------------------------------------------------------- the oracle
# ShardDataset.__getitems__ and transforms.prepare as they were (commit 1bcb730, rotation included).

def oracle_getitems(ds: ShardDataset, indices):
    idx = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(idx), 1, ds.image_size, ds.image_size), dtype=np.uint8)
    shards = ds.shard[idx]
    for k in np.unique(shards):
        where = np.nonzero(shards == k)[0]
        offs = ds.offset[idx[where]]
        order = np.argsort(offs, kind="stable")
        out[where[order], 0] = ds._map(int(k))[offs[order]]
    return torch.from_numpy(out), ds.targets[torch.from_numpy(idx)]


def _oracle_flip_rows(x, idx, dim):
    if x.device.type == "cpu":
        a, i = x.numpy(), idx.numpy()
        reverse = (slice(None),) * (a.ndim + dim - 1) + (slice(None, None, -1),)
        a[i] = a[i][(slice(None),) + reverse]
    else:
        x[idx] = x[idx].flip(dim)


def oracle_prepare(x, aug=None, gen=None):
    n = x.shape[0]
    scale = torch.full((n,), SCALE)
    angles = None
    if aug is not None:
        draws = torch.rand((n, 3), generator=gen)
        flipped = False
        for column, p, dim in ((0, aug.hflip, -1), (1, aug.vflip, -2)):
            idx = torch.nonzero(draws[:, column] < p).flatten() if p else None
            if idx is not None and len(idx):
                if not flipped:
                    x, flipped = x.clone(), True
                _oracle_flip_rows(x, idx.to(x.device), dim)
        if aug.brightness:
            scale = scale * (1 + aug.brightness * (2 * draws[:, 2] - 1))
        if aug.rotation:
            angles = (2 * torch.rand(n, generator=gen) - 1) * math.radians(aug.rotation)
    out = x.float()
    if angles is not None:
        out = rotate(out, angles.to(out.device))
    out.mul_(scale.to(x.device).view((n,) + (1,) * (x.dim() - 1)))
    return out.add_(SHIFT)


# ----------------------------------------------------------------------------- data

def write_shards(root, size: int, sizes=(13, 9, 11)):
    """A preprocessed dataset of random images in several shards (written directly, the way
    preprocess lays them out)."""
    rng = np.random.default_rng(size)
    rows, n = [], 0
    (root / "shards").mkdir(parents=True)
    for k, count in enumerate(sizes):
        np.save(root / "shards" / f"shard-{k:05d}.npy", rng.integers(0, 256, (count, size, size), np.uint8))
        for off in range(count):
            labels = "|".join(f for f in FINDINGS if rng.random() < 0.3) or "No Finding"
            rows.append({"image_id": f"{n:05d}.png", "patient_id": f"p{n // 2}", "split": "train",
                         "labels": labels, "view": "PA", "shard": k, "offset": off})
            n += 1
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
    (root / "manifest.json").write_text(json.dumps(
        {"image_size": size, "findings": FINDINGS, "labels": ["No Finding"] + FINDINGS}))
    return root


AUGMENTS = [None, Augment(), Augment(hflip=0.3, vflip=0.8, brightness=0.2), Augment(hflip=0, vflip=0.5),
            Augment(rotation=10, brightness=0.1)]


@pytest.mark.parametrize("size", [224, 512])
def test_batches_identical_to_the_previous_code_path(tmp_path, size):
    ds = ShardDataset(write_shards(tmp_path, size), "train")
    batches = []
    for getitems in (ds.__getitems__, lambda i: oracle_getitems(ds, i)):
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(7))
        loader = DataLoader(range(len(ds)), batch_size=8, sampler=sampler, collate_fn=getitems)
        batches.append(list(loader))
    assert len(batches[0]) == 5  # 33 images: 4 full batches and a short one
    buf = None
    for aug, consume in [(aug, consume) for aug in AUGMENTS for consume in (False, True)]:
        gen_new, gen_old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for (x, y), (x0, y0) in zip(*batches):
            assert x.dtype == torch.uint8 and torch.equal(x, x0) and torch.equal(y, y0)
            x = x.clone()  # consume=True may flip samples inside it
            out = prepare(x, aug, gen_new, out=buf, consume=consume)
            ref = oracle_prepare(x0, aug, gen_old)
            assert torch.equal(out, ref), (size, aug, consume, (out - ref).abs().max())
            if not consume:
                assert torch.equal(x, x0)  # the uint8 batch is not modified
            if aug is None or not aug.rotation:  # (rotation returns a new tensor)
                if buf is not None and len(x) <= len(buf):
                    assert out.data_ptr() == buf.data_ptr()  # written into the reused buffer
                buf = out if buf is None or len(out) > len(buf) else buf


def test_flips_happen_and_differ_per_sample(tmp_path):
    """Guards the oracle comparison from passing vacuously: the draws flip some samples only."""
    x = torch.randint(0, 256, (16, 1, 20, 24), dtype=torch.uint8)
    out = prepare(x, Augment(), torch.Generator().manual_seed(3))
    plain = prepare(x)
    same = [torch.equal(out[i], plain[i]) for i in range(16)]
    assert any(same) and not all(same)


@pytest.mark.parametrize("aug", AUGMENTS)
def test_device_path_computes_the_same_values(aug):
    """The GPU path (whole-batch selects, no host sync) run on CPU tensors gives the CPU path's
    values, so a batch is the same wherever it is prepared."""
    x = torch.randint(0, 256, (21, 1, 40, 36), dtype=torch.uint8)
    n = len(x)
    draws = torch.rand((n, 3), generator=torch.Generator().manual_seed(5))
    h = draws[:, 0] < aug.hflip if aug and aug.hflip else None
    v = draws[:, 1] < aug.vflip if aug and aug.vflip else None
    scale = torch.full((n,), SCALE) * (1 + (aug.brightness if aug else 0) * (2 * draws[:, 2] - 1))
    a, b = torch.empty(x.shape), torch.empty(x.shape)
    transforms._normalize_cpu(x, h, v, scale, a)
    transforms._normalize_device(x, h, v, scale, b)
    assert torch.equal(a, b)


def test_host_batches_are_page_aligned(tmp_path):
    """The uint8 batches and the CPU float buffer start on a page (cxrjobs.data.hostmem), so
    huge-page backing and aligned vector stores apply from their first byte."""
    from cxrjobs.data import hostmem

    for shape, dtype in [((3, 1, 5, 7), np.uint8), ((64, 1, 512, 512), np.float32)]:
        a = hostmem.empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % hostmem.PAGE == 0
    ds = ShardDataset(write_shards(tmp_path, 32), "train")
    x, _y = ds.__getitems__([0, 3, 1])
    assert x.data_ptr() % hostmem.PAGE == 0
    out = prepare(x, Augment(), torch.Generator().manual_seed(0), consume=True)
    assert out.data_ptr() % hostmem.PAGE == 0 and out.dtype == torch.float32
