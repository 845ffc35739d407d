"""NIH ChestX-ray14: Data_Entry_2017*.csv + images anywhere under the root."""

from __future__ import annotations

import os

import pandas as pd

from cxrjobs.data.files import Files, LocalFiles, as_files, locate_csv
from cxrjobs.data.source import (
    Source, reject_duplicate_ids, reject_empty_patients, require_columns, scan_images, split_unknown_labels,
)
from cxrjobs.errors import DataError

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia"]
NO_FINDING = "No Finding"
LABELS = FINDINGS + [NO_FINDING]  # the paper's 15-class single-label view

REQUIRED = ["Image Index", "Finding Labels", "Patient ID"]


def find_csv(files: Files) -> str:
    hits = sorted(files.glob_top("Data_Entry_2017*.csv*"))
    if not hits:
        raise DataError(f"{files.base}: no Data_Entry_2017*.csv(.gz) found; pass the NIH dataset folder "
                        "that holds the label CSV, or --csv PATH")
    return hits[0]


def read_nih_csv(csv_path: str, files: Files | None = None) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Records (without paths) and rejects for unknown labels, empty patient ids, duplicates."""
    files = files or LocalFiles(os.path.dirname(os.path.abspath(csv_path)))
    df = files.read_csv(csv_path, dtype=str, keep_default_na=False)
    require_columns(df, REQUIRED, csv_path)
    view = df["View Position"] if "View Position" in df.columns else ""
    patient = df["Patient ID"].str.strip()
    stripped = patient.str.lstrip("0")
    records = pd.DataFrame({
        "image_id": df["Image Index"].str.strip(),
        # Leading zeros dropped ("00000013" and "13" are one patient); "0000" stays "0".
        "patient_id": stripped.mask((stripped == "") & (patient != ""), "0"),
        "path": None,
        "labels": df["Finding Labels"].str.strip(),
        "view": view,
    })
    rejects: list[tuple[str, str]] = []
    bad = split_unknown_labels(records["labels"], set(LABELS))
    if bad.any():
        for image_id, labels in records.loc[bad, ["image_id", "labels"]].itertuples(index=False):
            rejects.append((image_id, f"{csv_path}: unknown label in {labels!r}; known: {LABELS}"))
        records = records.loc[~bad]
    records = reject_empty_patients(records, rejects, csv_path, "Patient ID", key="image_id")
    records = reject_duplicate_ids(records, rejects, csv_path, "Image Index", key="image_id")
    return records, rejects


def read_official_split(files: Files) -> pd.Series | None:
    test, train_val = files.locate("test_list.txt"), files.locate("train_val_list.txt")
    if not (files.isfile(test) and files.isfile(train_val)):
        return None
    parts = []
    for path, split in ((train_val, "train_val"), (test, "test")):
        ids = [line.strip() for line in files.read_bytes(path).decode("utf-8", "replace").splitlines()
               if line.strip()]
        parts.append(pd.Series(split, index=ids))
    return pd.concat(parts)


def read_nih(root: str | Files, csv_path: str | None = None) -> Source:
    files = as_files(root)
    csv_path = locate_csv(files, csv_path, "") if csv_path else find_csv(files)
    csv_name = csv_path.rsplit("/", 1)[-1]
    records, rejects = read_nih_csv(csv_path, files)
    images, ambiguous = scan_images(files, rejects)
    records["path"] = records["image_id"].map(images)
    missing = records["path"].isna()
    for image_id in records.loc[missing, "image_id"]:
        if image_id in ambiguous:
            locs = ambiguous[image_id]
            rejects.append((image_id, f"file name is in {len(locs)} folders ({', '.join(locs)}): cannot "
                                      f"tell which one the row of {csv_name} means; keep one copy"))
        else:
            rejects.append((image_id, f"listed in {csv_name} but no image file under {files.base}"))
    # Rows already rejected (unknown label, duplicate) are listed too: their file is not "unlisted".
    listed = set(records["image_id"]) | {image_id for image_id, _ in rejects}
    for name, path in images.items():
        if name not in listed:
            rejects.append((path, f"image has no row in {csv_name}"))
    for name, locs in ambiguous.items():
        if name not in listed:
            rejects.extend((loc, f"image has no row in {csv_name}") for loc in locs)
    return Source(format="nih", root=files.base, records=records.loc[~missing].reset_index(drop=True),
                  label_names=list(LABELS), findings=list(FINDINGS), rejects=rejects,
                  official_split=read_official_split(files), params={"csv": csv_path})
