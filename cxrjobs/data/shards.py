"""Reading preprocessed shards: a map-style Dataset over memory-mapped uint8 arrays.

`__getitems__` gathers a whole batch per call (torch's DataLoader uses it when present), so a
batch costs one copy per image from the maps into one uint8 batch, with no per-item Dataset call
and no collate. Batches stay uint8: conversion happens on the training device
(cxrjobs.data.transforms.prepare).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrjobs.data import hostmem
from cxrjobs.errors import DataError

Objective = Literal["multilabel", "multiclass"]


def read_manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{root}: no manifest.json; preprocess the dataset first "
                        "(`cxrjobs data preprocess`), or merge its slices (`cxrjobs data merge`)")
    return json.loads(path.read_text())


def encode_targets(labels: pd.Series, manifest: dict, objective: Objective) -> np.ndarray:
    if objective == "multilabel":
        names = manifest["findings"]
        out = np.zeros((len(labels), len(names)), dtype=np.float32)
        pos = {n: i for i, n in enumerate(names)}
        for row, text in enumerate(labels):
            for name in text.split("|"):
                if name in pos:
                    out[row, pos[name]] = 1.0
        return out
    # Single-label view: the first listed label (the NIH CSV lists findings in reading order).
    pos = {n: i for i, n in enumerate(manifest["labels"])}
    return np.array([pos[t.split("|")[0]] for t in labels], dtype=np.int64)


class ShardDataset(Dataset):
    def __init__(self, root: str | Path, split: str | None = None, objective: Objective = "multilabel"):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        index = pd.read_csv(self.root / "index.csv", dtype=str, keep_default_na=False)
        if split is not None:
            index = index[index["split"] == split].reset_index(drop=True)
        self.split, self.objective = split, objective
        self.index = index
        self.image_size = int(self.manifest["image_size"])
        self.shard = index["shard"].astype(np.int64).to_numpy()
        self.offset = index["offset"].astype(np.int64).to_numpy()
        self.targets = torch.from_numpy(encode_targets(index["labels"], self.manifest, objective))
        self.class_names = self.manifest["findings" if objective == "multilabel" else "labels"]
        self._maps: dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def patients(self) -> np.ndarray:
        return self.index["patient_id"].to_numpy()

    def describe(self) -> dict:
        return {"split": self.split, "images": len(self), "patients": int(self.index["patient_id"].nunique())}

    def _map(self, k: int) -> np.ndarray:
        # Opened lazily so DataLoader workers each hold their own maps after fork.
        m = self._maps.get(k)
        if m is None:
            m = self._maps[k] = np.load(self.root / "shards" / f"shard-{k:05d}.npy", mmap_mode="r")
        return m

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self._map(int(self.shard[i]))[self.offset[i]]))
        return img.unsqueeze(0), self.targets[i]

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        out = hostmem.empty((len(idx), 1, self.image_size, self.image_size), np.uint8)
        shards = self.shard[idx]
        for k in np.unique(shards):
            where = np.nonzero(shards == k)[0]
            offs = self.offset[idx[where]]
            order = np.argsort(offs, kind="stable")  # ascending reads are kinder to the page cache
            m = self._map(int(k))
            # One copy per image straight from the map into the batch: a fancy index would first
            # gather into a temporary and copy again (two passes over 16 MiB at 512 px x 64).
            for j, o in zip(where[order].tolist(), offs[order].tolist()):
                out[j, 0] = m[o]
        return torch.from_numpy(out), self.targets[torch.from_numpy(idx)]


def passthrough(batch):
    """collate_fn for datasets whose __getitems__ already returns a batch (picklable for workers)."""
    return batch
