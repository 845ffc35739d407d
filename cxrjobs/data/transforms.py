"""Normalisation and augmentation on uint8 batches, on the training device, at load time."""

from __future__ import annotations

import torch

from cxrjobs.train.spec import Augment

# Gray-level mean/std of ImageNet (the average of its RGB statistics), so ImageNet-initialised
# ResNeXt weights see inputs on the scale they were trained on; harmless for random init.
MEAN, STD = 0.449, 0.226


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() * (1.0 / 255.0) - MEAN) * (1.0 / STD)


def augment(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random flips (the paper's) and brightness jitter, drawn from `gen` so a
    resumed epoch sees the same augmentations."""
    n = x.shape[0]
    draws = torch.rand((n, 3), generator=gen).to(x.device)
    shape = (n,) + (1,) * (x.dim() - 1)
    if aug.hflip:
        x = torch.where((draws[:, 0] < aug.hflip).view(shape), x.flip(-1), x)
    if aug.vflip:
        x = torch.where((draws[:, 1] < aug.vflip).view(shape), x.flip(-2), x)
    if aug.brightness:
        x = x * (1 + aug.brightness * (2 * draws[:, 2] - 1)).view(shape)
    return x
