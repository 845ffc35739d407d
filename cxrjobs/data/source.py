"""The common form every dataset format is read into before preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from cxrjobs.errors import DataError

# One row per image. `labels` holds class names joined by '|', in the source's order
# (the first one is the single-label view's class).
RECORD_COLUMNS = ["image_id", "patient_id", "path", "labels", "view"]


@dataclass
class Source:
    format: str
    root: str
    records: pd.DataFrame            # RECORD_COLUMNS (+ 'split' once assigned)
    label_names: list[str]           # classes of the single-label view, in output order
    findings: list[str]              # targets of the multi-label view
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    excluded: dict[str, int] = field(default_factory=dict)       # filtered by config, not errors
    official_split: pd.Series | None = None  # image_id -> split, when the dataset ships one
    params: dict = field(default_factory=dict)


def require_columns(df: pd.DataFrame, required: list[str], path: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {missing}; found {list(df.columns)}. "
            "Check that this is the right file for the chosen --format.")


def read_csv(path: str, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kw)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e})") from e


def scan_images(root: str, exts=(".png", ".jpg", ".jpeg")) -> dict[str, str]:
    """File name -> path for every image under root (any depth, like Kaggle's images_0NN/)."""
    import os

    found: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(exts) and not name.startswith("."):
                found.setdefault(name, os.path.join(dirpath, name))
    return found


def split_unknown_labels(labels: pd.Series, known: set[str]) -> pd.Series:
    """Boolean mask of rows with at least one label outside `known`."""
    exploded = labels.fillna("").str.split("|").explode()
    bad = ~exploded.isin(known)
    return bad.groupby(level=0).any()
