"""COVID-19 CSV layout (ieee8023/covid-chestxray-dataset and ../shared/data/covid-xray)."""

from __future__ import annotations

import os

import pandas as pd

from cxrjobs.data.source import Source, read_csv, require_columns

LABELS = ["non-COVID", "COVID-19"]
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP Erect")


def read_covid(root: str, views: tuple[str, ...] = FRONTAL_VIEWS, csv_path: str | None = None) -> Source:
    csv_path = csv_path or os.path.join(root, "metadata.csv")
    if not os.path.isfile(csv_path):
        from cxrjobs.errors import DataError
        raise DataError(f"{root}: no metadata.csv; pass the dataset folder or --csv PATH")
    df = read_csv(csv_path, dtype=str, keep_default_na=False)
    require_columns(df, ["filename", "patientid"], csv_path)
    if "covid" not in df.columns:
        require_columns(df, ["finding"], csv_path)
    excluded: dict[str, int] = {}
    if "modality" in df.columns:
        keep = df["modality"].str.strip().str.lower().isin(["x-ray", "xray", "cr", "dx", ""])
        excluded["modality not X-ray"] = int((~keep).sum())
        df = df[keep]
    if "view" in df.columns:
        keep = df["view"].str.strip().isin(views)
        excluded[f"view not in {list(views)}"] = int((~keep).sum())
        df = df[keep]
    rel = df["filename"]
    if "folder" in df.columns:
        rel = df["folder"].where(df["folder"] != "", ".") + "/" + df["filename"]
    paths = [os.path.join(root, p) for p in rel]
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
    rejects = [(p, f"{csv_path}: column 'covid' must be 0 or 1, got {v!r}")
               for p, v, b in zip(paths, covid, bad) if b]
    exists = records["path"].map(os.path.isfile)
    rejects += [(p, f"listed in {csv_path} but the file does not exist")
                for p in records.loc[~exists & ~bad.values, "path"]]
    records = records[exists.values & ~bad.values].reset_index(drop=True)
    return Source(format="covid", root=root, records=records, label_names=list(LABELS),
                  findings=[LABELS[1]], rejects=rejects, excluded=excluded,
                  params={"csv": csv_path, "views": list(views)})
