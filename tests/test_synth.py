"""Synthetic dataset generator: real layouts, deliberate quirks, determinism, learnable signal."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrjobs.data.synth import (
    FINDINGS, NIH_COLUMNS, NIH_CSV, phantom_image, synth_covid, synth_nih,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_NIH = SHARED / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
REAL_COVID = SHARED / "covid-xray" / "metadata.csv"
needs_nih = pytest.mark.skipif(not REAL_NIH.exists(), reason=f"real NIH label table not found at {REAL_NIH}")
needs_covid = pytest.mark.skipif(not REAL_COVID.exists(),
                                 reason=f"real COVID metadata not found at {REAL_COVID} (../shared/data is absent)")
COVID_READER_COLUMNS = {"filename", "patientid", "finding", "covid", "view", "offset", "sex", "age"}


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    out = tmp_path_factory.mktemp("nih")
    return synth_nih(out, 50, size=128, seed=3)


@pytest.fixture(scope="module")
def covid(tmp_path_factory):
    out = tmp_path_factory.mktemp("covid")
    return synth_covid(out, 60, size=128, seed=0)


def _loads(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError):
        return False


def test_nih_header_matches_official_file(nih):
    ours = (nih.out / NIH_CSV).read_text().splitlines()[0]
    cols = list(pd.read_csv(nih.out / NIH_CSV, nrows=1).columns)
    assert cols == NIH_COLUMNS and len(cols) == 11  # the bracketed cells split on their commas
    assert ours.startswith("Image Index,Finding Labels,Follow-up #,Patient ID,")


@needs_nih
def test_nih_header_is_the_real_files_header(nih):
    ours = (nih.out / NIH_CSV).read_text().splitlines()[0]
    with gzip.open(REAL_NIH, "rt") as f:
        assert ours == f.readline().rstrip("\r\n")
    assert list(pd.read_csv(nih.out / NIH_CSV, nrows=1).columns) == list(pd.read_csv(REAL_NIH, nrows=1).columns)


def test_nih_layout_and_rows(nih):
    df = pd.read_csv(nih.out / NIH_CSV)
    assert len(df) == nih.images == 50
    assert df["Patient ID"].nunique() == nih.patients
    assert 8 <= nih.patients <= 30  # about count / 3
    for row in df.itertuples(index=False):
        assert re.fullmatch(rf"{row[3]:08d}_{row[2]:03d}\.png", row[0])
        assert all(s in FINDINGS for s in row[1].split("|")) or row[1] == "No Finding"
        assert row[6] in ("PA", "AP")
    files = sorted(p.relative_to(nih.out).as_posix() for p in nih.out.rglob("*.png"))
    assert files == [f"images_001/images/{i}" for i in df["Image Index"]]
    plain = [f for f in files if not any(f in v for v in nih.special.values())]
    for f in plain[:10]:
        with Image.open(nih.out / f) as im:
            assert (im.mode, im.size) == ("L", (128, 128))


def test_nih_special_files(nih):
    sp = nih.special
    assert len(sp["rgba"]) >= 1 and len(sp["16bit"]) >= 1 and len(nih.corrupt) == 2
    listed = set("images_001/images/" + pd.read_csv(nih.out / NIH_CSV)["Image Index"])
    assert set(sum(sp.values(), [])) <= listed  # quirky files are still in the label table
    for f in sp["rgba"]:
        with Image.open(nih.out / f) as im:
            assert im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255)
    for f in sp["16bit"]:
        with Image.open(nih.out / f) as im:
            assert im.mode == "I;16"
            a = np.asarray(im)
        # A real detector range: a reader that assumes 0..65535 (or 0..255) gets it wrong.
        assert a.min() >= 400 and a.max() <= 45000 and a.max() - a.min() > 10000
    (truncated,), (empty,) = sp["truncated"], sp["empty"]
    assert (nih.out / empty).stat().st_size == 0
    assert (nih.out / truncated).stat().st_size > 0 and not _loads(nih.out / truncated)
    assert "truncated=1" in nih.line() and "50 images" in nih.line()


def test_nih_deterministic_and_worker_independent(nih, tmp_path):
    again = synth_nih(tmp_path / "a", 50, size=128, seed=3, workers=2)
    other = synth_nih(tmp_path / "b", 50, size=128, seed=4, special=False)
    assert again.special == nih.special
    plain = next(f for f in sorted(p.relative_to(nih.out).as_posix() for p in nih.out.rglob("*.png"))
                 if not any(f in v for v in nih.special.values()))
    assert (again.out / plain).read_bytes() == (nih.out / plain).read_bytes()
    assert (nih.out / NIH_CSV).read_bytes() == (again.out / NIH_CSV).read_bytes()
    assert (nih.out / NIH_CSV).read_bytes() != (other.out / NIH_CSV).read_bytes()
    assert not any(other.special.values())


def test_nih_label_mix(tmp_path):
    s = synth_nih(tmp_path, 200, size=32, seed=1, special=False)
    labels = pd.read_csv(s.out / NIH_CSV)["Finding Labels"]
    counts = labels.str.split("|").explode().value_counts()
    assert all(counts.get(f, 0) >= 3 for f in FINDINGS), counts
    assert 0.3 <= (labels == "No Finding").mean() <= 0.6
    assert 0.08 <= labels.str.contains("|", regex=False).mean() <= 0.35


@needs_nih
def test_nih_from_csv_keys_real_rows(tmp_path):
    s = synth_nih(tmp_path, 40, size=64, seed=5, from_csv=REAL_NIH)
    ours = pd.read_csv(s.out / NIH_CSV)
    real = pd.read_csv(REAL_NIH)
    assert len(ours) == 40 and list(ours.columns) == list(real.columns)
    # Whole patients: every real row of a chosen patient is there, verbatim.
    expect = real[real["Patient ID"].isin(ours["Patient ID"])].sort_values("Image Index")
    pd.testing.assert_frame_equal(ours, expect.reset_index(drop=True))
    for name in ours["Image Index"]:
        (hit,) = s.out.glob(f"images_*/images/{name}")
    assert s.patients == ours["Patient ID"].nunique()


def test_covid_layout(covid):
    df = pd.read_csv(covid.out / "metadata.csv")
    assert len(df) == covid.images == 60
    assert COVID_READER_COLUMNS <= set(df.columns)
    assert "modality" in df.columns
    assert (df["covid"] == df["finding"].str.contains("COVID-19")).all()
    assert (df["filename"].str.split("/").str[0] == np.where(df["covid"] == 1, "covid", "non_covid")).all()
    assert 0.4 <= df["covid"].mean() <= 0.8
    assert df.groupby("patientid").size().between(1, 3).all()
    assert set(df["view"]) <= {"PA", "AP", "AP Supine", "L", "Axial"}
    assert sorted(covid.special["lateral"]) == sorted(df.loc[df["view"] == "L", "filename"])
    assert sorted(covid.special["ct"]) == sorted(df.loc[df["modality"] == "CT", "filename"])
    assert covid.special["lateral"] and covid.special["ct"]  # both kinds a reader must drop
    for f in df["filename"]:
        assert (covid.out / f).is_file()


@needs_covid
def test_covid_columns_are_the_real_files(covid):
    """The columns a reader of the real file relies on are in both files."""
    assert COVID_READER_COLUMNS <= set(pd.read_csv(REAL_COVID, nrows=1).columns)
    assert COVID_READER_COLUMNS <= set(pd.read_csv(covid.out / "metadata.csv", nrows=1).columns)


def test_covid_special_files(covid):
    jpgs = covid.special["rgb_jpeg"]
    assert jpgs and all(f.endswith(".jpg") for f in jpgs)
    for f in jpgs:
        with Image.open(covid.out / f) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB")
    for f in covid.special["rgba"]:
        with Image.open(covid.out / f) as im:
            assert im.mode == "RGBA"
    (bad,) = covid.corrupt
    assert not _loads(covid.out / bad)


def _box(img, x0, x1, y0, y1):
    h, w = img.shape
    return float(img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)].mean())


def test_cardiomegaly_brightens_heart_region():
    # Left of the patient (image right), beyond a normal heart but inside an enlarged one.
    def mean(labels):
        return np.mean([_box(phantom_image(labels, 224, np.random.default_rng(i)), 0.64, 0.72, 0.58, 0.68)
                        for i in range(12)])
    assert mean(["Cardiomegaly"]) > mean(["No Finding"]) + 40


def test_covid_brightens_both_lower_peripheral_zones(covid):
    df = pd.read_csv(covid.out / "metadata.csv")
    frontal = df[(df["modality"] == "X-ray") & (df["view"] != "L") & ~df["filename"].isin(covid.corrupt)]
    score = {}
    for row in frontal.itertuples():
        with Image.open(covid.out / row.filename) as im:
            img = np.asarray(im.convert("L"), np.float32)
        img = img[-img.shape[1]:]  # images are cropped at the top only: re-square from the bottom
        # Bilateral: the dimmer of the two lower-lateral zones, so one-sided lobar pneumonia stays low.
        score[row.Index] = min(_box(img, 0.17, 0.26, 0.52, 0.66), _box(img, 0.74, 0.83, 0.52, 0.66))
    s = pd.Series(score)
    is_covid = frontal["covid"].astype(bool)
    assert s[is_covid].mean() > s[~is_covid].mean() + 15


@pytest.mark.parametrize("finding", FINDINGS)
def test_every_finding_leaves_a_mark(finding):
    # Same seed => same anatomy, so a smoothed difference shows the finding, not the grain.
    def smooth(labels):
        a = phantom_image(labels, 256, np.random.default_rng(7)).astype(np.float32)
        return a.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    assert np.abs(smooth([finding]) - smooth([])).max() > 25


def test_phantom_rejects_unknown_label():
    with pytest.raises(ValueError, match="Cardiomegally"):
        phantom_image(["Cardiomegally"], 64, np.random.default_rng(0))
    for view in ("L", "CT"):
        assert phantom_image([], 64, np.random.default_rng(0), view).shape == (64, 64)


# ----------------------------------------------------------------------------- bad arguments (issue 6.17)

@pytest.mark.parametrize("kw,match", [
    (dict(count=0), "--count 0"), (dict(count=-1), "--count -1"),
    (dict(size=0), "--size 0"), (dict(size=8), "between 16"), (dict(workers=0), "--workers 0"),
])
def test_synth_rejects_bad_numbers(tmp_path, kw, match):
    from cxrjobs.errors import DataError

    args = dict(count=10, size=32) | kw
    for fn in (synth_nih, synth_covid):
        with pytest.raises(DataError, match=match):
            fn(tmp_path / "o", **args)
    assert not (tmp_path / "o").exists()
