"""The `evaluate` job: score a finished run on a dataset split, or on every image of an external
dataset (the paper's "test 2"), and write runs/<run>/eval/<name>/results.json plus PNG plots.

Order of work, so the test data never influences a choice: (1) the decision threshold of a
binary run is chosen on the run's own *validation* split (Youden's J); (2) the OOD detector
(fitted at the end of training, or now from the training split) is loaded; (3) only then is
the requested split scored. Replicas split the images and all-gather the logits (no padding);
rank 0 computes metrics and writes.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import torch

from cxrjobs.errors import ConfigError, DataError
from cxrjobs.specs.eval import EvalSpec
from cxrjobs.storage import ObjectStore, join_key
from cxrjobs.storage.runs import training_note


def log(msg: str) -> None:
    print(msg, flush=True)


def run_evaluate(job, store: ObjectStore) -> None:
    from cxrjobs.train.distributed import init_distributed, shutdown

    ctx = init_distributed(job.rendezvous_timeout)
    try:
        evaluate(job.evaluate, store, ctx)
    finally:
        shutdown(ctx)


def map_targets(ds, run_classes: list[str], objective: str, data: str) -> torch.Tensor:
    """The dataset's targets in the run's class order. A class the run does not know is an error."""
    own = list(ds.class_names)
    unknown = [c for c in own if c not in run_classes]
    if unknown or (objective == "multilabel" and sorted(own) != sorted(run_classes)):
        raise DataError(
            f"dataset {data}: its classes {own} do not map onto the run's classes {run_classes}"
            + (f" (unknown: {unknown})" if unknown else " (a multi-label set needs the same findings)")
            + ("; a multi-label run scores datasets of the same findings (e.g. another NIH-format set)"
               if objective == "multilabel" else
               "; preprocess it with labels named like the run's (imagefolder: --class-map/--labels, "
               f"e.g. --class-map covid=1,normal=0 --labels {','.join(run_classes)})"))
    if own == list(run_classes):
        return ds.targets
    if objective == "multilabel":
        return ds.targets[:, [own.index(c) for c in run_classes]]
    lookup = torch.tensor([run_classes.index(c) for c in own])
    return lookup[ds.targets]


def _pick_examples(n: int, k: int, seed: int, wrong: np.ndarray | None) -> np.ndarray:
    """Up to k images: half from the mistakes when there are any, the rest at random (seeded)."""
    rng = np.random.default_rng(seed)
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    picks: list[int] = []
    if wrong is not None and wrong.any():
        bad = np.flatnonzero(wrong)
        picks += rng.choice(bad, min(len(bad), k // 2), replace=False).tolist()
    rest = np.setdiff1d(np.arange(n), picks)
    picks += rng.choice(rest, min(len(rest), k - len(picks)), replace=False).tolist()
    return np.sort(np.asarray(picks, dtype=np.int64))


def evaluate(spec: EvalSpec, store: ObjectStore, ctx=None, log=log) -> dict:
    from cxrjobs.data.shards import ShardDataset
    from cxrjobs.eval import metrics as M
    from cxrjobs.eval import ood, plots
    from cxrjobs.eval.predict import load_run, predict_dataset
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import resolve_dataset

    t0 = time.perf_counter()
    ctx = ctx or DistContext(0, 1, torch.device("cpu"), None)
    note = None if spec.allow_unfinished else training_note(store, spec.run)
    if note:  # checked at submit too; the run may have been resubmitted since
        raise ConfigError(f"evaluate.run: {note}")
    rm = load_run(store, spec.run, ctx.device)
    root = resolve_dataset(spec.data, store)
    ds = ShardDataset(root, None if spec.split == "all" else spec.split, rm.objective)
    if len(ds) == 0:
        raise DataError(f"dataset {spec.data}: split {spec.split!r} has no images; an external test "
                        "set is scored with --split all")
    if ds.image_size != rm.image_size:
        raise DataError(f"dataset {spec.data} is preprocessed at {ds.image_size} px but run {spec.run} "
                        f"was trained at {rm.image_size} px; preprocess it at --size {rm.image_size}")
    targets = map_targets(ds, rm.class_names, rm.objective, spec.data)
    binary = M.is_binary(rm.objective, len(rm.class_names))

    # 1. Threshold from the run's own validation split (never from the data being scored).
    threshold = None
    if binary:
        val = ShardDataset(resolve_dataset(rm.data, store), "val", rm.objective)
        val_logits, _ = predict_dataset(rm.model, val, ctx, spec.batch_size, normalize=rm.normalize)
        threshold = M.youden_threshold(M.positive_scores(rm.objective, val_logits),
                                       M.binary_targets(rm.objective, val.targets))
        threshold.update(split="val", dataset=rm.data, images=len(val),
                         patients=int(len(np.unique(val.patients))))
    # 2. The OOD detector (fitted from the training split when the run has none).
    det = ood.load_for_run(store, spec.run, ctx, rm, log=log if ctx.is_main else (lambda m: None))
    # 3. The requested split.
    logits, feats = predict_dataset(rm.model, ds, ctx, spec.batch_size, features=True, normalize=rm.normalize)
    if not ctx.is_main:
        return {}

    images = lambda idx: ds.__getitems__(np.asarray(idx, dtype=np.int64))[0].numpy()[:, 0]
    stats = np.concatenate([ood.image_stats(images(np.arange(i, min(i + 512, len(ds)))))
                            for i in range(0, len(ds), 512)])
    dist = det.distance(np.hstack([feats.numpy(), stats]))
    flagged = dist > det.threshold
    patients = ds.patients
    base = M.summarize(rm.objective, logits, targets, patients, rm.class_names, spec.split,
                       spec.bootstrap, spec.seed)
    res: dict = {
        "run": spec.run, "dataset": spec.data, "split": spec.split, "name": spec.result_name,
        "n_images": int(len(ds)), "n_patients": int(len(np.unique(patients))),
        "few_cases": (M.few_cases(patients, M.binary_targets(rm.objective, targets)) if binary
                      else base["few_cases"]),
        "objective": rm.objective, "class_names": rm.class_names, "loss": base["loss"],
        "ci_level": M.CI_LEVEL, "ci_unit": "patient", "bootstrap": spec.bootstrap,
        "model": rm.recipe(),
        "ood": {"flagged": int(flagged.sum()), "of": int(len(ds)), "rate": float(flagged.mean()),
                "threshold": det.threshold, "fitted_on": det.info},
    }
    pngs: dict[str, bytes] = {}
    history = store.get_jsonl(join_key("runs", spec.run, "metrics.jsonl"))
    pngs["loss_curves.png"] = plots.loss_curves(history, f"{spec.run}: loss per epoch")
    if binary:
        scores = M.positive_scores(rm.objective, logits)
        y = M.binary_targets(rm.objective, targets)
        res["threshold"] = threshold["value"]
        res["threshold_choice"] = threshold
        res.update(M.binary_metrics(scores, y, patients, threshold["value"], rm.class_names,
                                    spec.bootstrap, spec.seed))
        cm = res["confusion_matrix"]
        pngs["confusion_matrix.png"] = plots.confusion_heatmap(
            cm["matrix"], cm["labels"], f"{spec.result_name} at threshold {threshold['value']:.3f}")
        pngs["roc_curve.png"] = plots.roc_curve(res["roc"], res["auroc"], res["auroc_ci"],
                                                f"{spec.result_name}: {res['n_images']} images, {res['n_patients']} patients")
        pred = scores >= threshold["value"]
        names = cm["labels"]
        true_l, pred_l = [names[int(v)] for v in y], [names[int(v)] for v in pred]
        prob, wrong = scores, pred != y
        prob_name = f"p({res['positive_class']})"
    elif rm.objective == "multiclass":
        probs = torch.softmax(logits.float(), 1).numpy()
        y = targets.numpy()
        res["accuracy"], res["accuracy_ci"] = base["accuracy"]["value"], base["accuracy"]["ci"]
        res["confusion_matrix"] = {"labels": rm.class_names, "rows": "true", "columns": "predicted",
                                   "matrix": M.multiclass_confusion(probs, y, len(rm.class_names))}
        pngs["confusion_matrix.png"] = plots.confusion_heatmap(
            res["confusion_matrix"]["matrix"], rm.class_names, f"{spec.result_name}: argmax")
        true_l = [rm.class_names[int(v)] for v in y]
        pred_l = [rm.class_names[int(v)] for v in probs.argmax(1)]
        prob, wrong = probs.max(1), probs.argmax(1) != y
        prob_name = "p"
    else:  # NIH multilabel: per-class and mean AUROC with CIs
        res["auroc"], res["mean_auroc"] = base["auroc"], base["mean_auroc"]
        probs = torch.sigmoid(logits.float()).numpy()
        y = targets.numpy()
        true_l = ["|".join(c for c, v in zip(rm.class_names, row) if v) or "No Finding" for row in y]
        pred_l = [rm.class_names[int(k)] for k in probs.argmax(1)]
        prob, wrong = probs.max(1), None
        prob_name = "p"
    pick = _pick_examples(len(ds), spec.examples, spec.seed, wrong)
    if len(pick):
        pngs["examples.png"] = plots.example_grid(images(pick), [true_l[i] for i in pick],
                                                  [pred_l[i] for i in pick], [float(prob[i]) for i in pick],
                                                  [bool(flagged[i]) for i in pick],
                                                  f"{spec.result_name}: examples", prob_name)
    res["plots"] = sorted(pngs)
    res["seconds"] = time.perf_counter() - t0
    res["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    prefix = join_key("runs", spec.run, "eval", spec.result_name)
    for name, data in pngs.items():
        store.put_bytes(join_key(prefix, name), data)
    table = {"image_id": ds.index["image_id"], "patient_id": patients, "true": true_l,
             "predicted": pred_l, "probability": np.round(prob, 6), "ood": flagged,
             "ood_score": np.round(dist / det.threshold, 4)}
    import pandas as pd
    buf = io.StringIO()
    pd.DataFrame(table).to_csv(buf, index=False)
    store.put_text(join_key(prefix, "predictions.csv"), buf.getvalue())
    store.put_text(join_key(prefix, "results.json"), json.dumps(res, indent=1))
    log(f"evaluate {spec.run} on {spec.data} ({spec.split}): {summary_line(res)}; "
        f"OOD flagged {res['ood']['flagged']}/{res['ood']['of']}; artifacts: {store.url}/{prefix}")
    return res


def summary_line(res: dict) -> str:
    def fmt(name):
        v, ci = res.get(name), res.get(f"{name}_ci")
        if isinstance(v, dict):  # mean_auroc in the summarize() format
            v, ci = v.get("value"), v.get("ci")
        if v is None:
            return f"{name} n/a"
        return f"{name} {v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    names = (["auroc", "balanced_accuracy", "sensitivity", "specificity"] if "sensitivity" in res else
             ["accuracy"] if "accuracy" in res else ["mean_auroc"])
    few = f"; few cases: {res['few_cases']}, the CIs are not reliable" if res.get("few_cases") else ""
    return (", ".join(fmt(n) for n in names)
            + f" ({res['split']}: {res['n_images']} images, {res['n_patients']} patients{few})")
