"""uint8 batch -> normalised float batch for the model, with the paper's augmentation, on the
training device at load time.

Random rotation (augment.rotation > 0) turns the whole batch with one affine_grid/grid_sample
(bilinear, corners filled with black like the padding); at 0 it costs nothing and draws no
random numbers, so runs without it see exactly the same augmentations as before.

Batches stay uint8 until they are on the training device (a quarter of the bytes of a float
batch to pin and copy); the conversion happens there, once. Brightness jitter is folded into the
per-sample scale of the normalisation, so a batch costs one conversion, one multiply and one add.

On the CPU the float batch can be written into a reused buffer (`out`): allocating a fresh 64 MiB
batch (512 px, 64 images) costs more in page faults than the conversion itself. The whole batch
is converted by one torch copy, then multiplied and shifted in place: three passes over the
float batch, the least that gives these exact values (a fused multiply-add rounds once, not
twice, and so changes the last bit of some pixels). A caller that gives the uint8 batch away
(`consume`, as the training step does) has flipped samples flipped inside it first; otherwise
each sample is converted on its own, a flipped one from a flipped uint8 copy. At 512 px, batch of
64, one core: 9.7-10.4 ms for the three passes alone; converting per sample costs 1.3 ms more.
On a GPU flips are
whole-batch selects on the uint8 batch and the conversion is three elementwise kernels, with no
host synchronisation. The elementwise arithmetic is the same on both paths (float32 multiply,
then add), so a batch has the same values wherever it is prepared.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from cxrjobs.data import hostmem
from cxrjobs.specs.train import Augment

# Gray-level mean/std of ImageNet (the average of its RGB statistics), so ImageNet-initialised
# ResNeXt weights see inputs on the scale they were trained on; harmless for random init.
MEAN, STD = 0.449, 0.226
SCALE, SHIFT = 1.0 / (255.0 * STD), -MEAN / STD


def _normalize_cpu(x, hflip, vflip, scale, out, shift: float = SHIFT, consume: bool = False) -> None:
    n = x.shape[0]
    h = hflip.tolist() if hflip is not None else [False] * n
    v = vflip.tolist() if vflip is not None else [False] * n
    flips = [[dim for dim, flipped in ((-1, h[j]), (-2, v[j])) if flipped] for j in range(n)]
    if consume or not any(flips):
        # One whole-batch conversion: faster than one per sample (one pass, no per-call cost).
        # Flipped samples are first flipped in the uint8 batch, which the caller gave away.
        for j, dims in enumerate(flips):
            if dims:
                x[j] = x[j].flip(dims)
        out.copy_(x)
    else:
        for j, dims in enumerate(flips):
            out[j].copy_(x[j].flip(dims) if dims else x[j])
    # The same float32 arithmetic as x.float() * scale + SHIFT: a multiply, then an add.
    out.mul_(scale.view((-1,) + (1,) * (x.dim() - 1)))
    out.add_(shift)


def _normalize_device(x, hflip, vflip, scale, out, shift: float = SHIFT) -> None:
    view = (-1,) + (1,) * (x.dim() - 1)
    # One small host -> device copy per batch, from pinned memory so it does not block the host.
    n = x.shape[0]
    none = torch.zeros(n, dtype=torch.bool)
    params = torch.stack([scale, (hflip if hflip is not None else none).float(),
                          (vflip if vflip is not None else none).float()])
    if x.device.type == "cuda":
        params = params.pin_memory()
    params = params.to(x.device, non_blocking=True)
    for mask, row, dim in ((hflip, 1, -1), (vflip, 2, -2)):
        if mask is not None:
            x = torch.where(params[row].view(view) > 0, x.flip(dim), x)
    out.copy_(x)
    out.mul_(params[0].view(view))
    out.add_(shift)


def prepare(x: torch.Tensor, aug: Augment | None = None, gen: torch.Generator | None = None,
            out: torch.Tensor | None = None, consume: bool = False) -> torch.Tensor:
    """Normalise an uint8 [B, C, H, W] batch; with `aug`, first apply per-sample random flips and
    brightness jitter drawn from `gen` (a CPU generator, so a resumed epoch sees the same
    augmentations on any device). The input is not modified. `out`, a float32 tensor of at least
    B samples of x's shape on x's device, is written and returned (its first B samples) instead
    of a new tensor. `consume=True` says the caller will not read x again, so the CPU path may
    flip samples inside it and convert the whole batch at once (the values are the same)."""
    n = x.shape[0]
    scale = torch.full((n,), SCALE)
    hflip = vflip = angles = None
    if aug is not None:
        draws = torch.rand((n, 3), generator=gen)
        if aug.hflip:
            hflip = draws[:, 0] < aug.hflip
        if aug.vflip:
            vflip = draws[:, 1] < aug.vflip
        if aug.brightness:
            scale = scale * (1 + aug.brightness * (2 * draws[:, 2] - 1))
        if aug.rotation:
            angles = (2 * torch.rand(n, generator=gen) - 1) * math.radians(aug.rotation)
    if (out is None or out.device != x.device or out.dtype != torch.float32
            or out.shape[0] < n or out.shape[1:] != x.shape[1:]):
        out = (torch.from_numpy(hostmem.empty(tuple(x.shape), np.float32)) if x.device.type == "cpu"
               else torch.empty(x.shape, dtype=torch.float32, device=x.device))
    else:
        out = out[:n]
    # Only the CPU path converts inside the input: on a device x is already the copy made there.
    normalize = (partial(_normalize_cpu, consume=consume) if x.device.type == "cpu" else _normalize_device)
    if angles is None:
        normalize(x, hflip, vflip, scale, out)
        return out
    # Rotation samples the unnormalised image (x * 1 + 0 is exact), so its corners are black.
    normalize(x, hflip, vflip, torch.ones(n), out, 0.0)
    out = rotate(out, angles.to(out.device))
    out.mul_(scale.to(out.device).view((n,) + (1,) * (x.dim() - 1)))
    return out.add_(SHIFT)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image of a float [B, C, H, W] batch by its angle (radians) about the centre."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
