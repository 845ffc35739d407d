"""`cxrjobs predict`: per-image answers from a run's checkpoint alone, bad files answered one by one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrjobs.cli import app
from eval_helpers import phantom_covid, train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cxrjobs.storage import LocalStore

    root = tmp_path_factory.mktemp("predict")
    data = phantom_covid(root / "phantom", count=160)
    train_run(LocalStore(root / "store"), "tiny", data, epochs=1)
    return root, data


@pytest.fixture
def store(trained, monkeypatch):
    from cxrjobs.storage import open_store

    monkeypatch.setenv("CXRJOBS_STORE", str(trained[0] / "store"))
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    return open_store()


def _json(output: str) -> dict:
    return json.loads(output[output.index("{"):])


def test_bad_files_get_their_own_error_and_the_others_answer(trained, store, tmp_path):
    root, _ = trained
    good = sorted((root / "phantom" / "raw" / "covid").glob("*.png"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "zz-truncated.png").write_bytes(good[0].read_bytes()[:200])
    (folder / "zz-notes.png").write_text("not an image at all")
    (folder / "zz-empty.png").write_bytes(b"")
    missing = str(tmp_path / "missing.png")
    r = runner.invoke(app, ["predict", "--model", "tiny", str(folder), missing, "--json"])
    assert r.exit_code == 0, r.output
    out = _json(r.output)
    assert (out["images"], out["scored"], out["errors"]) == (7, 3, 4)
    res = out["results"]
    assert [x["file"].rsplit("/", 1)[-1] for x in res] == [p.name for p in good] + [
        "zz-empty.png", "zz-notes.png", "zz-truncated.png", "missing.png"]
    for x in res[:3]:
        assert x["label"] in ("COVID-19", "non-COVID", "unknown") and 0 <= x["probability"] <= 1
        assert isinstance(x["ood"], bool) and x["ood_score"] >= 0
        assert sum(x["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    errors = {x["file"].rsplit("/", 1)[-1]: x["error"] for x in res[3:]}
    assert "empty" in errors["zz-empty.png"]
    assert "not an image" in errors["zz-notes.png"]
    assert "truncated" in errors["zz-truncated.png"] or "corrupt" in errors["zz-truncated.png"]
    assert "cannot read" in errors["missing.png"]
    # The table form names the errors too.
    r = runner.invoke(app, ["predict", "--model", "tiny", str(folder)])
    assert r.exit_code == 0 and "error:" in r.output and "3 of 6 images scored" in r.output and "3 errors" in r.output


def test_exit_code_is_non_zero_only_when_nothing_was_scored(store, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = runner.invoke(app, ["predict", "--model", "tiny", str(bad), "--json"])
    assert r.exit_code == 2  # bad input, as for every refusal (it was 1, a crash's code)
    assert _json(r.output)["results"][0]["error"]


def test_predict_uses_the_checkpoints_preprocessing(trained, store):
    """Files decoded by predict give the same probabilities as the preprocessed shards did."""
    from cxrjobs.data.shards import ShardDataset
    from cxrjobs.eval.predict import load_run, predict_dataset, predict_files
    from cxrjobs.train.distributed import DistContext

    _, data = trained
    rm = load_run(store, "tiny")
    assert (rm.image_size, rm.fit, rm.class_names) == (64, "pad", ["non-COVID", "COVID-19"])
    ds = ShardDataset(data, "test", rm.objective)
    logits, _ = predict_dataset(rm.model, ds, DistContext(0, 1, torch.device("cpu"), None), 32,
                                normalize=rm.normalize)
    files = ds.index["source"].tolist()
    res = predict_files(rm, files, None)
    ours = np.array([r["probabilities"]["COVID-19"] for r in res])
    np.testing.assert_allclose(ours, torch.softmax(logits, 1)[:, 1].numpy(), atol=1e-5)


def test_unknown_run_is_a_clear_error(store, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    r = runner.invoke(app, ["predict", "--model", "no-such-run", str(img)])
    assert r.exit_code != 0 and "no best checkpoint" in str(r.exception)
    (tmp_path / "empty-dir").mkdir()
    r = runner.invoke(app, ["predict", "--model", "tiny", str(tmp_path / "empty-dir")])
    assert r.exit_code != 0 and "no image files" in str(r.exception)


def test_predict_help_has_an_example():
    r = runner.invoke(app, ["predict", "--help"])
    assert r.exit_code == 0 and "Example: cxrjobs predict --model" in r.output


def test_a_run_still_training_is_refused_unless_asked(trained, store, tmp_path):
    """predict and evaluate used whatever best.pt a running run had, without a word: a run with
    a record but no artifacts/result.json (written last) is refused, unless --allow-unfinished."""
    from cxrjobs.errors import ConfigError
    from cxrjobs.jobs.preflight import check_job
    from cxrjobs.jobs.spec import JobSpec

    root, data = trained
    for key in (o.key for o in store.list("runs/tiny/")):  # the same run, caught before its last step
        if not key.endswith("artifacts/result.json"):
            store.put_bytes(key.replace("runs/tiny/", "runs/half/", 1), store.get_bytes(key))
    store.put_text("runs/half/spec.json", json.dumps({"kind": "train", "name": "half"}))
    img = sorted((root / "phantom" / "raw" / "covid").glob("*.png"))[0]
    r = runner.invoke(app, ["predict", "--model", "half", str(img)])
    assert isinstance(r.exception, ConfigError), r.output
    assert "run half has not finished training (1 epoch(s) recorded so far;" in str(r.exception)
    # It said "Wait for it" to a cancelled run as well.
    assert "resubmit a cancelled or failed one to finish it" in str(r.exception)
    assert "--allow-unfinished" in str(r.exception)
    r = runner.invoke(app, ["predict", "--model", "half", str(img), "--allow-unfinished", "--json"])
    assert r.exit_code == 0 and _json(r.output)["results"][0]["label"], r.output
    job = JobSpec(kind="evaluate", name="ev", evaluate={"run": "half", "data": str(data)})
    with pytest.raises(ConfigError, match="evaluate.run: run half has not finished training"):
        check_job(job, store)
    check_job(JobSpec(kind="evaluate", name="ev", evaluate={"run": "half", "data": str(data),
                                                            "allow_unfinished": True}), store)
    check_job(JobSpec(kind="evaluate", name="ev", evaluate={"run": "tiny", "data": str(data)}), store)


@pytest.mark.parametrize("size", ["0", "-3"])
def test_a_batch_size_below_one_is_refused(size, tmp_path):
    """0 was a ValueError traceback; -3 scored 0 of 0 images."""
    from typer.testing import CliRunner

    from cxrjobs.cli import app

    res = CliRunner().invoke(app, ["predict", "--model", "r", str(tmp_path), "--batch-size", size])
    assert res.exit_code == 2 and "--batch-size" in res.output, res.output
