"""Metrics with patient-level bootstrap confidence intervals.

Images of one patient are correlated, so resampling images would understate the uncertainty:
each bootstrap replicate draws patients with replacement and weights their images by the draw
count. AUROC under weights is computed for all replicates at once (sorted once per class), which
keeps 200 replicates x 14 classes to well under a second on a validation split.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrjobs.headline import MIN_CLASS_PATIENTS, MIN_PATIENTS

CI_LEVEL = 0.95


def few_cases(patients: np.ndarray, positive: np.ndarray | None = None) -> str | None:
    """Why this split's CIs are unreliable (too few patients, or of one class), or None."""
    patients = np.asarray(patients)
    if positive is not None:
        positive = np.asarray(positive, dtype=bool)
        pos, neg = len(np.unique(patients[positive])), len(np.unique(patients[~positive]))
        if min(pos, neg) < MIN_CLASS_PATIENTS:
            return f"{pos} positive and {neg} negative patients, under {MIN_CLASS_PATIENTS}"
        return None
    n = len(np.unique(patients))
    return f"{n} patients, under {MIN_PATIENTS}" if n < MIN_PATIENTS else None


def weighted_auroc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney with ties counted half) for each row of `weights` [B, n]."""
    order = np.argsort(scores, kind="mergesort")
    s, yy, w = scores[order], y[order].astype(np.float64), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * yy, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - yy), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def bootstrap_weights(patients: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[1 + n_boot, n] image weights; row 0 is the observed sample (all ones)."""
    codes, inverse = np.unique(patients, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(codes), size=(n_boot, len(codes)))
    counts = np.stack([np.bincount(d, minlength=len(codes)) for d in draws]) if n_boot else \
        np.zeros((0, len(codes)))
    return np.vstack([np.ones((1, len(patients))), counts[:, inverse]])


def _point_ci(values: np.ndarray) -> dict:
    """values[0] observed, values[1:] replicates."""
    out = {"value": None if np.isnan(values[0]) else float(values[0]), "ci": None}
    reps = values[1:][~np.isnan(values[1:])]
    if len(reps) >= 20:
        lo, hi = np.percentile(reps, [100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2])
        out["ci"] = [float(lo), float(hi)]
    return out


def loss_fn(objective: str):
    return F.binary_cross_entropy_with_logits if objective == "multilabel" else F.cross_entropy


def summarize(objective: str, logits: torch.Tensor, targets: torch.Tensor, patients: np.ndarray,
              class_names: list[str], split: str, n_boot: int = 200, seed: int = 0) -> dict:
    """Loss and metrics of one split, each with its split, image and patient counts and CI."""
    loss = float(loss_fn(objective)(logits.float(), targets))
    weights = bootstrap_weights(patients, n_boot, seed)
    out = {"split": split, "images": int(len(targets)), "patients": int(len(np.unique(patients))),
           "loss": loss, "ci_level": CI_LEVEL, "bootstrap": n_boot, "ci_unit": "patient"}
    binary = objective != "multilabel" and logits.shape[1] == 2
    out["few_cases"] = few_cases(patients, targets.numpy() == 1 if binary else None)
    if objective == "multilabel":
        probs = torch.sigmoid(logits.float()).numpy()
        y = targets.numpy()
        per_class = np.stack([weighted_auroc(probs[:, c], y[:, c], weights)
                              for c in range(y.shape[1])], axis=1)  # [1+B, C]
        out["auroc"] = {name: _point_ci(per_class[:, c]) for c, name in enumerate(class_names)}
        # The mean over the classes scorable in the observed sample, in every replicate: a
        # replicate that lost one of them (no positive or no negative drawn) does not count.
        # Averaging whatever each replicate could score gave a mean of three classes whose CI
        # reached 1.0, beyond what any of the three allowed.
        scored = ~np.isnan(per_class[0])
        sub = per_class[:, scored]
        complete = ~np.isnan(sub).any(axis=1) if scored.any() else np.zeros(len(per_class), bool)
        mean = np.full(len(per_class), np.nan)
        mean[complete] = sub[complete].mean(axis=1)
        out["mean_auroc"] = _point_ci(mean)
        out["mean_auroc"]["classes"] = int(scored.sum())
        out["mean_auroc"]["replicates"] = int(complete[1:].sum())
        return out
    probs = torch.softmax(logits.float(), dim=1).numpy()
    y = targets.numpy()
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    out["accuracy"] = _point_ci((weights @ correct) / weights.sum(axis=1))
    if probs.shape[1] == 2:
        out["auroc"] = _point_ci(weighted_auroc(probs[:, 1], y == 1, weights))
        counts = confusion_counts(probs.argmax(axis=1) == 1, y == 1, weights)
        out["balanced_accuracy"] = _point_ci(_rates(counts)["balanced_accuracy"])
    return out


# --- binary tasks: threshold on validation, every metric with a patient-bootstrap CI ------------

BINARY_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                  "auroc", "pr_auc")


def is_binary(objective: str, num_classes: int) -> bool:
    """COVID vs non-COVID: a 2-way softmax, or a single sigmoid output."""
    return (objective == "multiclass" and num_classes == 2) or (objective == "multilabel" and num_classes == 1)


def positive_scores(objective: str, logits: torch.Tensor) -> np.ndarray:
    """Probability of the positive class (index 1 of a softmax, or the single sigmoid)."""
    logits = logits.float()
    if objective == "multilabel":
        return torch.sigmoid(logits[:, 0]).numpy()
    return torch.softmax(logits, dim=1)[:, 1].numpy()


def binary_targets(objective: str, targets: torch.Tensor) -> np.ndarray:
    t = targets.numpy()
    return (t[:, 0] > 0.5) if objective == "multilabel" else (t == 1)


def youden_threshold(scores: np.ndarray, y: np.ndarray) -> dict:
    """The score cut-off maximising Youden's J = sensitivity + specificity - 1 (predict positive
    when score >= threshold). Meant for validation data only: the test split never chooses it."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return {"value": 0.5, "method": "default 0.5 (validation has one class only)", "j": None}
    fpr, tpr, thr = roc_curve(y, scores)
    keep = np.isfinite(thr)
    j = tpr[keep] - fpr[keep]
    best = int(np.argmax(j))  # first maximum: the highest threshold among ties
    return {"value": float(thr[keep][best]), "method": "youden_j_on_validation", "j": float(j[best])}


def confusion_counts(pred: np.ndarray, y: np.ndarray, weights: np.ndarray) -> dict:
    """Weighted TP/FP/TN/FN for every bootstrap row of `weights` [B, n]."""
    pred, y = np.asarray(pred, bool), np.asarray(y, bool)
    return {"tp": weights @ (pred & y), "fp": weights @ (pred & ~y),
            "tn": weights @ (~pred & ~y), "fn": weights @ (~pred & y)}


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _rates(c: dict) -> dict:
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    return {"accuracy": _div(tp + tn, tp + fp + tn + fn), "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": (sens + spec) / 2, "ppv": _div(tp, tp + fp), "npv": _div(tn, tn + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn)}


def weighted_average_precision(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """PR AUC as sklearn's average precision (step-wise, ties grouped) for each row of `weights`."""
    order = np.argsort(-scores, kind="mergesort")
    s, yy, w = scores[order], np.asarray(y, np.float64)[order], weights[:, order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(w * yy, axis=1)[:, ends]
    fp = np.cumsum(w * (1 - yy), axis=1)[:, ends]
    precision = _div(tp, tp + fp)
    total = tp[:, -1:]
    recall = _div(tp, np.broadcast_to(total, tp.shape))
    steps = np.diff(np.hstack([np.zeros((len(w), 1)), recall]), axis=1)
    ap = np.nansum(steps * np.nan_to_num(precision), axis=1)
    return np.where(total[:, 0] > 0, ap, np.nan)


def roc_band(scores: np.ndarray, y: np.ndarray, weights: np.ndarray, grid: int = 101) -> dict:
    """ROC curve (observed) and a 95 % patient-bootstrap band of TPR on a fixed FPR grid."""
    order = np.argsort(-scores, kind="mergesort")
    s, yy, w = scores[order], np.asarray(y, np.float64)[order], weights[:, order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.hstack([np.zeros((len(w), 1)), np.cumsum(w * yy, axis=1)[:, ends]])
    fp = np.hstack([np.zeros((len(w), 1)), np.cumsum(w * (1 - yy), axis=1)[:, ends]])
    tpr, fpr = _div(tp, tp[:, -1:]), _div(fp, fp[:, -1:])
    xs = np.linspace(0, 1, grid)
    ok = ~(np.isnan(tpr).any(axis=1) | np.isnan(fpr).any(axis=1))
    curves = np.array([np.interp(xs, fpr[i], tpr[i]) for i in np.flatnonzero(ok)]) if ok.any() else None
    out = {"fpr": fpr[0].tolist() if ok[0] else [], "tpr": tpr[0].tolist() if ok[0] else [],
           "grid": xs.tolist(), "lo": None, "hi": None}
    if curves is not None and len(curves) > 20:
        lo, hi = np.percentile(curves[1:], [100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2], axis=0)
        out["lo"], out["hi"] = lo.tolist(), hi.tolist()
    return out


def binary_metrics(scores: np.ndarray, y: np.ndarray, patients: np.ndarray, threshold: float,
                   class_names: list[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """Every binary metric at `threshold` (chosen on validation), each with a patient-bootstrap CI."""
    from sklearn.metrics import classification_report

    y = np.asarray(y, dtype=bool)
    weights = bootstrap_weights(patients, n_boot, seed)
    pred = scores >= threshold
    counts = confusion_counts(pred, y, weights)
    values = _rates(counts)
    values["auroc"] = weighted_auroc(scores, y, weights)
    values["pr_auc"] = weighted_average_precision(scores, y, weights)
    out: dict = {"positive_class": class_names[-1]}
    for name in BINARY_METRICS:
        pc = _point_ci(values[name])
        out[name], out[f"{name}_ci"] = pc["value"], pc["ci"]
    tn, fp, fn, tp = (int(round(counts[k][0])) for k in ("tn", "fp", "fn", "tp"))
    out["confusion_matrix"] = {"labels": list(class_names[-2:]) if len(class_names) > 1 else
                               [f"not {class_names[0]}", class_names[0]],
                               "rows": "true", "columns": "predicted", "matrix": [[tn, fp], [fn, tp]]}
    names = out["confusion_matrix"]["labels"]
    out["classification_report"] = classification_report(
        y.astype(int), pred.astype(int), labels=[0, 1], target_names=names, output_dict=True,
        zero_division=0)
    out["roc"] = roc_band(scores, y, weights)
    return out


def multiclass_confusion(probs: np.ndarray, y: np.ndarray, num_classes: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(y, probs.argmax(axis=1), labels=list(range(num_classes))).tolist()
