import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from cxrjobs.eval.metrics import bootstrap_weights, summarize, weighted_auroc


def test_weighted_auroc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(500), 2)  # many ties
    y = rng.random(500) < 0.2 + 0.5 * s
    w = rng.integers(0, 4, size=(5, 500)).astype(float)
    ours = weighted_auroc(s, y, w)
    ref = [roc_auc_score(y, s, sample_weight=wi) for wi in w]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_auroc_is_nan_when_a_class_is_absent():
    assert np.isnan(weighted_auroc(np.array([0.1, 0.9]), np.array([0, 0]), np.ones((1, 2))))[0]


def test_bootstrap_resamples_patients_not_images():
    patients = np.array(["a", "a", "a", "b", "c"])
    w = bootstrap_weights(patients, 50, seed=0)
    assert w.shape == (51, 5) and (w[0] == 1).all()
    # The three images of patient a always share one weight.
    assert (w[1:, 0] == w[1:, 1]).all() and (w[1:, 1] == w[1:, 2]).all()
    assert (w[1:].sum(axis=1) > 0).all()


def test_summary_reports_split_counts_and_ci():
    rng = np.random.default_rng(1)
    n = 400
    y = torch.from_numpy((rng.random((n, 3)) < 0.3).astype(np.float32))
    logits = y * 2 - 1 + torch.from_numpy(rng.normal(0, 1.5, (n, 3)).astype(np.float32))
    patients = np.repeat(np.arange(100), 4)
    m = summarize("multilabel", logits, y, patients, ["a", "b", "c"], "val", n_boot=200, seed=0)
    assert (m["split"], m["images"], m["patients"]) == ("val", 400, 100)
    lo, hi = m["mean_auroc"]["ci"]
    assert 0.5 < lo < m["mean_auroc"]["value"] < hi < 1.0
    assert set(m["auroc"]) == {"a", "b", "c"}
    mc = summarize("multiclass", logits[:, :2], y[:, 0].long(), patients, ["x", "y"], "test", n_boot=100)
    assert mc["accuracy"]["ci"][0] <= mc["accuracy"]["value"] <= mc["accuracy"]["ci"][1]
    assert "auroc" in mc
