import numpy as np
import pytest
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


# --- binary metrics: thresholds, point values against sklearn, patient-bootstrap CIs ------------

from sklearn import metrics as skm  # noqa: E402

from cxrjobs.eval.metrics import (binary_metrics, weighted_average_precision,  # noqa: E402
                                  youden_threshold)


def _binary_sample(n=300, patients=60, seed=0):
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, patients, n)
    sick = rng.random(patients) < 0.4
    y = sick[pid]
    s = np.clip(0.5 * y + rng.normal(0.3, 0.25, n), 0, 1).round(2)  # ties on purpose
    return s, y, pid.astype(str)


def test_binary_point_values_match_sklearn():
    s, y, pid = _binary_sample()
    t = 0.55
    m = binary_metrics(s, y, pid, t, ["non-COVID", "COVID-19"], n_boot=200, seed=1)
    pred = s >= t
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    expect = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(~y, ~pred),
        "ppv": skm.precision_score(y, pred),
        "npv": tn / (tn + fn),
        "f1": skm.f1_score(y, pred),
        "auroc": skm.roc_auc_score(y, s),
        "pr_auc": skm.average_precision_score(y, s),
    }
    for name, v in expect.items():
        assert m[name] == pytest.approx(v, rel=1e-12), name
        lo, hi = m[f"{name}_ci"]
        assert lo <= m[name] <= hi and hi - lo > 0, name
    assert m["confusion_matrix"]["matrix"] == [[tn, fp], [fn, tp]]
    assert m["classification_report"]["COVID-19"]["recall"] == pytest.approx(expect["sensitivity"])
    assert m["roc"]["lo"] is not None and len(m["roc"]["grid"]) == len(m["roc"]["hi"])


def test_weighted_average_precision_matches_sklearn_with_weights():
    s, y, _ = _binary_sample(seed=4)
    w = np.random.default_rng(5).integers(0, 4, size=(6, len(s))).astype(float)
    ours = weighted_average_precision(s, y, w)
    ref = [skm.average_precision_score(y, s, sample_weight=wi) for wi in w]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_ci_resamples_patients_so_clustered_images_widen_it():
    """Ten identical images per patient carry the information of one: the patient bootstrap keeps
    the CI as wide as for one image per patient, an image bootstrap would shrink it ~3x."""
    s, y, pid = _binary_sample(n=80, patients=80, seed=2)
    pid = np.arange(80).astype(str)
    one = binary_metrics(s, y, pid, 0.55, ["a", "b"], n_boot=400, seed=0)
    rep = lambda a: np.repeat(a, 10)
    ten = binary_metrics(rep(s), rep(y), rep(pid), 0.55, ["a", "b"], n_boot=400, seed=0)
    as_images = binary_metrics(rep(s), rep(y), np.arange(800).astype(str), 0.55, ["a", "b"], n_boot=400, seed=0)
    width = lambda m: m["auroc_ci"][1] - m["auroc_ci"][0]
    assert ten["auroc"] == pytest.approx(one["auroc"])
    assert width(ten) == pytest.approx(width(one), rel=0.25)
    assert width(as_images) < 0.6 * width(ten)


def test_youden_threshold_maximises_j_on_the_given_scores():
    s, y, _ = _binary_sample(seed=7)
    cut = youden_threshold(s, y)
    j = lambda t: ((s >= t) & y).sum() / y.sum() - ((s >= t) & ~y).sum() / (~y).sum()
    best = max(j(t) for t in np.unique(s))
    assert j(cut["value"]) == pytest.approx(best) and cut["j"] == pytest.approx(best)
    assert cut["method"] == "youden_j_on_validation"
    assert youden_threshold(s, np.zeros_like(y))["value"] == 0.5  # one class: stated default


def test_summary_adds_balanced_accuracy_for_two_classes():
    s, y, pid = _binary_sample(seed=8)
    logits = torch.from_numpy(np.stack([1 - s, s], 1).astype(np.float32) * 4)
    m = summarize("multiclass", logits, torch.from_numpy(y.astype(np.int64)), pid, ["a", "b"], "val", 100)
    pred = logits.argmax(1).numpy()
    assert m["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["auroc"]["value"] == pytest.approx(skm.roc_auc_score(y, s))


def test_mean_auroc_ci_averages_the_same_classes_in_every_replicate():
    """Three rare findings, one positive patient each: a perfect class and two inverted ones. The
    mean over the three is 1/3 in every replicate that can score all three; averaging whatever
    a replicate could score gave a CI of [0, 1] (a 'mean' of one class)."""
    n = 6
    logits = torch.full((n, 3), -3.0)
    targets = torch.zeros(n, 3)
    for c, patient in enumerate((0, 1, 2)):
        targets[patient, c] = 1.0
    logits[0, 0] = 3.0             # class 0: its positive scores highest (AUROC 1)
    logits[:, 1:] = 3.0            # classes 1, 2: every negative scores above their positive (AUROC 0)
    logits[1, 1] = logits[2, 2] = -3.0
    out = summarize("multilabel", logits, targets, np.arange(n).astype(str), ["a", "b", "c"], "val", n_boot=400)
    m = out["mean_auroc"]
    assert m["classes"] == 3 and m["value"] == pytest.approx(1 / 3)
    assert m["ci"] == pytest.approx([1 / 3, 1 / 3])
    assert 20 <= m["replicates"] < 400  # only the replicates that drew all three positives
    few = summarize("multilabel", logits, targets, np.arange(n).astype(str), ["a", "b", "c"], "val", n_boot=30)
    assert few["mean_auroc"]["ci"] is None and few["mean_auroc"]["replicates"] < 20
    from cxrjobs.headline import headline
    assert f"[CI n/a: {few['mean_auroc']['replicates']} of 30 replicates could score all 3 classes]" in headline(few)
    # A CI from a part of the replicates was shown as if it came from all of them.
    assert (f"[0.333, 0.333] (CI from the {m['replicates']} of 400 replicates that could score all 3 classes)"
            in headline(out))
    # --bootstrap 0: a metric without a CI said nothing about it.
    none = summarize("multilabel", logits, targets, np.arange(n).astype(str), ["a", "b", "c"], "val", n_boot=0)
    assert "mean_auroc 0.333 [no CI: bootstrap 0] (val:" in headline(none)


def test_few_cases_are_flagged_even_with_a_narrow_ci():
    """A test split of 3 patients, 1 of them positive, reported 'auroc 0.000 [0.000, 0.000]' as if
    it were exact: the split's CIs are flagged when it has fewer than 10 positive or negative
    patients (binary) or 20 patients (other tasks), and not otherwise."""
    from cxrjobs.eval.metrics import few_cases
    from cxrjobs.headline import headline

    tiny = summarize("multiclass", torch.tensor([[2.0, -2.0], [2.0, -2.0], [-2.0, 2.0]]),
                     torch.tensor([1, 0, 0]), np.array(["a", "b", "c"]), ["neg", "pos"], "test", n_boot=50)
    assert tiny["few_cases"] == "1 positive and 2 negative patients, under 10"
    assert headline(tiny).endswith("(test: 3 images, 3 patients; few cases: 1 positive and 2 negative "
                                   "patients, under 10, the CI is not reliable)")
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 30)
    healthy = summarize("multiclass", torch.tensor(rng.normal(size=(60, 2)), dtype=torch.float32),
                        torch.tensor(y), np.arange(60).astype(str), ["neg", "pos"], "test", n_boot=50)
    assert healthy["few_cases"] is None and "few cases" not in headline(healthy)
    assert few_cases(np.arange(19).astype(str)) == "19 patients, under 20"
    assert few_cases(np.arange(20).astype(str)) is None
