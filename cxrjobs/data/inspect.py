"""Summaries of a preprocessed dataset: counts per label, split and view; patients; rejects."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrjobs.data.shards import read_manifest


def inspect_dataset(root: str | Path) -> dict:
    root = Path(root)
    manifest = read_manifest(root)
    index = pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)
    rejects = pd.read_csv(root / "rejects.csv", dtype=str, keep_default_na=False)
    labels = index.assign(label=index["labels"].str.split("|")).explode("label")
    per_label = (labels.groupby(["label", "split"]).size().unstack(fill_value=0)
                 .reindex(columns=["train", "val", "test"], fill_value=0))
    per_label = per_label.reindex([n for n in manifest["labels"] if n in per_label.index])
    reasons = rejects["reason"].str.replace(r"\(.*", "", regex=True).str.strip().value_counts()
    return {
        "dataset": str(root),
        "format": manifest["format"],
        "image_size": manifest["image_size"],
        "images": manifest["images"],
        "rejected": manifest["rejected"],
        "excluded": manifest.get("excluded", {}),
        "splits": {s: {"images": manifest["splits"][s], "patients": manifest["patients"][s]}
                   for s in ("train", "val", "test")},
        "labels": {name: {s: int(row[s]) for s in per_label.columns} for name, row in per_label.iterrows()},
        "views": {v or "(none)": int(n) for v, n in index["view"].value_counts().items()},
        "reject_reasons": {r: int(n) for r, n in reasons.items()},
    }
