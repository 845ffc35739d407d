"""Seeded, patient-wise, label-stratified train/val/test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrjobs.errors import DataError

SPLITS = ("train", "val", "test")


def _cut(n: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split labels for n shuffled patients: counts by rounded cumulative fractions."""
    edges = np.round(np.cumsum(fractions) * n).astype(int)
    out = np.empty(n, dtype=object)
    start = 0
    for name, end in zip(SPLITS, edges):
        out[start:end] = name
        start = end
    out[start:] = SPLITS[-1]
    return out


def _assign(patients: pd.Series, fractions, seed: int) -> pd.Series:
    """patients: patient_id -> stratum. Shuffle within each stratum so small sets keep both
    classes in every split."""
    rng = np.random.default_rng(seed)
    result = {}
    for stratum in sorted(patients.unique()):
        ids = np.sort(patients.index[patients == stratum].to_numpy())
        ids = ids[rng.permutation(len(ids))]
        result.update(zip(ids, _cut(len(ids), fractions)))
    return pd.Series(result)


def patient_stratum(records: pd.DataFrame, negative: str | None) -> pd.Series:
    """1 for patients with any image labelled other than `negative`, else 0."""
    positive = records["labels"] != negative if negative else records["labels"].astype("category").cat.codes
    return pd.Series(np.asarray(positive, dtype=np.int64), index=records.index).groupby(
        records["patient_id"]).max()


def assign_splits(records: pd.DataFrame, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  negative: str | None = None,
                  official: pd.Series | None = None) -> pd.Series:
    """Split name per record (aligned with records.index).

    With `official` (image_id -> 'train_val' | 'test', NIH's shipped lists) test is kept as given
    and train_val is divided into train/val by patient; otherwise all three are seeded.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions {fractions} must be >= 0 and sum to 1")
    strata = patient_stratum(records, negative)
    if official is None:
        by_patient = _assign(strata, fractions, seed)
        return records["patient_id"].map(by_patient)
    given = records["image_id"].map(official)
    if given.isna().any():
        raise DataError(f"{int(given.isna().sum())} images are in neither train_val_list.txt nor "
                        "test_list.txt; fix the lists or remove them to use a seeded split")
    tv = records.loc[given == "train_val"]
    tv_frac = fractions[0] + fractions[1]
    sub = (fractions[0] / tv_frac, fractions[1] / tv_frac, 0.0)
    by_patient = _assign(strata.loc[tv["patient_id"].unique()], sub, seed)
    split = given.where(given == "test", records["patient_id"].map(by_patient))
    check_patient_disjoint(records.assign(split=split))
    return split


def check_patient_disjoint(records: pd.DataFrame) -> None:
    per_patient = records.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise DataError(f"{len(leaked)} patients appear in more than one split "
                        f"(e.g. {list(leaked.index[:5])}); splits must be patient-wise")
