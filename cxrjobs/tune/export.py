"""What a finished search leaves in the store.

runs/<tune-id>/: trials.csv and trials.json (config, best metric, epochs, exploits per trial),
pbt_history.jsonl (written live by the PBT scheduler), plots/metric_vs_time.png and
plots/lineage.png, artifacts/result.json (the summary).
runs/<tune-id>-best/: the best trial as a normal run of the inner job kind (spec.json,
checkpoints/{latest,best}.pt, metrics.jsonl, artifacts/result.json), which evaluate / predict /
report take like any training run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
from pathlib import Path

from cxrjobs.errors import CxrError
from cxrjobs.jobs.spec import JobSpec, best_run_id
from cxrjobs.specs.tune import TuneSpec
from cxrjobs.storage import ObjectStore, join_key
from cxrjobs.storage.runs import best_run_taken
from cxrjobs.tune.trainable import CHECKPOINT_FILES


def _trial_id(result) -> str:
    # The trial directory, TrialTrainable_<experiment>_<index>_...: a trial cloned at its donor's
    # last epoch keeps the donor's last metrics (and trial_id) as its own.
    m = re.search(r"_([0-9a-f]{5}_[0-9]{5})_", Path(str(result.path)).name)
    return m.group(1) if m else (result.metrics or {}).get("trial_id", Path(str(result.path)).name)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def trial_table(grid, spec: TuneSpec, history: list[dict], rows: list[dict]) -> list[dict]:
    keys = list(spec.space or {})
    table = []
    for r in grid:
        tid = _trial_id(r)
        mine = [x for x in rows if x["trial"] == tid]
        vals = [x[spec.metric] for x in mine if _finite(x.get(spec.metric))]
        best = (min(vals) if spec.mode == "min" else max(vals)) if vals else None
        last = mine[-1] if mine else {}
        table.append({
            "trial": tid, "status": "ERROR" if r.error else "TERMINATED",
            # A trial whose process failed to start reported nothing, not even its config.
            **{k: (r.config or {}).get(k) for k in keys},
            "best_reported": best, "lineage_best": last.get("lineage_best"), "epochs": last.get("epoch"),
            "reports": len(mine), "exploits": sum(1 for h in history if h["trial"] == tid),
            "cloned_from": [h["donor"] for h in history if h["trial"] == tid],
            "error": str(r.error).strip().splitlines()[-1][:300] if r.error else "",
        })
    return table


def _pick_best(grid, spec: TuneSpec):
    """The trial whose checkpoint holds the best weights: judged on the lineage's best value
    (the epochs behind its best.pt; a cloned trial inherits its donor's)."""
    ranked = [r for r in grid if r.checkpoint is not None and _finite((r.metrics or {}).get("lineage_best"))]
    if not ranked:
        return None
    sign = 1 if spec.mode == "min" else -1
    return min(ranked, key=lambda r: sign * r.metrics["lineage_best"])


def export_best(result, spec: TuneSpec, tune_id: str, store: ObjectStore) -> tuple[str, dict | None]:
    """Copy the best trial's last checkpoint into runs/<tune-id>-best/ as a normal run; returns
    its id and the validation metrics of its best epoch."""
    from cxrjobs.tune.trainable import metric_value

    run_id = best_run_id(tune_id)
    taken = best_run_taken(store, tune_id, run_id)
    if taken:  # made while the search ran (submit refuses a search whose name is taken)
        raise CxrError(taken)
    train = spec.trial_train_spec(result.config)
    job = JobSpec(kind=spec.job, name=run_id, train=train)
    best_val, best_loss = None, None
    with result.checkpoint.as_directory() as d:
        lines = (Path(d) / "metrics.jsonl").read_text().splitlines() if (Path(d) / "metrics.jsonl").is_file() else []
        history = [json.loads(x) for x in lines if x.strip()]
        if history:
            sign = 1 if spec.mode == "min" else -1
            scored = [h for h in history if _finite(metric_value(h["val"], spec.metric))]
            if scored:
                best_val = min(scored, key=lambda h: sign * metric_value(h["val"], spec.metric))["val"]
            best_loss = min(h["val"]["loss"] for h in history)
        for rel in CHECKPOINT_FILES:
            # The trials' checkpoints record the run's spec (TrialTrainable.recorded_spec).
            if (Path(d) / rel).is_file():
                store.put_file(join_key("runs", run_id, rel), Path(d) / rel)
    store.put_text(join_key("runs", run_id, "artifacts/result.json"), json.dumps({
        "run": run_id, "epochs": result.metrics.get("epoch"), "best_val_loss": best_loss,
        "tuned_by": tune_id, "trial": _trial_id(result), "metric": spec.metric,
        "best": result.metrics.get("lineage_best"), "config": {k: result.config.get(k) for k in spec.space or {}},
    }, indent=1))
    store.put_text(join_key("runs", run_id, "spec.json"), job.model_dump_json(indent=1))
    return run_id, best_val


PLOTS = ("metric_vs_time.png", "lineage.png")


def plot_keys(tune_id: str, rows: list[dict]) -> list[str]:
    """Where write_plots puts its plots (none for a search without a single result)."""
    return [join_key("runs", tune_id, "plots", name) for name in PLOTS] if rows else []


def write_plots(spec: TuneSpec, history: list[dict], rows: list[dict], store: ObjectStore, tune_id: str) -> None:
    """The metric against time per trial, and the exploit lineage. Drawn on matplotlib's
    object API (no pyplot state), so the driver can draw them while Ray shuts down."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    trials = sorted({x["trial"] for x in rows})
    if not trials:
        return
    keys = dict(zip(PLOTS, plot_keys(tune_id, rows)))
    t0 = min(x["time"] for x in rows)
    per = {t: [x for x in rows if x["trial"] == t and _finite(x.get(spec.metric))] for t in trials}
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for t in trials:
        ax.plot([x["time"] - t0 for x in per[t]], [x[spec.metric] for x in per[t]], marker=".", label=t)
    for h in history:
        ax.axvline(h["time"] - t0, color="grey", alpha=0.25, lw=0.8)
    values = [x[spec.metric] for t in trials for x in per[t]]
    if values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")  # a diverged trial (loss 200 beside 0.6) would flatten every other curve
    ax.set_xlabel("seconds since the first result (grey lines: exploits)")
    ax.set_ylabel(f"{spec.metric} (validation split)")
    ax.set_title(f"{tune_id}: {spec.algo}, {spec.trials} trials")
    if len(trials) <= 12:
        ax.legend(fontsize=7)
    _save(fig, store, keys["metric_vs_time.png"])

    order = {t: i for i, t in enumerate(trials)}
    fig = Figure(figsize=(8, max(3, 0.3 * len(trials) + 1.5)))
    ax = fig.subplots()
    sc = None
    for t in trials:
        sc = ax.scatter([x["epoch"] for x in per[t]], [order[t]] * len(per[t]), c=[x[spec.metric] for x in per[t]],
                        cmap="viridis_r" if spec.mode == "min" else "viridis", s=30, zorder=3)
    for h in history:
        if h["donor"] in order and h["trial"] in order and h.get("donor_epoch") is not None:
            ax.annotate("", xy=(h["donor_epoch"] + 0.35, order[h["trial"]]),
                        xytext=(h["donor_epoch"], order[h["donor"]]),
                        arrowprops=dict(arrowstyle="->", color="tab:red", alpha=0.7))
    if sc is not None:
        fig.colorbar(sc, ax=ax, label=spec.metric)
    ax.set_yticks(range(len(trials)), trials, fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 1.25
    ax.set_xlabel("epoch (red arrows: exploit, donor -> clone, which continues from the donor's epoch)")
    ax.set_title(f"{tune_id}: exploit lineage ({len(history)} exploits)")
    _save(fig, store, keys["lineage.png"])


def _save(fig, store: ObjectStore, key: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / Path(key).name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        store.put_file(key, path)


def export(grid, spec: TuneSpec, tune_id: str, store: ObjectStore, history: list[dict],
           results: list[dict], wall_s: float) -> dict:
    rows = trial_table(grid, spec, history, results)
    base = join_key("runs", tune_id)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"])
    w.writeheader()
    for row in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()})
    store.put_text(join_key(base, "trials.csv"), buf.getvalue())
    store.put_text(join_key(base, "trials.json"), json.dumps(rows, indent=1, default=str))
    best = _pick_best(grid, spec)
    summary = {"run": tune_id, "algo": spec.algo, "metric": spec.metric, "mode": spec.mode,
               "trials": len(rows), "errored": sum(r["status"] == "ERROR" for r in rows),
               "epochs_per_trial": spec.epochs_per_trial, "exploits": len(history),
               "space": list(spec.space or {}),  # the trial table's hyper-parameter columns
               "wall_seconds": wall_s, "plots": plot_keys(tune_id, results), "best": None}
    if best is not None:
        run_id, val = export_best(best, spec, tune_id, store)
        summary["best"] = {"trial": _trial_id(best), "value": best.metrics["lineage_best"],
                           "split": "val", "val": val, "run": run_id,
                           "config": {k: best.config.get(k) for k in spec.space or {}}}
    store.put_text(join_key(base, "artifacts/result.json"), json.dumps(summary, indent=1, default=str))
    return summary
