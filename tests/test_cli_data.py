"""`cxrjobs data ...` end to end through the CLI: synth, preprocess, inspect, merge, help, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import cxrjobs.cli
from cxrjobs.cli import app
from cxrjobs.data.nih import LABELS
from cxrjobs.errors import CxrError

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str):
    result = cli(*args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def failure_text(result) -> str:
    """What a user would see: the output, or the CxrError that main() prints as 'error: ...'."""
    assert result.exit_code != 0
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert isinstance(result.exception, CxrError), repr(result.exception)
        text += str(result.exception)
    return text


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "nih"
    result = ok("data", "synth", "nih", "--out", out, "--count", 30, "--size", 128)
    assert "30 images" in result.output
    return out


@pytest.fixture(scope="module")
def preprocessed(synth_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("cli-out") / "nih-64"
    result = ok("data", "preprocess", synth_dir, "--format", "nih", "--size", 64, "--out", dest,
                "--shard-size", 8)
    assert "preprocessed 28 images (2 rejected" in result.output
    return dest


def test_synth_writes_the_nih_layout(synth_dir):
    table = pd.read_csv(synth_dir / "Data_Entry_2017.csv")
    assert len(table) == 30
    pngs = list(synth_dir.glob("images_*/images/*.png"))
    assert len(pngs) == 30
    assert {p.name for p in pngs} == set(table["Image Index"])


def test_synth_unknown_kind(tmp_path):
    result = cli("data", "synth", "mimic", "--out", tmp_path / "x", "--count", 5)
    assert result.exit_code == 2
    assert "choose nih or covid" in result.output


@pytest.mark.parametrize("args, words", [
    # A traceback (FileNotFoundError from pandas), exit 1.
    (("nih", "--from-csv", "/nonexistent.csv"), "'/nonexistent.csv' does not exist"),
    # Ignored without a word.
    (("covid", "--from-csv", __file__), "only for nih"),
])
def test_synth_refuses_options_it_cannot_use(tmp_path, args, words):
    result = cli("data", "synth", args[0], "--out", tmp_path / "x", "--size", 32, *args[1:])
    assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
    assert not (tmp_path / "x").exists()


def test_preprocess_outputs(preprocessed):
    manifest = json.loads((preprocessed / "manifest.json").read_text())
    assert manifest["images"] == 28 and manifest["rejected"] == 2 and manifest["image_size"] == 64
    assert manifest["num_shards"] == 4  # 30 planned records, 8 per shard
    index = pd.read_csv(preprocessed / "index.csv", dtype=str, keep_default_na=False)
    assert len(index) == 28
    assert index.groupby("patient_id")["split"].nunique().max() == 1


def test_inspect_json(preprocessed):
    result = ok("data", "inspect", preprocessed, "--json")
    info = json.loads(result.stdout)
    index = pd.read_csv(preprocessed / "index.csv", dtype=str, keep_default_na=False)
    assert info["dataset"] == str(preprocessed)
    assert info["format"] == "nih" and info["image_size"] == 64
    assert info["images"] == 28 and info["rejected"] == 2
    for split in ("train", "val", "test"):
        part = index[index["split"] == split]
        assert info["splits"][split] == {"images": len(part), "patients": part["patient_id"].nunique()}
    assert sum(v["images"] for v in info["splits"].values()) == 28
    assert list(info["labels"]) == [n for n in LABELS if n in info["labels"]]  # manifest order
    exploded = index["labels"].str.split("|").explode()
    for name, per_split in info["labels"].items():
        assert sum(per_split.values()) == int((exploded == name).sum()), name
    assert sum(info["views"].values()) == 28 and set(info["views"]) <= {"PA", "AP"}
    assert info["reject_reasons"] == {"empty file": 1, "corrupt or truncated image: image file is truncated": 1}


def test_inspect_table(preprocessed):
    result = ok("data", "inspect", preprocessed)
    assert "28 images, 2 rejected" in result.output
    assert "train" in result.output and "views:" in result.output and "empty file" in result.output


def test_inspect_not_preprocessed(tmp_path):
    result = cli("data", "inspect", tmp_path)
    assert "no manifest.json" in failure_text(result)


def test_sliced_preprocess_then_merge(synth_dir, preprocessed, tmp_path):
    dest = tmp_path / "sliced"
    common = ("data", "preprocess", synth_dir, "--format", "nih", "--size", 64, "--out", dest, "--shard-size", 8)
    first = ok(*common, "--shard-index", 0, "--num-shards", 2)
    assert "slice 0/2" in first.output and "data merge" in first.output
    assert not (dest / "index.csv").exists()  # slices never merge by themselves

    early = cli("data", "merge", dest)  # slice 1 has not run: shards 1 and 3 are missing
    text = failure_text(early)
    assert "2 of 4 shards" in text and "[1, 3]" in text

    ok(*common, "--shard-index", 1, "--num-shards", 2)
    merged = ok("data", "merge", dest)
    assert "merged 4 shards: 28 images, 2 rejected" in merged.output
    assert (dest / "index.csv").read_bytes() == (preprocessed / "index.csv").read_bytes()
    for npy in sorted((preprocessed / "shards").glob("*.npy")):
        assert (dest / "shards" / npy.name).read_bytes() == npy.read_bytes()

    rerun = ok(*common, "--shard-index", 1, "--num-shards", 2)  # resumable: nothing left to do
    assert "0 images" in rerun.output and "2 shards already done" in rerun.output


def test_covid_preprocess_with_views(tmp_path):
    src = tmp_path / "covid"
    ok("data", "synth", "covid", "--out", src, "--count", 30, "--size", 64)
    dest = tmp_path / "covid-32"
    ok("data", "preprocess", src, "--format", "covid", "--size", 32, "--out", dest, "--views", "PA,AP")
    info = json.loads(ok("data", "inspect", dest, "--json").stdout)
    meta = pd.read_csv(src / "metadata.csv")
    kept = meta[(meta["view"].isin(["PA", "AP"])) & (meta["modality"] == "X-ray")]
    assert info["images"] + info["rejected"] == len(kept)
    assert set(info["views"]) <= {"PA", "AP"}
    assert set(info["labels"]) <= {"non-COVID", "COVID-19"}


SUBCOMMANDS = ["synth", "preprocess", "merge", "upload", "inspect"]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_has_an_example(sub):
    result = ok("data", sub, "--help")
    assert "Example" in result.output
    assert "cxrjobs data " + sub in result.output


def test_data_help_lists_every_subcommand():
    result = ok("data", "--help")
    for sub in SUBCOMMANDS:
        assert sub in result.output


def test_preprocess_csv_missing_columns(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "Data_Entry_2017.csv").write_text("Image Index,Labels,View Position\n00000001_000.png,No Finding,PA\n")
    result = cli("data", "preprocess", src, "--format", "nih", "--size", 64, "--out", tmp_path / "o")
    text = failure_text(result)
    assert "Finding Labels" in text and "Patient ID" in text and "missing" in text


def test_main_prints_error_and_exits_2(tmp_path, monkeypatch, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\n00000001_000.png,No Finding\n")
    monkeypatch.setattr(sys, "argv", ["cxrjobs", "data", "preprocess", str(src), "--format", "nih",
                                      "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        cxrjobs.cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Patient ID" in err and "Traceback" not in err


@pytest.mark.parametrize("args,words", [
    (("--fit", "stretch"), ["invalid preprocess options", "fit"]),
    (("--size", "8"), ["invalid preprocess options", "size"]),
    (("--fractions", "0.5,0.6,0.1"), ["invalid preprocess options", "fractions", "sum to 1"]),
    (("--fractions", "0.5,0.5"), ["--fractions '0.5,0.5': expected three numbers"]),  # was "fractions.2: Field required"
    (("--views", "PA"), ["views (--views) is only for --format covid, not nih"]),  # were ignored
    (("--class-map", "a=1"), ["class_map (--class-map) is only for --format imagefolder, not nih"]),
    (("--num-shards", "0"), ["--num-shards"]),  # "--shard-index 0 must be in [0, --num-shards 0)"
])
def test_preprocess_bad_options(synth_dir, tmp_path, args, words):
    result = cli("data", "preprocess", synth_dir, "--format", "nih", "--out", tmp_path / "o", *args)
    text = " ".join(failure_text(result).split())
    for w in words:
        assert w in text
    assert not (tmp_path / "o").exists()


def test_preprocess_refuses_a_folder_holding_other_files(synth_dir, tmp_path):
    """`--out` pointed at another raw dataset's folder wrote the output in among its files."""
    import shutil

    other = tmp_path / "other-raw"
    shutil.copytree(synth_dir, other)
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    text = failure_text(cli("data", "preprocess", synth_dir, "--format", "nih", "--size", 32, "--out", other))
    assert "holds files that no preprocessing run wrote (Data_Entry_2017.csv" in text and "new or empty --out" in text
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before


def test_preprocess_unknown_format(synth_dir, tmp_path):
    result = cli("data", "preprocess", synth_dir, "--format", "dicom", "--out", tmp_path / "o")
    assert "format" in failure_text(result)


# ----------------------------------------------------------------------------- clear errors (issue 6.17)

def main_exit(monkeypatch, capsys, *args) -> str:
    """Run the real entry point; assert exit code 2 and no traceback; return stderr."""
    monkeypatch.setattr(sys, "argv", ["cxrjobs", *[str(a) for a in args]])
    with pytest.raises(SystemExit) as e:
        cxrjobs.cli.main()
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert e.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("value", ["a,b,c", "0.7,0.1,x"])
def test_fractions_that_are_not_numbers(synth_dir, tmp_path, monkeypatch, capsys, value):
    err = main_exit(monkeypatch, capsys, "data", "preprocess", synth_dir, "--format", "nih",
                    "--out", tmp_path / "o", "--fractions", value)
    assert "--fractions" in err and "0.7,0.1,0.2" in err


@pytest.mark.parametrize("regex,words", [("(", ["not a valid regular expression"]),
                                         (r"^\d+", ["has no group", "parentheses"])])
def test_patient_regex_errors(tmp_path, monkeypatch, capsys, regex, words):
    err = main_exit(monkeypatch, capsys, "data", "preprocess", tmp_path, "--format", "imagefolder",
                    "--out", tmp_path / "o", "--patient-regex", regex)
    assert "patient_regex" in err and all(w in err for w in words)


@pytest.mark.parametrize("args,words", [
    (("--count", "0"), ["--count 0", "at least 1"]),
    (("--count", "-5"), ["--count -5"]),
    (("--size", "0"), ["--size 0", "between 16"]),
    (("--size", "-3"), ["--size -3"]),
    (("--workers", "0"), ["--workers 0"]),
])
def test_synth_bad_numbers(tmp_path, monkeypatch, capsys, args, words):
    err = main_exit(monkeypatch, capsys, "data", "synth", "nih", "--out", tmp_path / "o", *args)
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_out_pointing_at_a_file(synth_dir, tmp_path, monkeypatch, capsys):
    f = tmp_path / "file.txt"
    f.write_text("not a folder")
    err = main_exit(monkeypatch, capsys, "data", "synth", "nih", "--out", f, "--count", 5)
    assert str(f) in err and "is a file" in err
    err = main_exit(monkeypatch, capsys, "data", "synth", "nih", "--out", f / "sub", "--count", 5)
    assert str(f) in err and "is a file" in err
    err = main_exit(monkeypatch, capsys, "data", "preprocess", synth_dir, "--format", "nih", "--out", f)
    assert str(f) in err and "is a file" in err
    assert f.read_text() == "not a folder"


def test_out_store_without_a_dataset_name(synth_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRJOBS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    for dest in ("store://", "store:///"):
        err = main_exit(monkeypatch, capsys, "data", "preprocess", synth_dir, "--format", "nih", "--out", dest)
        assert "names nothing in the store" in err and "store://datasets/NAME" in err
    err = main_exit(monkeypatch, capsys, "data", "preprocess", "store://", "--format", "nih",
                    "--out", tmp_path / "o")
    assert "source" in err and "store://raw/NAME" in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.npy"))


def test_rerun_with_other_options_through_the_cli(synth_dir, preprocessed, tmp_path, monkeypatch, capsys):
    import shutil

    dest = tmp_path / "copy"
    shutil.copytree(preprocessed, dest)
    err = main_exit(monkeypatch, capsys, "data", "preprocess", synth_dir, "--format", "nih", "--size", 96,
                    "--out", dest, "--shard-size", 8)
    assert "size: 64 there, 96 now" in err and "--overwrite" in err
    result = ok("data", "preprocess", synth_dir, "--format", "nih", "--size", 96, "--out", dest,
                "--shard-size", 8, "--overwrite")
    assert "at 96px" in result.output
    assert json.loads((dest / "manifest.json").read_text())["image_size"] == 96


def test_upload_raw_dataset_under_raw(synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRJOBS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    ok("data", "upload", synth_dir, "--name", "raw/nih-phantom")
    assert (tmp_path / "store" / "raw" / "nih-phantom" / "Data_Entry_2017.csv").is_file()
    # A raw folder under datasets/ was accepted: a "dataset" without a manifest.
    text = failure_text(cli("data", "upload", synth_dir, "--name", "plain"))
    assert "has no manifest.json, so it is no preprocessed dataset" in text and "--name raw/plain" in text
    assert not (tmp_path / "store" / "datasets" / "plain").exists()
    for bad in ("raw/", "other/x", "raw/../x"):
        text = failure_text(cli("data", "upload", synth_dir, "--name", bad))
        assert "raw/NAME" in text or "'..'" in text
    # and it preprocesses from there, into the store
    result = ok("data", "preprocess", "store://raw/nih-phantom", "--format", "nih", "--size", 64,
                "--out", "store://datasets/from-raw", "--shard-size", 8)
    assert "preprocessed 28 images" in result.output
    index = pd.read_csv(tmp_path / "store" / "datasets" / "from-raw" / "index.csv")
    assert index["source"].str.startswith("store://raw/nih-phantom/images_").all()


def test_upload_never_mixes_two_datasets_under_one_name(preprocessed, tmp_path, monkeypatch):
    """A second dataset uploaded under a taken name replaced the first's files and left its other
    shards beside them (rc 0): every run trained on that name then read another dataset."""
    import shutil

    monkeypatch.setenv("CXRJOBS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    ok("data", "upload", preprocessed, "--name", "ds")
    ok("data", "upload", preprocessed, "--name", "ds")  # the same folder again: nothing to do
    before = sorted(p.name for p in (tmp_path / "store" / "datasets" / "ds" / "shards").iterdir())
    other = tmp_path / "other"
    shutil.copytree(preprocessed, other)
    plan = json.loads((other / "plan.json").read_text())
    plan["note"] = "other options"
    (other / "plan.json").write_text(json.dumps(plan))
    text = failure_text(cli("data", "upload", other, "--name", "ds"))
    assert "already holds a dataset preprocessed with other options" in text and "Pick another --name" in text
    fewer = tmp_path / "fewer"
    shutil.copytree(preprocessed, fewer)
    (fewer / "shards" / before[-1]).unlink()
    text = failure_text(cli("data", "upload", fewer, "--name", "ds"))
    assert f"1 object(s) this folder does not have (e.g. shards/{before[-1]})" in text
    assert sorted(p.name for p in (tmp_path / "store" / "datasets" / "ds" / "shards").iterdir()) == before
    (tmp_path / "empty").mkdir()
    assert "it holds no files" in failure_text(cli("data", "upload", tmp_path / "empty", "--name", "raw/e"))


def test_rerun_with_a_relative_source_path_resumes(synth_dir, preprocessed, tmp_path, monkeypatch):
    import shutil

    dest = tmp_path / "copy"
    shutil.copytree(preprocessed, dest)
    monkeypatch.chdir(synth_dir.parent)  # the same folder, named relatively this time
    result = ok("data", "preprocess", synth_dir.name, "--format", "nih", "--size", 64, "--out", dest,
                "--shard-size", 8)
    assert "preprocessed 28 images" in result.output


@pytest.mark.parametrize("group", [[], ["submit"], ["data"]])
def test_command_lists_wrap_each_summary_as_one_paragraph(group):
    """A docstring's own line breaks do not reach the command list (they cut sentences short at
    the terminal's width: 'evaluation results and plots, reports,' then a new line)."""
    import typer.main

    result = runner.invoke(app, [*group, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    listed = typer.main.get_command(app)
    for name in group:
        listed = listed.commands[name]
    for name, cmd in listed.commands.items():
        summary = " ".join(cmd.get_short_help_str(limit=10_000).split())
        assert summary, f"{name} has no summary"
        # At 400 columns the whole summary fits on the command's own line.
        line = next(ln for ln in result.output.splitlines() if ln.split()[1:2] == [name])
        assert summary[:150] in " ".join(line.split()), (name, line)


def test_synth_into_a_folder_that_is_not_empty_is_refused(tmp_path, monkeypatch, capsys):
    """A second synth into the same folder mixed two sets: 227 PNGs on disk, 50 rows in the new
    CSV, and preprocessing rejected 179 of them."""
    out = tmp_path / "raw"
    ok("data", "synth", "covid", "--out", out, "--count", 20, "--size", 32)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    err = main_exit(monkeypatch, capsys, "data", "synth", "covid", "--out", out, "--count", 10, "--size", 16)
    assert f"--out {out}: the folder is not empty" in err and "new or empty folder" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written
    (tmp_path / "empty").mkdir()
    ok("data", "synth", "covid", "--out", tmp_path / "empty", "--count", 10, "--size", 16)
    assert not list((tmp_path / "empty").glob(".cxrjobs-*"))  # the in-progress marker is gone


def test_synth_interrupted_then_rerun_starts_again(tmp_path, monkeypatch):
    """Ctrl-C during `data synth`, then the same command: refused ("the folder is not empty"),
    so the user had to delete the half-written folder by hand."""
    import cxrjobs.data.synth as synth

    out = tmp_path / "raw"

    def interrupted(jobs, workers):
        (jobs[0][0] / jobs[0][1]).parent.mkdir(parents=True, exist_ok=True)
        synth._render(jobs[0])  # one image written, then Ctrl-C
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(synth, "_run", interrupted)
        with pytest.raises(KeyboardInterrupt):
            synth.synth_covid(out, 20, size=32)
    assert (out / ".cxrjobs-synth-incomplete").is_file() and not (out / "metadata.csv").exists()
    ok("data", "synth", "covid", "--out", out, "--count", 20, "--size", 32)
    assert (out / "metadata.csv").is_file() and not (out / ".cxrjobs-synth-incomplete").exists()


def test_inspect_takes_a_dataset_as_jobs_name_it(local_env, tmp_path, monkeypatch, capsys):
    """`submit --data datasets/NAME` worked, `data inspect datasets/NAME` said 'no manifest.json;
    preprocess the dataset first' about a dataset that was there."""
    ok("data", "synth", "covid", "--out", tmp_path / "raw", "--count", 20, "--size", 32)
    made = ok("data", "preprocess", tmp_path / "raw", "--format", "covid", "--size", 16, "--out",
              "store://datasets/c16").output
    monkeypatch.chdir(tmp_path)
    # Rows the view and modality filters left out are counted in the text too, not only in JSON.
    left_out = {k: v for k, v in json.loads(ok("data", "inspect", "datasets/c16", "--json").output)["excluded"].items() if v}
    assert left_out, "the phantom set has lateral and CT rows: the check below means something"
    for text in (" ".join(made.split()), " ".join(ok("data", "inspect", "datasets/c16").output.split())):
        assert "left out by the filters: " + ", ".join(f"{n} {why}" for why, n in left_out.items()) in text, text
    for form in ("datasets/c16", "store://datasets/c16"):
        info = json.loads(ok("data", "inspect", form, "--json").output)
        assert info["image_size"] == 16 and info["images"] > 0
    err = main_exit(monkeypatch, capsys, "data", "inspect", "datasets/none")
    assert "datasets/none: neither a local folder nor a dataset in store" in err


@pytest.mark.parametrize("args", [
    ("data", "preprocess", "FILE", "--format", "nih", "--out", "OUT"),
    ("data", "inspect", "FILE"),
    ("submit", "train", "--data", "FILE", "--name", "onfile"),
])
def test_a_file_given_for_a_dataset_folder_is_named_a_file(tmp_path, monkeypatch, args):
    """It said 'not found', for the jobs with the path's leading '/' dropped (taken as a store key)."""
    monkeypatch.setenv("CXRJOBS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not a folder")
    args = [str(photo) if a == "FILE" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    text = failure_text(cli(*args))
    assert f"{photo}" in text and "a file, not a dataset folder" in text, text
