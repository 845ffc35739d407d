"""NIH ChestX-ray14: Data_Entry_2017*.csv + images anywhere under the root."""

from __future__ import annotations

import glob
import os

import pandas as pd

from cxrjobs.data.source import Source, read_csv, require_columns, scan_images, split_unknown_labels
from cxrjobs.errors import DataError

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia"]
NO_FINDING = "No Finding"
LABELS = FINDINGS + [NO_FINDING]  # the paper's 15-class single-label view

REQUIRED = ["Image Index", "Finding Labels", "Patient ID"]


def find_csv(root: str) -> str:
    hits = sorted(glob.glob(os.path.join(root, "Data_Entry_2017*.csv*")))
    if not hits:
        raise DataError(f"{root}: no Data_Entry_2017*.csv(.gz) found; pass the NIH dataset folder "
                        "that holds the label CSV, or --csv PATH")
    return hits[0]


def read_nih_csv(csv_path: str) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Records (without paths) and rejects for unknown labels."""
    df = read_csv(csv_path, dtype=str, keep_default_na=False)
    require_columns(df, REQUIRED, csv_path)
    view = df["View Position"] if "View Position" in df.columns else ""
    records = pd.DataFrame({
        "image_id": df["Image Index"].str.strip(),
        "patient_id": df["Patient ID"].str.strip().str.lstrip("0").replace("", "0"),
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
    dup = records["image_id"].duplicated()
    for image_id in records.loc[dup, "image_id"]:
        rejects.append((image_id, f"{csv_path}: duplicate row for this Image Index"))
    return records.loc[~dup].reset_index(drop=True), rejects


def read_official_split(root: str) -> pd.Series | None:
    test = os.path.join(root, "test_list.txt")
    train_val = os.path.join(root, "train_val_list.txt")
    if not (os.path.isfile(test) and os.path.isfile(train_val)):
        return None
    parts = []
    for path, split in ((train_val, "train_val"), (test, "test")):
        with open(path) as f:
            ids = [line.strip() for line in f if line.strip()]
        parts.append(pd.Series(split, index=ids))
    return pd.concat(parts)


def read_nih(root: str, csv_path: str | None = None) -> Source:
    csv_path = csv_path or find_csv(root)
    records, rejects = read_nih_csv(csv_path)
    images = scan_images(root)
    records["path"] = records["image_id"].map(images)
    missing = records["path"].isna()
    for image_id in records.loc[missing, "image_id"]:
        rejects.append((image_id, f"listed in {os.path.basename(csv_path)} but no image file under {root}"))
    # Rows already rejected (unknown label, duplicate) are listed too: their file is not "unlisted".
    listed = set(records["image_id"]) | {image_id for image_id, _ in rejects}
    for name, path in images.items():
        if name not in listed:
            rejects.append((path, f"image has no row in {os.path.basename(csv_path)}"))
    return Source(format="nih", root=root, records=records.loc[~missing].reset_index(drop=True),
                  label_names=list(LABELS), findings=list(FINDINGS), rejects=rejects,
                  official_split=read_official_split(root), params={"csv": csv_path})
