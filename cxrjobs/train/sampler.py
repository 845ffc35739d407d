"""Minority oversampling that works under DDP.

Each epoch, every rank makes the same seeded weighted draw with replacement (weights 1 / class
count, so classes come out about equally often) and keeps its own disjoint part of it. Parts are
whole dataset indices: all repeats of one image go to one rank, so no image is seen by two ranks
in one epoch. Ranks get equally many samples (DDP needs the same number of steps everywhere):
the few draws beyond the smallest part are dropped.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def balance_classes(targets: torch.Tensor) -> np.ndarray:
    """One class per sample for balancing: the class (multiclass), the label (one-finding
    multilabel), or finding-vs-no-finding (multilabel with several findings)."""
    t = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if t.ndim == 1:
        return t.astype(np.int64)
    if t.shape[1] == 1:
        return t[:, 0].astype(np.int64)
    return (t.sum(axis=1) > 0).astype(np.int64)


class BalancedDistributedSampler(Sampler[int]):
    def __init__(self, classes: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 num_samples: int | None = None):
        self.classes = np.asarray(classes, dtype=np.int64)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside {num_replicas} replicas")
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        counts = np.bincount(self.classes)
        present = counts[self.classes]
        self.weights = torch.from_numpy(1.0 / present)
        # One epoch draws as many samples as the dataset has (rounded up to the replica count).
        total = num_samples or len(self.classes)
        self.total = math.ceil(total / num_replicas) * num_replicas
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def parts(self) -> list[np.ndarray]:
        """Every rank's indices for this epoch (each rank computes all and keeps its own)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draw = torch.multinomial(self.weights, self.total, replacement=True, generator=g).numpy()
        uniq, counts = np.unique(draw, return_counts=True)
        order = torch.randperm(len(uniq), generator=g).numpy()
        load = np.zeros(self.num_replicas, dtype=np.int64)
        owned: list[list[int]] = [[] for _ in range(self.num_replicas)]
        for j in order:  # whole groups of repeats, each to the least loaded rank
            r = int(np.argmin(load))
            owned[r].extend([int(uniq[j])] * int(counts[j]))
            load[r] += counts[j]
        n = int(load.min())
        out = []
        for r in range(self.num_replicas):
            idx = np.asarray(owned[r], dtype=np.int64)
            idx = idx[torch.randperm(len(idx), generator=g).numpy()][:n]
            out.append(idx)
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.parts()[self.rank].tolist())

    def __len__(self) -> int:
        # Exact length needs the draw; DataLoader only uses it for len(loader).
        return len(self.parts()[self.rank])
