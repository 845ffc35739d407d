"""The `evaluate` job end to end on tiny phantom data: a run trained for 1 epoch at 64 px, scored
through the local backend (real replica processes, 2 of them gathering over gloo), the threshold
taken from validation only, external sets mapped onto the run's classes."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxrjobs.cli import app
from cxrjobs.errors import DataError
from cxrjobs.storage import join_key
from eval_helpers import phantom_covid, train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 1-epoch run for the whole module (its store is a plain folder)."""
    from cxrjobs.storage import LocalStore

    root = tmp_path_factory.mktemp("evaljob")
    data = phantom_covid(root / "phantom")
    train_run(LocalStore(root / "store"), "tiny", data, epochs=1)
    return root, data


@pytest.fixture
def tiny_run(trained, monkeypatch):
    """The trained run's store as CXRJOBS_STORE (the local backend's replicas read it)."""
    from cxrjobs.storage import open_store

    root, data = trained
    monkeypatch.chdir(root)
    for name in ("CXRJOBS_CONFIG", "CXRJOBS_S3_ENDPOINT", "CXRJOBS_CACHE_DIR", "CXRJOBS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", str(root / "store"))
    return open_store(), data


def _evaluate_cli(job: str, *args) -> dict:
    from cxrjobs import api

    r = runner.invoke(app, ["submit", "evaluate", *args, "--name", job, "--wait"])
    assert r.exit_code == 0, r.output
    assert "OOD flagged" in r.output and "artifacts:" in r.output, r.output  # the one-line summary
    return api.run_status(job)


@pytest.mark.slow
def test_evaluate_job_writes_results_and_plots(tiny_run):
    store, data = tiny_run
    assert store.exists("runs/tiny/ood.json"), "training fits the OOD detector at its end"
    manifest = json.loads((data / "manifest.json").read_text())

    st = _evaluate_cli("ev1", "tiny", "--data", str(data), "--split", "test", "--as", "test1", "--replicas", "2",
                       "--bootstrap", "300")
    assert st["state"] == "Succeeded", st
    res = json.loads(store.get_text("runs/tiny/eval/test1/results.json"))
    for key in ("dataset", "split", "n_images", "n_patients", "threshold", "accuracy", "balanced_accuracy",
                "sensitivity", "specificity", "auroc", "auroc_ci", "ppv", "npv", "f1", "pr_auc",
                "confusion_matrix", "classification_report", "ood"):
        assert key in res, key
    for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auroc", "pr_auc"):
        lo, hi = res[f"{name}_ci"]
        assert lo <= res[name] <= hi, name
    # Exactly the split's images, each once, although 2 replicas shared them (no sampler padding).
    assert res["n_images"] == manifest["splits"]["test"] and res["n_patients"] == manifest["patients"]["test"]
    assert sum(map(sum, res["confusion_matrix"]["matrix"])) == res["n_images"]
    assert res["threshold_choice"]["split"] == "val"
    assert res["threshold_choice"]["images"] == manifest["splits"]["val"]
    assert 0 <= res["ood"]["flagged"] <= res["n_images"] and res["ood"]["of"] == res["n_images"]
    for png in ("loss_curves.png", "confusion_matrix.png", "roc_curve.png", "examples.png"):
        im = Image.open(io.BytesIO(store.get_bytes(join_key("runs/tiny/eval/test1", png))))
        im.load()
        assert im.width > 200 and im.height > 200, png
        assert np.asarray(im.convert("L")).std() > 5, f"{png} is blank"

    # `--split all` of the dataset the run trained on scored its training images as a test set.
    r = runner.invoke(app, ["submit", "evaluate", "tiny", "--data", str(data), "--split", "all", "--as", "leak"])
    assert r.exit_code != 0 and "evaluate.split: all of" in str(r.exception) and "--split test" in str(r.exception)
    assert not store.exists("runs/tiny/eval/leak/results.json")
    # A second evaluation under the same name on other data replaced the first without a word.
    r = runner.invoke(app, ["submit", "evaluate", "tiny", "--data", str(data), "--split", "val", "--as", "test1"])
    assert r.exit_code != 0 and "runs/tiny/eval/test1 holds the scores on" in str(r.exception), r.output
    assert "Pick another --as" in str(r.exception)

    # Scoring a copy of the whole dataset (as an external set) on 1 replica: the threshold does not
    # move (it comes from validation only) and the test images get the same probabilities as above.
    import shutil
    shutil.copytree(data, data.parent / "external-copy", dirs_exist_ok=True)
    data = data.parent / "external-copy"
    st = _evaluate_cli("ev2", "tiny", "--data", str(data), "--split", "all", "--as", "test2", "--bootstrap", "0")
    assert st["state"] == "Succeeded", st
    res2 = json.loads(store.get_text("runs/tiny/eval/test2/results.json"))
    assert res2["threshold"] == res["threshold"]
    assert res2["n_images"] == manifest["images"]
    p1 = pd.read_csv(io.StringIO(store.get_text("runs/tiny/eval/test1/predictions.csv")))
    p2 = pd.read_csv(io.StringIO(store.get_text("runs/tiny/eval/test2/predictions.csv"))).set_index("image_id")
    np.testing.assert_allclose(p1["probability"].to_numpy(), p2.loc[p1["image_id"], "probability"].to_numpy(), atol=1e-5)


def test_threshold_is_youden_on_validation(tiny_run):
    """Recomputed by hand from the run's validation predictions: evaluate must match it."""
    from cxrjobs.data.shards import ShardDataset
    from cxrjobs.eval.job import evaluate
    from cxrjobs.eval.predict import load_run, predict_dataset
    from cxrjobs.specs.eval import EvalSpec
    from cxrjobs.train.distributed import DistContext
    from sklearn.metrics import roc_curve

    store, data = tiny_run
    rm = load_run(store, "tiny")
    val = ShardDataset(data, "val", "multiclass")
    logits, _ = predict_dataset(rm.model, val, DistContext(0, 1, torch.device("cpu"), None), 64,
                                normalize=rm.normalize)
    p = torch.softmax(logits, 1)[:, 1].numpy()
    y = val.targets.numpy() == 1
    fpr, tpr, thr = roc_curve(y, p)
    expected = thr[1:][np.argmax((tpr - fpr)[1:])]
    res = evaluate(EvalSpec(run="tiny", data=str(data), split="test", bootstrap=0), store, log=lambda m: None)
    assert res["threshold"] == pytest.approx(float(expected))
    pred = np.array(json.loads(json.dumps(res["confusion_matrix"]["matrix"])))
    assert pred.sum() == res["n_images"]


def test_external_set_labels_map_onto_run_classes(tiny_run, tmp_path, trained):
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.eval.job import evaluate
    from cxrjobs.specs.eval import EvalSpec
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.storage import LocalStore

    store, data = tiny_run
    raw = trained[0] / "phantom" / "raw"
    # The same images as an image-folder set, classes in the opposite order: mapped by name.
    spec = PreprocessSpec(source=str(raw), format="imagefolder", size=64,
                          class_map="covid=COVID-19,non_covid=non-COVID", labels=["COVID-19", "non-COVID"])
    preprocess(spec, LocalStore(tmp_path / "ext"), "", show_progress=False)
    res = evaluate(EvalSpec(run="tiny", data=str(tmp_path / "ext"), split="all", name="ext", bootstrap=0),
                   store, log=lambda m: None)
    pred = pd.read_csv(io.StringIO(store.get_text("runs/tiny/eval/ext/predictions.csv")))
    folder = pred["image_id"].str.split("__").str[0]
    assert set(pred.loc[folder == "covid", "true"]) == {"COVID-19"}
    assert set(pred.loc[folder == "non_covid", "true"]) == {"non-COVID"}
    assert res["n_images"] == len(pred) > 100

    # Classes the run does not know: a clear error naming both lists.
    spec = PreprocessSpec(source=str(raw), format="imagefolder", size=64)
    preprocess(spec, LocalStore(tmp_path / "bad"), "", show_progress=False)
    with pytest.raises(DataError, match=r"do not map onto the run's classes \['non-COVID', 'COVID-19'\]"):
        evaluate(EvalSpec(run="tiny", data=str(tmp_path / "bad"), split="all"), store, log=lambda m: None)


def test_evaluate_help_has_an_example():
    r = runner.invoke(app, ["submit", "evaluate", "--help"])
    assert r.exit_code == 0 and "Example: cxrjobs submit evaluate" in r.output


def test_a_multilabel_class_mismatch_gets_a_multilabel_hint():
    """An NIH run scored on a COVID set was told to use --class-map covid=1,normal=0 --labels
    Atelectasis,Cardiomegaly,...: advice for binary image folders."""
    from types import SimpleNamespace

    from cxrjobs.eval.job import map_targets

    ds = SimpleNamespace(class_names=["COVID-19"], targets=torch.zeros(3, 1))
    with pytest.raises(DataError) as e:
        map_targets(ds, ["Atelectasis", "Cardiomegaly"], "multilabel", "datasets/covid-64")
    assert "same findings (e.g. another NIH-format set)" in str(e.value) and "--class-map" not in str(e.value)
    with pytest.raises(DataError, match="--class-map covid=1,normal=0 --labels non-COVID,COVID-19"):
        map_targets(SimpleNamespace(class_names=["a", "b"], targets=torch.zeros(3)), ["non-COVID", "COVID-19"],
                    "multiclass", "x")
