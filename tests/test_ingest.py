"""Reading dataset layouts (NIH, COVID CSV, image folders) and patient-wise splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrjobs.data.covid import read_covid
from cxrjobs.data.imagefolder import parse_class_map, read_imagefolder
from cxrjobs.data.nih import FINDINGS, LABELS, read_nih, read_nih_csv
from cxrjobs.data.preprocess import PreprocessSpec, plan
from cxrjobs.data.splits import assign_splits, check_patient_disjoint
from cxrjobs.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIH_TABLE = SHARED / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
COVID = SHARED / "covid-xray"

needs_nih_table = pytest.mark.skipif(
    not NIH_TABLE.is_file(), reason=f"real NIH label table not found at {NIH_TABLE} (../shared/data is absent)")
needs_covid = pytest.mark.skipif(
    not (COVID / "metadata.csv").is_file(), reason=f"real covid-xray set not found at {COVID} (../shared/data is absent)")

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def write_png(path: Path, value: int = 100, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def make_nih(root: Path, rows: list[tuple[str, str, int, str]], images: bool = True) -> Path:
    """NIH layout: Data_Entry_2017.csv (official header) + images_001/images/*.png.
    rows: (Image Index, Finding Labels, Patient ID, View Position)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [NIH_HEADER]
    for i, (name, labels, pid, view) in enumerate(rows):
        lines.append(f"{name},{labels},{i},{pid:05d},50,M,{view},2500,2048,0.143,0.143")
        if images:
            write_png(root / "images_001" / "images" / name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def nih_rows(patients: int = 12, per: int = 3) -> list[tuple[str, str, int, str]]:
    rows = []
    for pid in range(1, patients + 1):
        for fu in range(per):
            label = "No Finding" if (pid + fu) % 3 else FINDINGS[(pid + fu) % len(FINDINGS)]
            rows.append((f"{pid:08d}_{fu:03d}.png", label, pid, "PA" if fu % 2 else "AP"))
    return rows


# ----------------------------------------------------------------------------- NIH: the full table

@pytest.fixture(scope="module")
def nih_table():
    if not NIH_TABLE.is_file():
        pytest.skip(f"real NIH label table not found at {NIH_TABLE} (../shared/data is absent)")
    return read_nih_csv(str(NIH_TABLE))


@needs_nih_table
def test_full_nih_table_parses(nih_table):
    records, rejects = nih_table
    assert rejects == []
    assert len(records) == 112_120
    assert records["patient_id"].nunique() == 30_805
    assert records["image_id"].is_unique
    assert list(records.columns) == ["image_id", "patient_id", "path", "labels", "view"]
    # Leading zeros are stripped ("00000001" -> "1") and every label is a known class.
    assert records.loc[records["image_id"] == "00000001_000.png", "patient_id"].item() == "1"
    assert set(records["labels"].str.split("|").explode()) == set(LABELS)
    assert set(records["view"]) == {"PA", "AP"}


@needs_nih_table
def test_full_nih_table_patient_wise_split(nih_table):
    records, _ = nih_table
    split = assign_splits(records, seed=0, negative="No Finding")
    assert split.notna().all() and set(split) == {"train", "val", "test"}
    per_patient = split.groupby(records["patient_id"]).nunique()
    assert (per_patient > 1).sum() == 0  # zero patients in two splits
    check_patient_disjoint(records.assign(split=split))
    patients = split.groupby(records["patient_id"]).first()
    frac = patients.value_counts(normalize=True)
    for name, want in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        assert abs(frac[name] - want) < 0.005, frac
    # Stratified: each split has about the same share of patients with any finding.
    positive = (records["labels"] != "No Finding").groupby(records["patient_id"]).any()
    share = positive.groupby(patients).mean()
    assert share.max() - share.min() < 0.01, share

    again = assign_splits(records, seed=0, negative="No Finding")
    pd.testing.assert_series_equal(split, again)
    other = assign_splits(records, seed=1, negative="No Finding")
    assert (other != split).mean() > 0.2
    assert other.groupby(records["patient_id"]).nunique().max() == 1


def test_split_fractions_must_sum_to_one():
    records = pd.DataFrame({"image_id": ["a"], "patient_id": ["1"], "labels": ["x"]})
    with pytest.raises(DataError, match="sum to 1"):
        assign_splits(records, fractions=(0.5, 0.1, 0.1))


def test_small_set_keeps_both_classes_in_every_split():
    # 20 positive and 20 negative patients: stratification puts some of each in every split.
    records = pd.DataFrame({
        "image_id": [f"{i}.png" for i in range(40)],
        "patient_id": [str(i) for i in range(40)],
        "labels": ["COVID-19"] * 20 + ["non-COVID"] * 20,
    })
    split = assign_splits(records, seed=5, negative="non-COVID")
    for name in ("train", "val", "test"):
        assert set(records.loc[split == name, "labels"]) == {"COVID-19", "non-COVID"}, name


# ----------------------------------------------------------------------------- NIH: small layouts

def test_official_lists_keep_test_and_split_train_val_by_patient(tmp_path):
    rows = nih_rows(patients=12, per=3)
    root = make_nih(tmp_path / "nih", rows)
    test_ids = [r[0] for r in rows if r[2] <= 3]
    tv_ids = [r[0] for r in rows if r[2] > 3]
    (root / "test_list.txt").write_text("\n".join(test_ids) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(tv_ids) + "\n")

    src = read_nih(str(root))
    assert src.rejects == []
    assert src.official_split is not None and len(src.official_split) == len(rows)
    split = assign_splits(src.records, seed=0, negative="No Finding", official=src.official_split)
    by_id = dict(zip(src.records["image_id"], split))
    assert all(by_id[i] == "test" for i in test_ids)
    assert {by_id[i] for i in tv_ids} == {"train", "val"}
    check_patient_disjoint(src.records.assign(split=split))
    assert split.groupby(src.records["patient_id"]).nunique().max() == 1

    # The whole plan (as preprocessing uses it) honours the lists too, whatever the seed.
    for seed in (0, 1, 2):
        _, rec = plan(PreprocessSpec(source=str(root), format="nih", size=16, seed=seed))
        assert set(rec.loc[rec["split"] == "test", "image_id"]) == set(test_ids)


def test_official_lists_missing_an_image_is_an_error(tmp_path):
    rows = nih_rows(patients=6, per=2)
    root = make_nih(tmp_path / "nih", rows)
    (root / "test_list.txt").write_text(rows[0][0] + "\n")
    (root / "train_val_list.txt").write_text("\n".join(r[0] for r in rows[2:]) + "\n")  # rows[1] nowhere
    src = read_nih(str(root))
    with pytest.raises(DataError, match="neither train_val_list.txt nor test_list.txt"):
        assign_splits(src.records, official=src.official_split)


def test_without_official_lists_the_split_is_seeded(tmp_path):
    root = make_nih(tmp_path / "nih", nih_rows())
    src = read_nih(str(root))
    assert src.official_split is None
    a = assign_splits(src.records, seed=0, negative="No Finding")
    assert set(a) <= {"train", "val", "test"} and "test" in set(a)
    pd.testing.assert_series_equal(a, assign_splits(src.records, seed=0, negative="No Finding"))


def test_missing_image_and_unlisted_image_are_rejects_not_errors(tmp_path):
    rows = nih_rows(patients=4, per=2)
    root = make_nih(tmp_path / "nih", rows)
    gone = root / "images_001" / "images" / rows[3][0]
    gone.unlink()
    extra = root / "images_002" / "images" / "99999999_000.png"
    write_png(extra)
    (root / "images_002" / "images" / "readme.txt").write_text("not an image, not listed")

    src = read_nih(str(root))
    assert len(src.records) == len(rows) - 1
    assert rows[3][0] not in set(src.records["image_id"])
    reasons = dict(src.rejects)
    assert len(reasons) == 2
    assert "no image file" in reasons[rows[3][0]]
    assert "no row" in reasons[str(extra)]
    assert src.records["path"].map(lambda p: Path(p).is_file()).all()


def test_images_found_at_any_depth(tmp_path):
    # Kaggle spreads the images over images_001/images ... images_012/images.
    rows = nih_rows(patients=2, per=2)
    root = make_nih(tmp_path / "nih", rows, images=False)
    for i, r in enumerate(rows):
        write_png(root / f"images_{i + 1:03d}" / "images" / r[0])
    src = read_nih(str(root))
    assert src.rejects == [] and len(src.records) == len(rows)


def test_unknown_label_rows_are_rejected_with_the_label_named(tmp_path):
    rows = nih_rows(patients=4, per=2)
    rows[2] = (rows[2][0], "Effusion|Covfefe", rows[2][2], "PA")
    rows[5] = (rows[5][0], "pneumonia", rows[5][2], "PA")  # wrong case is unknown too
    root = make_nih(tmp_path / "nih", rows)
    src = read_nih(str(root))
    assert len(src.records) == len(rows) - 2
    reasons = dict(src.rejects)
    assert "Covfefe" in reasons[rows[2][0]] and "unknown label" in reasons[rows[2][0]]
    assert "'pneumonia'" in reasons[rows[5][0]]
    assert not ({rows[2][0], rows[5][0]} & set(src.records["image_id"]))
    # Each bad row is one reject: its image file is not also reported as having no CSV row.
    assert len(src.rejects) == 2


def test_duplicate_rows_are_rejected(tmp_path):
    rows = nih_rows(patients=3, per=1)
    root = make_nih(tmp_path / "nih", rows + [rows[0]])
    records, rejects = read_nih_csv(str(root / "Data_Entry_2017.csv"))
    assert len(records) == 3
    assert rejects == [(rows[0][0], f"{root / 'Data_Entry_2017.csv'}: duplicate row for this Image Index")]


def test_csv_missing_required_columns_names_them(tmp_path):
    p = tmp_path / "Data_Entry_2017.csv"
    p.write_text("Image Index,Labels,View Position\n00000001_000.png,No Finding,PA\n")
    with pytest.raises(DataError) as e:
        read_nih_csv(str(p))
    msg = str(e.value)
    assert "Finding Labels" in msg and "Patient ID" in msg and "missing" in msg
    with pytest.raises(DataError, match="Patient ID"):
        read_nih(str(tmp_path))


def test_no_csv_in_folder(tmp_path):
    with pytest.raises(DataError, match="Data_Entry_2017"):
        read_nih(str(tmp_path))


# ----------------------------------------------------------------------------- COVID CSV layout

@needs_covid
def test_real_covid_folder():
    src = read_covid(str(COVID))
    assert src.rejects == []
    rec = src.records
    assert len(rec) == 169
    assert rec["patient_id"].nunique() == 94
    assert src.label_names == ["non-COVID", "COVID-19"]
    assert rec["labels"].value_counts().to_dict() == {"COVID-19": 115, "non-COVID": 54}
    meta = pd.read_csv(COVID / "metadata.csv", dtype=str, keep_default_na=False)
    want = dict(zip(meta["filename"].str.replace("/", "__"), meta["covid"]))
    got = dict(zip(rec["image_id"], rec["labels"]))
    assert {k: "COVID-19" if v == "1" else "non-COVID" for k, v in want.items()} == got
    assert rec["path"].map(lambda p: Path(p).is_file()).all()
    assert set(rec["view"]) <= {"PA", "AP", "AP Supine"}
    split = assign_splits(rec, seed=0, negative="non-COVID")
    check_patient_disjoint(rec.assign(split=split))
    for name in ("train", "val", "test"):  # stratified: both classes in every split
        assert set(rec.loc[split == name, "labels"]) == {"COVID-19", "non-COVID"}


@needs_covid
def test_covid_views_and_modality_are_filtered(tmp_path):
    meta = pd.read_csv(COVID / "metadata.csv", dtype=str, keep_default_na=False)
    meta["modality"] = "X-ray"
    meta.loc[0, "view"] = "L"
    meta.loc[1, "modality"] = "CT"
    meta.loc[2, "modality"] = ""  # unknown modality is kept
    csv = tmp_path / "meta.csv"
    meta.to_csv(csv, index=False)

    src = read_covid(str(COVID), csv_path=str(csv))
    assert len(src.records) == 167
    ids = set(src.records["image_id"])
    assert meta.loc[0, "filename"].replace("/", "__") not in ids
    assert meta.loc[1, "filename"].replace("/", "__") not in ids
    assert meta.loc[2, "filename"].replace("/", "__") in ids
    assert src.excluded["modality not X-ray"] == 1
    assert sum(v for k, v in src.excluded.items() if k.startswith("view")) == 1
    assert src.rejects == []

    only_pa = read_covid(str(COVID), views=("PA",), csv_path=str(csv))
    assert set(only_pa.records["view"]) == {"PA"}
    assert len(only_pa.records) == int(((meta["view"] == "PA") & (meta["modality"] != "CT")).sum())


def _covid_folder(root: Path, rows: list[tuple[str, str, str]], covid_col: bool) -> Path:
    """rows: (filename, patientid, finding)"""
    for name, _, _ in rows:
        write_png(root / name)
    df = pd.DataFrame(rows, columns=["filename", "patientid", "finding"])
    df["view"] = "PA"
    if covid_col:
        df["covid"] = df["finding"].str.contains("COVID-19").astype(int)
    df.to_csv(root / "metadata.csv", index=False)
    return root


def test_covid_label_derived_from_finding_without_covid_column(tmp_path):
    rows = [("covid/a.png", "1", "Pneumonia/Viral/COVID-19"), ("covid/b.png", "2", "COVID-19, ARDS"),
            ("non_covid/c.png", "3", "No Finding"), ("non_covid/d.png", "4", "Pneumonia/Viral/SARS"),
            ("non_covid/e.png", "4", "Pneumonia/Bacterial/Streptococcus")]
    src = read_covid(str(_covid_folder(tmp_path, rows, covid_col=False)))
    got = dict(zip(src.records["image_id"], src.records["labels"]))
    assert got == {"covid__a.png": "COVID-19", "covid__b.png": "COVID-19", "non_covid__c.png": "non-COVID",
                   "non_covid__d.png": "non-COVID", "non_covid__e.png": "non-COVID"}
    assert src.records.loc[src.records["image_id"] == "non_covid__e.png", "patient_id"].item() == "4"


@pytest.mark.parametrize("covid_col", [False, True])
def test_covid_views_that_keep_no_row_name_the_views_there_are(tmp_path, covid_col):
    """A --views filter that keeps nothing used to end in KeyError: 'finding' (a traceback)."""
    rows = [("covid/a.png", "1", "COVID-19"), ("non_covid/c.png", "3", "No Finding")]
    root = _covid_folder(tmp_path, rows, covid_col=covid_col)
    with pytest.raises(DataError, match=r"no X-ray row has a view in \['XYZ'\] \(--views\).*\['PA'\]"):
        read_covid(str(root), views=("XYZ",))


def test_covid_csv_needs_covid_or_finding(tmp_path):
    (tmp_path / "metadata.csv").write_text("filename,patientid,view\na.png,1,PA\n")
    with pytest.raises(DataError, match="finding"):
        read_covid(str(tmp_path))
    (tmp_path / "metadata.csv").write_text("name,covid\na.png,1\n")
    with pytest.raises(DataError, match="filename.*patientid"):
        read_covid(str(tmp_path))


def test_covid_bad_value_and_missing_file_are_rejects(tmp_path):
    rows = [("covid/a.png", "1", "COVID-19"), ("covid/b.png", "2", "COVID-19"), ("non_covid/c.png", "3", "No Finding")]
    root = _covid_folder(tmp_path, rows, covid_col=True)
    meta = pd.read_csv(root / "metadata.csv", dtype=str)
    meta.loc[0, "covid"] = "yes"
    meta.to_csv(root / "metadata.csv", index=False)
    (root / "covid" / "b.png").unlink()
    src = read_covid(str(root))
    assert list(src.records["image_id"]) == ["non_covid__c.png"]
    reasons = dict(src.rejects)
    assert "'yes'" in reasons[str(root / "covid" / "a.png")]
    assert "does not exist" in reasons[str(root / "covid" / "b.png")]


def test_covid_without_metadata(tmp_path):
    with pytest.raises(DataError, match="metadata.csv"):
        read_covid(str(tmp_path))


# ----------------------------------------------------------------------------- image folders

def test_imagefolder_with_class_map(tmp_path):
    for folder, n in (("COVID", 3), ("NORMAL", 2), ("Viral Pneumonia", 2)):
        for i in range(n):
            write_png(tmp_path / folder / f"{folder[:3]}-{i}.png")
    (tmp_path / "COVID" / "notes.txt").write_text("listed as a reject: skipped files are never silent")
    (tmp_path / "COVID" / ".DS_Store").write_text("hidden: ignored")
    labels = ["non-COVID", "COVID-19"]
    cmap = parse_class_map("COVID=1,NORMAL=0", labels)
    assert cmap == {"covid": "COVID-19", "normal": "non-COVID"}

    src = read_imagefolder(str(tmp_path), cmap, labels)
    assert src.label_names == labels
    got = src.records.groupby("labels").size().to_dict()
    assert got == {"COVID-19": 3, "non-COVID": 2}
    reasons = dict(src.rejects)
    assert reasons.pop(str(tmp_path / "COVID" / "notes.txt")) == "not an image file (.png, .jpg, .jpeg)"
    assert len(reasons) == 2 and all("Viral Pneumonia" in p for p in reasons)
    assert all("no class" in r for r in reasons.values())
    assert src.records["patient_id"].is_unique  # no regex: each image is its own patient

    # Through the planner too: splits over the mapped records only.
    _, rec = plan(PreprocessSpec(source=str(tmp_path), format="imagefolder", size=16,
                                 class_map="COVID=1,NORMAL=0", labels=labels))
    assert len(rec) == 5 and set(rec["labels"]) == set(labels)


def test_imagefolder_patient_regex_groups_images(tmp_path):
    for name in ("p1-a.png", "p1-b.png", "p2-a.png"):
        write_png(tmp_path / "covid" / name)
    write_png(tmp_path / "normal" / "p3-a.png")
    src = read_imagefolder(str(tmp_path), parse_class_map("covid=COVID-19,normal=non-COVID", None),
                           ["non-COVID", "COVID-19"], r"^(p\d+)-")
    assert sorted(src.records["patient_id"]) == ["p1", "p1", "p2", "p3"]
    # A pattern that matches no name made every image its own patient without a word: image-wise
    # splits where patient-wise ones were asked for.
    with pytest.raises(DataError, match=r"--patient-regex .nomatch.* matched none of the 4 file names"):
        read_imagefolder(str(tmp_path), parse_class_map("covid=COVID-19,normal=non-COVID", None),
                         ["non-COVID", "COVID-19"], r"nomatch(\d+)")


def test_imagefolder_without_map_uses_folder_names(tmp_path):
    write_png(tmp_path / "b" / "1.png")
    write_png(tmp_path / "a" / "2.jpg")
    src = read_imagefolder(str(tmp_path))
    assert src.label_names == ["a", "b"] and len(src.records) == 2 and src.rejects == []


@pytest.mark.parametrize("text,labels,match", [
    ("COVID", None, "expected FOLDER=LABEL"),
    ("COVID=1", None, "needs --labels"),
    ("COVID=2", ["non-COVID", "COVID-19"], "at least 3"),
    ("=1", ["a", "b"], "expected FOLDER=LABEL"),
    # Its folder's images were all rejected, leaving a one-class dataset (exit 0).
    ("covid=x,non_covid=0", ["a", "b"], "'x' is neither an index into --labels nor one of them"),
])
def test_class_map_errors(text, labels, match):
    with pytest.raises(DataError, match=match):
        parse_class_map(text, labels)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        read_imagefolder(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no class folders"):
        read_imagefolder(str(tmp_path))


# ----------------------------------------------------------------------------- data integrity (issue 6)

def make_covid(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """COVID layout: metadata.csv (filename, patientid, covid, view) + the PNGs it names."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["filename,patientid,covid,view,modality"]
    for name, pid, covid in rows:
        lines.append(f"{name},{pid},{covid},PA,X-ray")
        if not name.startswith("/") and ".." not in name:
            write_png(root / name)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def covid_rows(n: int = 12) -> list[tuple[str, str, str]]:
    return [(f"img/{i:03d}.png", f"p{i}", str(i % 2)) for i in range(n)]


def test_covid_duplicate_filename_rows_are_rejected_never_in_two_splits(tmp_path):
    rows = covid_rows()
    # the same image listed again under ANOTHER patient (it could land in train and in val), and
    # an exact repeat of a row (harmless: kept once)
    root = make_covid(tmp_path / "c", rows + [(rows[0][0], "p99", rows[0][2]), rows[1]])
    src = read_covid(str(root))
    ids = src.records["image_id"]
    assert ids.is_unique
    assert "img__000.png" not in set(ids)  # conflicting rows: every one rejected
    assert (ids == "img__001.png").sum() == 1
    reasons = [r for p, r in src.rejects]
    assert sum("listed 2 times with different patient ids" in r for r in reasons) == 2
    assert sum("duplicate row for this filename" in r for r in reasons) == 1
    _, rec = plan(PreprocessSpec(source=str(root), format="covid", size=16, fractions=(0.5, 0.5, 0.0)))
    assert rec["image_id"].is_unique and len(rec) == len(rows) - 1


def test_imagefolder_same_name_in_nested_folders_gives_distinct_ids(tmp_path):
    for sub in ("a", "b"):
        write_png(tmp_path / "covid" / sub / "x.png")
    write_png(tmp_path / "covid" / "x.png")
    write_png(tmp_path / "normal" / "x.png")
    src = read_imagefolder(str(tmp_path))
    assert sorted(src.records["image_id"]) == ["covid__a__x.png", "covid__b__x.png", "covid__x.png",
                                               "normal__x.png"]
    # ids that still collide ('a/x.png' vs a file literally named 'a__x.png') are rejected, both
    write_png(tmp_path / "covid" / "a__x.png")
    src = read_imagefolder(str(tmp_path))
    assert src.records["image_id"].is_unique and "covid__a__x.png" not in set(src.records["image_id"])
    assert len([r for _, r in src.rejects if "listed 2 times" in r]) == 2


def test_nih_same_file_name_in_two_images_folders_is_rejected(tmp_path):
    rows = nih_rows(patients=4, per=2)
    root = make_nih(tmp_path / "nih", rows)
    copy = root / "images_002" / "images" / rows[0][0]
    write_png(copy, value=200)  # another image under the same name: which one is labelled?
    src = read_nih(str(root))
    assert rows[0][0] not in set(src.records["image_id"]) and len(src.records) == len(rows) - 1
    (reason,) = [r for p, r in src.rejects if p == rows[0][0]]
    assert "2 folders" in reason and str(copy) in reason
    assert len(src.rejects) == 1  # one reject for the row, not also "no row" for its copies


def test_empty_patient_ids_are_rejected_not_merged(tmp_path):
    rows = nih_rows(patients=4, per=2)
    root = make_nih(tmp_path / "nih", rows)
    csv = root / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    for i in (1, 4):  # two different patients' rows lose their id
        cells = lines[i].split(",")
        cells[3] = " "
        lines[i] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    src = read_nih(str(root))
    assert len(src.records) == len(rows) - 2 and (src.records["patient_id"] != "").all()
    assert "0" not in set(src.records["patient_id"])
    empty = [(p, r) for p, r in src.rejects if "empty 'Patient ID'" in r]
    assert sorted(p for p, _ in empty) == sorted([rows[0][0], rows[3][0]])
    # COVID: the same rule
    croot = make_covid(tmp_path / "c", covid_rows(4) + [("img/x.png", "", "1")])
    csrc = read_covid(str(croot))
    assert "img__x.png" not in set(csrc.records["image_id"])
    assert any("empty 'patientid'" in r for _, r in csrc.rejects)


def test_nih_patient_ids_keep_leading_zero_rule(tmp_path):
    root = make_nih(tmp_path / "nih", nih_rows(patients=2, per=1))
    records, _ = read_nih_csv(str(root / "Data_Entry_2017.csv"))
    assert list(records["patient_id"]) == ["1", "2"]  # '00001' -> '1', as before


def test_covid_filename_outside_the_dataset_is_rejected(tmp_path):
    secret = tmp_path / "secret.png"
    write_png(secret)
    root = make_covid(tmp_path / "c", covid_rows(4) + [(str(secret), "p8", "1"), ("../secret.png", "p9", "0"),
                                                        ("img/../../secret.png", "p10", "0")])
    src = read_covid(str(root))
    assert len(src.records) == 4
    assert not src.records["path"].str.contains("secret").any()
    bad = [r for p, r in src.rejects if "secret" in p]
    assert len(bad) == 3 and all("not a path inside the dataset folder" in r for r in bad)


def test_symlinked_images_folder_is_followed(tmp_path):
    rows = nih_rows(patients=3, per=2)
    root = make_nih(tmp_path / "nih", rows, images=False)
    elsewhere = tmp_path / "other-disk" / "images_002"
    for r in rows:
        write_png(elsewhere / "images" / r[0])
    (root / "images_002").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "images" / "loop").symlink_to(elsewhere, target_is_directory=True)  # entered once
    src = read_nih(str(root))
    assert src.rejects == [] and len(src.records) == len(rows)
    assert all(Path(p).is_file() for p in src.records["path"])


NON_UTF8 = b"caf\xe9-1.png"  # Latin-1, not UTF-8


def test_non_utf8_file_names_are_rejected_with_a_reason(tmp_path):
    # imagefolder: the name would become an image id and crash the shard CSV
    write_png(tmp_path / "if" / "covid" / "ok.png")
    write_png(tmp_path / "if" / "normal" / "ok.png")
    bad = (str(tmp_path / "if" / "covid").encode() + b"/" + NON_UTF8)
    with open(bad, "wb") as f:
        f.write((tmp_path / "if" / "covid" / "ok.png").read_bytes())
    src = read_imagefolder(str(tmp_path / "if"))
    assert len(src.records) == 2
    (path, reason), = src.rejects
    assert "not valid UTF-8" in reason and "caf\\xe9-1.png" in path
    path.encode("utf-8")  # printable: it can be written to rejects.csv
    # NIH: an unlisted file with such a name must not crash writing ingest-rejects.csv
    root = make_nih(tmp_path / "nih", nih_rows(patients=2, per=1))
    with open(str(root / "images_001" / "images").encode() + b"/" + NON_UTF8, "wb") as f:
        f.write(b"x")
    nsrc = read_nih(str(root))
    assert len(nsrc.records) == 2 and [r for _, r in nsrc.rejects if "UTF-8" in r]
