"""Preprocessing into shards (resumable, sliced, parallel) and reading them back (ShardDataset)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cxrjobs.data.decode import decode_file
from cxrjobs.data.nih import FINDINGS, LABELS
from cxrjobs.data.preprocess import INDEX_COLUMNS, PreprocessSpec, merge, preprocess, run_slice
from cxrjobs.data.shards import ShardDataset, passthrough
from cxrjobs.data.synth import synth_nih
from cxrjobs.errors import DataError
from cxrjobs.storage import LocalStore

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIH_SAMPLE = SHARED / "nih-sample"

S, SHARD = 64, 16


def spec_for(source: Path, **kw) -> PreprocessSpec:
    return PreprocessSpec(source=str(source), format="nih", size=S, shard_size=SHARD, **kw)


def read_index(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("shard-*.npy"))}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    summary = synth_nih(out / "nih", 60, size=128, seed=7, special=True)
    assert summary.special["rgba"] and summary.special["16bit"] and len(summary.corrupt) == 2
    return summary


@pytest.fixture(scope="module")
def done(phantom, tmp_path_factory):
    """The phantom set preprocessed once in a single process; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("pre") / "out"
    result, manifest = preprocess(spec_for(phantom.out), LocalStore(root), "", show_progress=False)
    return root, result, manifest


# ----------------------------------------------------------------------------- outputs

def test_manifest(phantom, done):
    root, result, manifest = done
    assert manifest == json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "nih"
    assert manifest["images"] == phantom.images - 2 == result.images
    assert manifest["rejected"] == 2 == result.rejected
    assert manifest["image_size"] == S
    assert manifest["labels"] == LABELS and len(manifest["labels"]) == 15
    assert manifest["findings"] == FINDINGS and len(manifest["findings"]) == 14
    assert sum(manifest["splits"].values()) == manifest["images"]
    assert all(manifest["splits"][s] > 0 for s in ("train", "val", "test"))
    assert sum(manifest["patients"].values()) == phantom.patients
    assert manifest["num_shards"] == -(-phantom.images // SHARD) == result.shards_done
    assert manifest["dtype"] == "uint8"
    params = manifest["parameters"]
    assert params["size"] == S and params["shard_size"] == SHARD and params["fit"] == "pad"
    assert params["source"] == str(phantom.out) and params["seed"] == 0


def test_rejects_list_the_corrupt_files_with_reasons(phantom, done):
    root, _, _ = done
    rejects = pd.read_csv(root / "rejects.csv", dtype=str, keep_default_na=False)
    assert list(rejects.columns) == ["path", "reason"]
    got = dict(zip(rejects["path"], rejects["reason"]))
    trunc = str(phantom.out / phantom.special["truncated"][0])
    empty = str(phantom.out / phantom.special["empty"][0])
    assert set(got) == {trunc, empty}
    assert "truncated" in got[trunc]
    assert "empty file" in got[empty]
    index = read_index(root)
    assert not set(index["source"]) & {trunc, empty}


def test_index_is_consistent_with_shard_arrays(phantom, done):
    root, _, manifest = done
    index = read_index(root)
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == manifest["images"] and index["image_id"].is_unique
    shard, offset = index["shard"].astype(int), index["offset"].astype(int)
    for k in range(manifest["num_shards"]):
        arr = np.load(root / "shards" / f"shard-{k:05d}.npy")
        assert arr.dtype == np.uint8 and arr.shape[1:] == (S, S)
        offs = offset[shard == k].to_numpy()
        assert list(offs) == list(range(len(arr))), k  # 0..n-1, in order, none missing
        assert len(arr) <= SHARD
    # Every stored image is the decode of its source, and sha256 is the file's.
    rng = np.random.default_rng(0)
    for i in rng.choice(len(index), 12, replace=False):
        row = index.iloc[i]
        arr = np.load(root / "shards" / f"shard-{int(row['shard']):05d}.npy", mmap_mode="r")
        want, digest = decode_file(row["source"], S)
        np.testing.assert_array_equal(arr[int(row["offset"])], want)
        assert row["sha256"] == digest == hashlib.sha256(Path(row["source"]).read_bytes()).hexdigest()
    # Splits are contiguous (train, then val, then test), so evaluation reads shards in order.
    order = index["split"].map({"train": 0, "val": 1, "test": 2})
    assert order.is_monotonic_increasing


def test_rgba_and_16bit_files_are_accepted(phantom, done):
    root, _, _ = done
    index = read_index(root).set_index("source")
    for kind in ("rgba", "16bit"):
        src = str(phantom.out / phantom.special[kind][0])
        assert src in index.index, kind
        row = index.loc[src]
        img = np.load(root / "shards" / f"shard-{int(row['shard']):05d}.npy")[int(row["offset"])]
        # A real chest, not black (16-bit divided by 65535) or white (clipped to 255).
        assert img.max() > 120 and img.mean() > 30 and img.std() > 20, kind
        assert (img == 255).mean() < 0.05, kind
        if kind == "16bit":  # rescaled by its own min..max: the full 8-bit range is used
            assert img.max() >= 240, img.max()


def test_splits_are_patient_disjoint(done):
    index = read_index(done[0])
    assert index.groupby("patient_id")["split"].nunique().max() == 1
    assert set(index["split"]) == {"train", "val", "test"}


# ----------------------------------------------------------------------------- resume, slices, workers

def test_resume_redoes_only_the_missing_shard(phantom, done, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(done[0], root)
    before_index = (root / "index.csv").read_bytes()
    before_shards = shard_bytes(root)
    (root / "shards" / "shard-00001.csv").unlink()
    (root / "shards" / "shard-00001.npy").write_bytes(b"half-written")  # a crash mid-shard

    store = LocalStore(root)
    res = run_slice(spec_for(phantom.out), store, "", show_progress=False)
    assert res.shards_done == 1 and res.shards_skipped == done[1].shards_done - 1
    assert 0 < res.images <= SHARD
    merge(store, "")
    assert (root / "index.csv").read_bytes() == before_index
    assert shard_bytes(root) == before_shards

    again = run_slice(spec_for(phantom.out), store, "", show_progress=False)
    assert again.shards_done == 0 and again.images == 0


def test_sliced_run_then_merge_equals_single_run(phantom, done, tmp_path):
    root = tmp_path / "sliced"
    store = LocalStore(root)
    results = [run_slice(spec_for(phantom.out), store, "", shard_index=i, num_shards=2, show_progress=False)
               for i in range(2)]
    assert [r.shards_done for r in results] == [2, 2]
    assert sum(r.images for r in results) == done[2]["images"]
    manifest = merge(store, "")
    assert (root / "index.csv").read_bytes() == (done[0] / "index.csv").read_bytes()
    assert (root / "rejects.csv").read_bytes() == (done[0] / "rejects.csv").read_bytes()
    assert shard_bytes(root) == shard_bytes(done[0])
    strip = lambda m: {k: v for k, v in m.items() if k != "created"}  # noqa: E731
    assert strip(manifest) == strip(done[2])


def test_merge_with_a_slice_missing_names_the_missing_shards(phantom, tmp_path):
    store = LocalStore(tmp_path / "half")
    run_slice(spec_for(phantom.out), store, "", shard_index=0, num_shards=2, show_progress=False)
    with pytest.raises(DataError) as e:
        merge(store, "")
    assert "2 of 4 shards" in str(e.value) and "[1, 3]" in str(e.value)
    assert not (tmp_path / "half" / "index.csv").exists()
    assert not (tmp_path / "half" / "manifest.json").exists()


def test_merge_without_a_plan(tmp_path):
    with pytest.raises(DataError, match="no plan.json"):
        merge(LocalStore(tmp_path), "")


def test_bad_slice_arguments(phantom, tmp_path):
    with pytest.raises(DataError, match="--shard-index 2"):
        run_slice(spec_for(phantom.out), LocalStore(tmp_path), "", shard_index=2, num_shards=2)


def test_strict_stops_at_the_first_bad_file(phantom, tmp_path):
    with pytest.raises(DataError) as e:
        preprocess(spec_for(phantom.out, strict=True), LocalStore(tmp_path / "s"), "", show_progress=False)
    msg = str(e.value)
    assert any(str(phantom.out / p) in msg for p in phantom.corrupt), msg
    assert "--strict" in msg
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_two_workers_give_identical_shards(phantom, done, tmp_path):
    root = tmp_path / "w2"
    res, manifest = preprocess(spec_for(phantom.out), LocalStore(root), "", workers=2, show_progress=False)
    assert res.images == done[1].images and res.rejected == 2
    assert shard_bytes(root) == shard_bytes(done[0])
    assert (root / "index.csv").read_bytes() == (done[0] / "index.csv").read_bytes()
    assert (root / "rejects.csv").read_bytes() == (done[0] / "rejects.csv").read_bytes()


def test_store_prefix(phantom, done, tmp_path):
    store = LocalStore(tmp_path)
    preprocess(spec_for(phantom.out), store, "datasets/nih-64", show_progress=False)
    root = tmp_path / "datasets" / "nih-64"
    assert (root / "index.csv").read_bytes() == (done[0] / "index.csv").read_bytes()
    assert len(ShardDataset(root)) == done[2]["images"]


# ----------------------------------------------------------------------------- ShardDataset

def test_getitems_equals_stacked_getitem(done):
    ds = ShardDataset(done[0])
    assert len(ds) == done[2]["images"] and ds.image_size == S
    idx = [len(ds) - 1, 0, 17, 3, 17, 40, 16, 15]  # across shards, unsorted, with a repeat
    x, y = ds.__getitems__(idx)
    assert x.dtype == torch.uint8 and x.shape == (len(idx), 1, S, S)
    items = [ds[i] for i in idx]
    assert torch.equal(x, torch.stack([im for im, _ in items]))
    assert torch.equal(y, torch.stack([t for _, t in items]))
    img, _ = ds[5]
    assert img.shape == (1, S, S) and img.dtype == torch.uint8 and img.float().std() > 0


def test_multilabel_targets_match_labels(done):
    ds = ShardDataset(done[0], objective="multilabel")
    assert ds.num_classes == 14 and ds.class_names == FINDINGS
    assert ds.targets.shape == (len(ds), 14) and ds.targets.dtype == torch.float32
    for row, labels in enumerate(ds.index["labels"]):
        want = np.zeros(14, np.float32)
        for name in labels.split("|"):
            if name != "No Finding":
                want[FINDINGS.index(name)] = 1
        np.testing.assert_array_equal(ds.targets[row].numpy(), want, err_msg=labels)
    assert ds.targets.sum() > 0
    nofinding = np.array(ds.index["labels"] == "No Finding")
    assert nofinding.any() and ds.targets[torch.from_numpy(nofinding)].sum() == 0


def test_multiclass_targets_are_the_first_label(done):
    ds = ShardDataset(done[0], objective="multiclass")
    assert ds.num_classes == 15 and ds.class_names == LABELS
    assert ds.targets.dtype == torch.int64
    want = [LABELS.index(t.split("|")[0]) for t in ds.index["labels"]]
    assert ds.targets.tolist() == want
    assert LABELS.index("No Finding") == 14 and 14 in want


def test_split_filter(done):
    root, _, manifest = done
    full = ShardDataset(root)
    seen = set()
    for split in ("train", "val", "test"):
        ds = ShardDataset(root, split=split)
        assert len(ds) == manifest["splits"][split]
        assert ds.describe() == {"split": split, "images": len(ds), "patients": manifest["patients"][split]}
        assert set(ds.index["split"]) == {split}
        seen |= set(ds.index["image_id"])
        # The filtered view still reads the right pixels.
        j = int(np.flatnonzero(full.index["image_id"] == ds.index["image_id"].iloc[-1])[0])
        assert torch.equal(ds[len(ds) - 1][0], full[j][0])
    assert seen == set(full.index["image_id"])


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_sampler_partitions(done, shuffle):
    ds = ShardDataset(done[0])
    parts = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=shuffle, seed=3)
        sampler.set_epoch(1)
        parts.append(list(sampler))
    assert len(parts[0]) == len(parts[1]) == -(-len(ds) // 2)
    assert set(parts[0]) | set(parts[1]) == set(range(len(ds)))
    padding = 2 * len(parts[0]) - len(ds)
    assert len(set(parts[0]) & set(parts[1])) <= padding


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_with_passthrough(done, num_workers):
    ds = ShardDataset(done[0], split="train")
    loader = DataLoader(ds, batch_size=8, shuffle=False, collate_fn=passthrough, num_workers=num_workers)
    batches = list(loader)
    assert sum(len(x) for x, _ in batches) == len(ds)
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1:] == (1, S, S)
        assert y.shape == (len(x), 14)
    x0, y0 = batches[0]
    assert torch.equal(x0, ds.__getitems__(list(range(len(x0))))[0])
    assert torch.equal(y0, ds.targets[: len(x0)])


def test_dataset_without_manifest(tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        ShardDataset(tmp_path)


# ----------------------------------------------------------------------------- real data

def test_real_nih_sample(tmp_path):
    if not (NIH_SAMPLE / "Data_Entry_2017_sample.csv").is_file():
        pytest.skip(f"real NIH sample not found at {NIH_SAMPLE} (../shared/data is absent)")
    root = tmp_path / "nih-64"
    spec = PreprocessSpec(source=str(NIH_SAMPLE), format="nih", size=64)
    res, manifest = preprocess(spec, LocalStore(root), "", show_progress=False)
    assert manifest["images"] == 1001 and manifest["rejected"] == 0 and res.images == 1001
    assert sum(manifest["patients"].values()) == 265
    index = read_index(root)
    assert index.groupby("patient_id")["split"].nunique().max() == 1
    assert set(index["view"]) == {"PA", "AP"}
    ds = ShardDataset(root)
    x, y = ds.__getitems__(list(range(0, 1001, 100)))
    assert x.shape == (11, 1, 64, 64) and x.float().mean() > 20
    labels = index["labels"].str.split("|").explode().value_counts()
    assert labels["No Finding"] == 500 and labels["Hernia"] == 9


# ----------------------------------------------------------------------------- reruns (issue 6.1)

def test_rerun_with_other_options_is_refused_and_names_them(phantom, done, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(done[0], root)
    for n in range(2, 6):  # killed after 2 shards: a resume would otherwise fill in the rest
        (root / "shards" / f"shard-{n:05d}.csv").unlink(missing_ok=True)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    store = LocalStore(root)
    with pytest.raises(DataError) as e:
        run_slice(PreprocessSpec(source=str(phantom.out), format="nih", size=96, shard_size=SHARD, seed=3),
                  store, "", show_progress=False)
    msg = str(e.value)
    assert "size: 64 there, 96 now" in msg and "seed: 0 there, 3 now" in msg
    assert "--out" in msg and "--overwrite" in msg
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # nothing touched
    # each output-affecting option is compared, one at a time
    base = dict(source=str(phantom.out), format="nih", size=S, shard_size=SHARD)
    for field, value in (("fit", "crop"), ("shard_size", SHARD + 1), ("fractions", (0.6, 0.2, 0.2)),
                         ("source", str(tmp_path)), ("csv", "other.csv")):
        with pytest.raises(DataError, match=f"{field}: "):
            run_slice(PreprocessSpec(**{**base, field: value}), store, "", show_progress=False)
    # --strict changes nothing that is written: the same output resumes
    res = run_slice(spec_for(phantom.out, strict=False), store, "", show_progress=False)
    assert res.shards_skipped >= 2


def test_overwrite_replaces_an_output_made_with_other_options(phantom, done, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(done[0], root)
    (root / "notes.txt").write_text("the user's own file")
    spec96 = PreprocessSpec(source=str(phantom.out), format="nih", size=96, shard_size=SHARD)
    res, manifest = preprocess(spec96, LocalStore(root), "", show_progress=False, overwrite=True)
    assert res.shards_skipped == 0 and manifest["image_size"] == 96
    ds = ShardDataset(root)
    assert ds.__getitems__(list(range(len(ds))))[0].shape[-1] == 96  # every shard is 96 px
    assert {np.load(p).shape[1] for p in (root / "shards").glob("*.npy")} == {96}
    assert (root / "notes.txt").read_text() == "the user's own file"
    # overwrite with the SAME options resumes instead of redoing the work
    again = run_slice(spec96, LocalStore(root), "", show_progress=False, overwrite=True)
    assert again.shards_done == 0 and again.shards_skipped == manifest["num_shards"]


def test_overwrite_of_a_sliced_run_waits_for_slice_0(phantom, done, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(done[0], root)
    spec = spec_for(phantom.out, seed=5)
    with pytest.raises(DataError, match="run slice 0"):
        run_slice(spec, LocalStore(root), "", shard_index=1, num_shards=2, show_progress=False,
                  overwrite=True, wait=0)
    run_slice(spec, LocalStore(root), "", shard_index=0, num_shards=2, show_progress=False, overwrite=True)
    run_slice(spec, LocalStore(root), "", shard_index=1, num_shards=2, show_progress=False, overwrite=True)
    manifest = merge(LocalStore(root), "")
    assert manifest["parameters"]["seed"] == 5 and manifest["images"] == done[2]["images"]
    assert read_index(root)["image_id"].is_unique
    assert json.loads((root / "plan.json").read_text())["spec"]["seed"] == 5


def test_rerun_after_the_source_changed_is_refused(phantom, tmp_path):
    src = tmp_path / "nih"
    shutil.copytree(phantom.out, src)
    store = LocalStore(tmp_path / "out")
    run_slice(spec_for(src), store, "", show_progress=False)
    table = pd.read_csv(src / "Data_Entry_2017.csv", dtype=str)
    table.iloc[:-3].to_csv(src / "Data_Entry_2017.csv", index=False)  # three rows dropped
    with pytest.raises(DataError, match="the dataset changed since that run"):
        run_slice(spec_for(src), store, "", show_progress=False)


# ----------------------------------------------------------------------------- nothing accepted (6.6)

def test_header_only_csv_is_an_error_not_an_empty_dataset(tmp_path):
    src = tmp_path / "nih"
    src.mkdir()
    (src / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n")
    with pytest.raises(DataError, match="no image to preprocess"):
        preprocess(PreprocessSpec(source=str(src), format="nih", size=S), LocalStore(tmp_path / "o"), "",
                   show_progress=False)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_every_image_rejected_is_an_error_with_the_reasons(tmp_path):
    s = synth_nih(tmp_path / "nih", 12, size=64, seed=1, special=False)
    for p in s.out.rglob("*.png"):
        p.write_bytes(b"not a png")
    out = tmp_path / "o"
    with pytest.raises(DataError) as e:
        preprocess(spec_for(s.out), LocalStore(out), "", show_progress=False)
    assert "0 images accepted, all 12 rejected" in str(e.value) and "rejects.csv" in str(e.value)
    assert "not an image" in str(e.value)
    assert len(pd.read_csv(out / "rejects.csv")) == 12 and not (out / "manifest.json").exists()
    # all rejected at read time (no file matches its row) is refused before planning
    for p in s.out.rglob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match="all 12 were rejected, most often: 12 x listed in"):
        preprocess(spec_for(s.out), LocalStore(tmp_path / "o2"), "", show_progress=False)
    assert len(pd.read_csv(tmp_path / "o2" / "rejects.csv")) == 12


# ----------------------------------------------------------------------------- odd file names (6.4)

def test_non_utf8_file_name_is_rejected_without_a_partial_shard(tmp_path):
    from PIL import Image

    root = tmp_path / "if"
    for cls in ("a", "b"):
        for i in range(6):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    good = (root / "a" / "0.png").read_bytes()
    with open(str(root / "a").encode() + b"/caf\xe9.png", "wb") as f:
        f.write(good)
    out = tmp_path / "o"
    for _ in range(2):  # a rerun behaves the same (it used to crash the same way every time)
        _, manifest = preprocess(PreprocessSpec(source=str(root), format="imagefolder", size=16, shard_size=4),
                                 LocalStore(out), "", show_progress=False)
        assert manifest["images"] == 12 and manifest["rejected"] == 1
    rejects = pd.read_csv(out / "rejects.csv")
    assert "not valid UTF-8" in rejects["reason"][0] and "caf\\xe9.png" in rejects["path"][0]
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert len([n for n in shards if n.endswith(".npy")]) == len([n for n in shards if n.endswith(".csv")
                                                                 and not n.endswith("rejects.csv")])


def test_decoders_are_fed_through_a_bounded_window():
    """Pool.imap drains its input at once; images fetched from a store must not pile up in memory."""
    import multiprocessing as mp
    import time

    from cxrjobs.data.preprocess import _Window

    pulled = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield i

    window = _Window(8)
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.imap(abs, window.feed(source()), chunksize=1)
        for _ in range(3):
            next(results)
            window.took()
        time.sleep(0.5)  # give the feeder every chance to run ahead
        assert len(pulled) <= 8 + 3 + 1
        window.close()


def test_closing_the_window_releases_a_blocked_feeder():
    """close() wakes the feeder waiting on a full window (the pool's task thread), which then
    stops feeding."""
    import threading

    from cxrjobs.data.preprocess import _Window

    window, fed = _Window(2), []
    feeder = threading.Thread(target=lambda: fed.extend(window.feed(range(100))), daemon=True)
    feeder.start()
    feeder.join(0.3)
    assert feeder.is_alive() and fed == [0, 1]  # two handed out, none taken back: blocked
    window.close()
    feeder.join(10)
    assert not feeder.is_alive() and fed == [0, 1]


def test_strict_with_workers_stops_and_shuts_the_pool_down(phantom, tmp_path):
    with pytest.raises(DataError, match="--strict"):
        run_slice(spec_for(phantom.out, strict=True), LocalStore(tmp_path / "s"), "", workers=2,
                  show_progress=False)


def test_two_runs_starting_together_on_one_output_never_mix(phantom, tmp_path, monkeypatch):
    """Two preprocessing runs with other options into one output, started together, both saw
    "no plan yet", both wrote plan.json and shards, and both exited 0: a dataset of mixed shards
    whose manifest named one run's options. The claim of plan.json is exclusive now: one run
    makes the output, the other refuses before it writes anything."""
    import threading

    import cxrjobs.data.preprocess as pp

    together = threading.Barrier(2, timeout=30)
    real = pp._plan_doc

    def planned_at_once(*a, **kw):  # both have planned, neither has claimed
        doc = real(*a, **kw)
        together.wait()
        return doc

    monkeypatch.setattr(pp, "_plan_doc", planned_at_once)
    store = LocalStore(tmp_path / "out")
    outcome = {}

    def run(fit):
        try:
            run_slice(spec_for(phantom.out, fit=fit), store, "", show_progress=False)
            outcome[fit] = "made"
        except DataError as e:
            outcome[fit] = str(e)

    threads = [threading.Thread(target=run, args=(fit,)) for fit in ("pad", "crop")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    made = [fit for fit, o in outcome.items() if o == "made"]
    assert len(made) == 1, outcome
    other = "crop" if made == ["pad"] else "pad"
    assert "already holds a preprocessing output made with different options" in outcome[other]
    assert f"fit: '{made[0]}' there, '{other}' now" in outcome[other]
    manifest = merge(store, "")
    assert manifest["parameters"]["fit"] == made[0]
    reference = LocalStore(tmp_path / "alone")
    monkeypatch.setattr(pp, "_plan_doc", real)
    run_slice(spec_for(phantom.out, fit=made[0]), reference, "", show_progress=False)
    for shard in sorted((tmp_path / "alone" / "shards").glob("*.npy")):  # every shard is the winner's
        assert (tmp_path / "out" / "shards" / shard.name).read_bytes() == shard.read_bytes(), shard.name
