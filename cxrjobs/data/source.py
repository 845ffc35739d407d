"""The common form every dataset format is read into before preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from cxrjobs.data.files import Files, printable, utf8_ok
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
    files: Files | None = None       # where the images are read from (set by read_source)


def require_columns(df: pd.DataFrame, required: list[str], path: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {missing}; found {list(df.columns)}. "
            "Check that this is the right file for the chosen --format.")


def scan_images(files: Files, rejects: list[tuple[str, str]],
                exts=(".png", ".jpg", ".jpeg")) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(file name -> locator, file name -> locators of a name found in several folders) for every
    image under the root (any depth, like Kaggle's images_0NN/). A name in two folders is
    ambiguous (which one does the label row mean?), so it is not in the first mapping. Names that
    are not valid UTF-8 go to `rejects`."""
    found: dict[str, list[str]] = {}
    for rel in files.walk():
        name = rel.rsplit("/", 1)[-1]
        if not name.lower().endswith(exts) or name.startswith("."):
            continue
        loc = files.locate(rel)
        if not utf8_ok(rel):
            rejects.append((printable(loc), NOT_UTF8))
            continue
        found.setdefault(name, []).append(loc)
    unique = {name: locs[0] for name, locs in found.items() if len(locs) == 1}
    return unique, {name: locs for name, locs in found.items() if len(locs) > 1}


NOT_UTF8 = "file name is not valid UTF-8; rename it (e.g. with `convmv -f latin1 -t utf8`)"


def reject_empty_patients(records: pd.DataFrame, rejects: list[tuple[str, str]], where: str,
                          column: str, key: str = "path") -> pd.DataFrame:
    """Rows without a patient id would merge unrelated patients (and leak across splits)."""
    empty = records["patient_id"].fillna("").str.strip() == ""
    for loc in records.loc[empty, key]:
        rejects.append((loc, f"{where}: empty {column!r}; every image needs its patient's id "
                             "(splits are patient-wise)"))
    return records.loc[~empty].reset_index(drop=True)


def reject_duplicate_ids(records: pd.DataFrame, rejects: list[tuple[str, str]], where: str,
                         id_name: str, key: str = "path") -> pd.DataFrame:
    """An image id must appear once. Repeats of the same row (same file, patient and labels) keep
    the first; rows that disagree (another patient, labels or file) are all rejected, since
    either could be wrong and one image in two splits would leak."""
    dup = records["image_id"].duplicated(keep=False)
    if not dup.any():
        return records
    drop = pd.Series(False, index=records.index)
    cols = ["patient_id", "labels", "path"]
    for image_id, group in records[dup].groupby("image_id", sort=False):
        if len(group[cols].astype(str).drop_duplicates()) == 1:
            for i in group.index[1:]:
                rejects.append((records.at[i, key], f"{where}: duplicate row for this {id_name}"))
                drop[i] = True
        else:
            for i in group.index:
                rejects.append((records.at[i, key],
                                f"{where}: image {image_id!r} is listed {len(group)} times with different "
                                "patient ids, labels or files; keep one row"))
                drop[i] = True
    return records.loc[~drop].reset_index(drop=True)


def split_unknown_labels(labels: pd.Series, known: set[str]) -> pd.Series:
    """Boolean mask of rows with at least one label outside `known`."""
    exploded = labels.fillna("").str.split("|").explode()
    bad = ~exploded.isin(known)
    return bad.groupby(level=0).any()
