"""uint8 batch -> normalised float batch for the model, with the paper's augmentation, on the
training device at load time.

Random rotation (augment.rotation > 0) turns the whole batch with one affine_grid/grid_sample
(bilinear, corners filled with black like the padding); at 0 it costs nothing and draws no
random numbers, so runs without it see exactly the same augmentations as before.

Flips run on the uint8 batch (a quarter of the bytes of a float one), and brightness jitter is
folded into the per-sample scale of the normalisation, so a batch costs one conversion, one
multiply and one add.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrjobs.specs.train import Augment

# Gray-level mean/std of ImageNet (the average of its RGB statistics), so ImageNet-initialised
# ResNeXt weights see inputs on the scale they were trained on; harmless for random init.
MEAN, STD = 0.449, 0.226
SCALE, SHIFT = 1.0 / (255.0 * STD), -MEAN / STD


def _flip_rows(x: torch.Tensor, idx: torch.Tensor, dim: int) -> None:
    """Flip samples `idx` of `x` in place along `dim` (negative)."""
    if x.device.type == "cpu":
        # numpy's strided copy is ~3x faster than torch.flip on uint8 on one core.
        a, i = x.numpy(), idx.numpy()
        reverse = (slice(None),) * (a.ndim + dim - 1) + (slice(None, None, -1),)
        a[i] = a[i][(slice(None),) + reverse]
    else:
        x[idx] = x[idx].flip(dim)


def prepare(x: torch.Tensor, aug: Augment | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """Normalise an uint8 [B, C, H, W] batch; with `aug`, first apply per-sample random flips and
    brightness jitter drawn from `gen` (so a resumed epoch sees the same augmentations).
    The input is not modified."""
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
                _flip_rows(x, idx.to(x.device), dim)
        if aug.brightness:
            scale = scale * (1 + aug.brightness * (2 * draws[:, 2] - 1))
        if aug.rotation:
            angles = (2 * torch.rand(n, generator=gen) - 1) * math.radians(aug.rotation)
    # Convert first, then scale in place: a mixed uint8 * float multiply is ~20x slower on CPU.
    out = x.float()
    if angles is not None:
        out = rotate(out, angles.to(out.device))
    out.mul_(scale.to(x.device).view((n,) + (1,) * (x.dim() - 1)))
    return out.add_(SHIFT)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image of a float [B, C, H, W] batch by its angle (radians) about the centre."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
