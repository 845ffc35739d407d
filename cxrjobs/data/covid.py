"""COVID-19 CSV layout (ieee8023/covid-chestxray-dataset and ../shared/data/covid-xray)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pandas as pd

from cxrjobs.data.files import Files, as_files, locate_csv
from cxrjobs.data.source import Source, reject_duplicate_ids, reject_empty_patients, require_columns
from cxrjobs.errors import DataError

LABELS = ["non-COVID", "COVID-19"]
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP Erect")


def _outside(rel: str) -> bool:
    """A CSV path that is absolute or climbs out with '..' would read files outside the dataset."""
    p = PurePosixPath(rel.replace("\\", "/"))
    return rel.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or (len(rel) > 1 and rel[1] == ":")


def read_covid(root: str | Files, views: tuple[str, ...] = FRONTAL_VIEWS, csv_path: str | None = None) -> Source:
    files = as_files(root)
    csv_path = locate_csv(files, csv_path, "metadata.csv")
    if not files.isfile(csv_path):
        raise DataError(f"{files.base}: no metadata.csv; pass the dataset folder or --csv PATH")
    df = files.read_csv(csv_path, dtype=str, keep_default_na=False)
    require_columns(df, ["filename", "patientid"], csv_path)
    if "covid" not in df.columns:
        require_columns(df, ["finding"], csv_path)
    excluded: dict[str, int] = {}
    if "modality" in df.columns:
        keep = df["modality"].str.strip().str.lower().isin(["x-ray", "xray", "cr", "dx", ""])
        excluded["modality not X-ray"] = int((~keep).sum())
        df = df[keep]
    if "view" in df.columns:
        present = sorted(set(df["view"].str.strip()))
        keep = df["view"].str.strip().isin(views)
        excluded[f"view not in {list(views)}"] = int((~keep).sum())
        df = df[keep]
        if df.empty and present:
            raise DataError(f"{csv_path}: no X-ray row has a view in {list(views)} (--views); the views "
                            f"in this CSV are {present}")
    if df.empty:
        raise DataError(f"{csv_path}: no X-ray row to read (excluded: {excluded}); check the CSV and --views")
    rel = df["filename"].str.strip()
    if "folder" in df.columns:
        rel = df["folder"].where(df["folder"] != "", ".") + "/" + rel
        rel = rel.str.replace(r"^\./", "", regex=True)
    rejects: list[tuple[str, str]] = []
    outside = rel.map(_outside)
    for r in rel[outside]:
        rejects.append((r, f"{csv_path}: filename {r!r} is not a path inside the dataset folder "
                           "(absolute, or climbs out with '..'); use a path relative to it"))
    df, rel = df[~outside], rel[~outside]
    paths = [files.locate(p) for p in rel]
    if "covid" in df.columns:
        covid = df["covid"].str.strip()
        bad = ~covid.isin(["0", "1"])
    else:
        covid = df["finding"].str.contains("COVID-19", regex=False).map({True: "1", False: "0"})
        bad = pd.Series(False, index=df.index)
    records = pd.DataFrame({
        "image_id": rel.str.replace("/", "__", regex=False).values,
        "patient_id": df["patientid"].str.strip().values,
        "path": paths,
        "labels": covid.map({"1": LABELS[1], "0": LABELS[0]}).values,
        "view": df["view"].values if "view" in df.columns else "",
    })
    rejects += [(p, f"{csv_path}: column 'covid' must be 0 or 1, got {v!r}")
                for p, v, b in zip(paths, covid, bad) if b]
    records = records[~bad.values].reset_index(drop=True)
    records = reject_empty_patients(records, rejects, csv_path, "patientid")
    records = reject_duplicate_ids(records, rejects, csv_path, "filename")
    exists = records["path"].map(files.isfile)
    rejects += [(p, f"listed in {csv_path} but the file does not exist")
                for p in records.loc[~exists, "path"]]
    records = records[exists.values].reset_index(drop=True)
    return Source(format="covid", root=files.base, records=records, label_names=list(LABELS),
                  findings=[LABELS[1]], rejects=rejects, excluded=excluded,
                  params={"csv": csv_path, "views": list(views)})
