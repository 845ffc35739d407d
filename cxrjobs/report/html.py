"""`cxrjobs report RUN...`: one self-contained HTML page (images embedded as data: URIs) comparing
runs like the paper's Table 3 (rows: methods; columns: test 1 / test 2 accuracy, balanced
accuracy, AUROC with CI, sensitivity, specificity, images / patients), then each run's spec,
loss curves, confusion matrices, ROC curves and example predictions. Rendered with Jinja2.

It reads only the store: runs/<run>/spec.json, metrics.jsonl and eval/<name>/results.json + PNGs
written by the `evaluate` job; for a hyper-parameter search (`tune` run) its trial table
(trials.json), PBT exploit history (pbt_history.jsonl), summary and plots written by cxrjobs.tune.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from cxrjobs.errors import ConfigError, CxrError
from cxrjobs.headline import MIN_CLASS_PATIENTS, MIN_PATIENTS
from cxrjobs.storage import ObjectStore, join_key
from cxrjobs.storage.runs import epochs_if_unfinished

TEMPLATES = Path(__file__).parent / "templates"
WIDE_CI = 0.2   # a CI wider than this gets a visible warning: the test set is too small to tell
PREFERRED = ("test1", "test2", "test", "all", "val")
METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("auroc", "AUROC"),
           ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _json(store: ObjectStore, key: str):
    return json.loads(store.get_text(key)) if store.exists(key) else None


def _metric(res: dict, name: str) -> dict:
    """{'value', 'ci', 'wide', 'few'} of one metric of a results.json (binary keys, or the
    multilabel mean AUROC under 'auroc'); 'few': why the split is too small for its CI to mean
    much (eval.metrics.few_cases), flagged as a wide CI is."""
    v, ci = res.get(name), res.get(f"{name}_ci")
    if name == "auroc" and isinstance(v, dict):  # multilabel: per-class dict; the mean is the headline
        v, ci = res.get("mean_auroc", {}).get("value"), res.get("mean_auroc", {}).get("ci")
    if isinstance(v, dict):
        v, ci = v.get("value"), v.get("ci")
    wide = bool(ci) and (ci[1] - ci[0]) > WIDE_CI
    return {"value": v, "ci": ci, "wide": wide, "few": res.get("few_cases")}


HISTORY_ROWS = 50  # exploits listed in the page (all of them are in pbt_history.jsonl)


def _num(v) -> str:
    """Metrics to 3 decimals; small values (learning rates in a search) in scientific notation."""
    if v is None:
        return "n/a"
    return f"{v:.3f}" if v == 0 or abs(v) >= 0.01 else f"{v:.2e}"


def _method(spec: dict, run: str) -> str:
    """A short description of how the run was trained ('resnext50, transfer from X, ...')."""
    if spec.get("kind") == "tune":
        tune = spec.get("tune") or {}
        inner = _method({"kind": tune.get("job", "train"), "train": tune.get("train") or {}}, run)
        return (f"tune: {tune.get('algo', '?')}, {tune.get('trials', '?')} trials x "
                f"{tune.get('epochs_per_trial', '?')} epochs over {inner}")
    t = spec.get("train") or {}
    if not t:
        return run
    bits = [t.get("model", "?")]
    if t.get("init_from"):
        bits.append(f"from {t['init_from']}")
    elif t.get("pretrained"):
        bits.append(f"pretrained {Path(str(t['pretrained'])).name}")
    else:
        bits.append("from scratch")
    if t.get("freeze") not in (None, "none"):
        bits.append(f"freeze {t['freeze']}")
    if t.get("sampler") == "balanced":
        bits.append("oversampling")
    return f"{spec.get('kind', '')}: " + ", ".join(bits)


def _search(store: ObjectStore, prefix: str) -> dict | None:
    """A tune run's search: its summary, trial table, exploits and plots; None for other runs."""
    trials = _json(store, join_key(prefix, "trials.json"))
    if trials is None:
        return None
    summary = _json(store, join_key(prefix, "artifacts/result.json")) or {}
    history = store.get_jsonl(join_key(prefix, "pbt_history.jsonl"))
    t0 = min((h["time"] for h in history), default=0.0)
    images = {}
    for name in ("metric_vs_time", "lineage"):
        png = join_key(prefix, "plots", f"{name}.png")
        if store.exists(png):
            images[name] = _data_uri(store.get_bytes(png))
    return {"summary": summary, "trials": trials, "space": summary.get("space", []),
            "history": [dict(h, seconds=h["time"] - t0) for h in history[:HISTORY_ROWS]],
            "exploits": len(history), "images": images}


def collect(store: ObjectStore, run: str) -> dict:
    from cxrjobs.eval import plots

    prefix = join_key("runs", run)
    spec = _json(store, join_key(prefix, "spec.json"))
    history = store.get_jsonl(join_key(prefix, "metrics.jsonl"))
    if spec is None and not history:
        raise CxrError(f"run {run}: nothing at {store.url}/{prefix} (no spec.json, no metrics.jsonl); "
                       "check the run id (`cxrjobs runs`) and CXRJOBS_STORE")
    kind = (spec or {}).get("kind")
    if kind == "evaluate":  # its scores are a section of the run it scored
        scored = (spec.get("evaluate") or {}).get("run")
        raise CxrError(f"{run} is an evaluate job, not a model: report the run it scored, {scored} "
                       f"(its report shows every evaluation of it)")
    if kind == "preprocess":
        raise CxrError(f"{run} is a preprocessing job, not a model: report the runs trained on its dataset")
    evals = {}
    names = sorted({o.key.split("/")[3] for o in store.list(join_key(prefix, "eval"))
                    if o.key.endswith("/results.json")},
                   key=lambda n: (PREFERRED.index(n) if n in PREFERRED else len(PREFERRED), n))
    for name in names:
        res = _json(store, join_key(prefix, "eval", name, "results.json"))
        images = {}
        for png in res.get("plots", []):
            key = join_key(prefix, "eval", name, png)
            if png != "loss_curves.png" and store.exists(key):
                images[png.removesuffix(".png")] = _data_uri(store.get_bytes(key))
        evals[name] = {"res": res, "images": images,
                       "metrics": {m: _metric(res, m) for m, _ in METRICS}}
    search = _search(store, prefix)
    return {"run": run, "spec": spec, "method": _method(spec or {}, run), "evals": evals, "search": search,
            "epochs": len(history),
            # Scored with --allow-unfinished (or not scored yet): its numbers are of best.pt so far.
            "unfinished": _unfinished(store, run, spec),
            # A search has no epochs of its own: its trials' curves are in the search's plots.
            "loss_png": (_data_uri(plots.loss_curves(history, f"{run}: loss per epoch"))
                         if history or search is None else None),
            "spec_text": json.dumps(spec, indent=1) if spec else "(no spec.json)"}


def _unfinished(store: ObjectStore, run: str, spec: dict | None) -> str | None:
    """Why a training run's numbers are not its final model's (scored with --allow-unfinished,
    or not scored yet). A search's progress is its own section."""
    train = (spec or {}).get("train")
    epochs = epochs_if_unfinished(store, run) if train else None
    if epochs is None:
        return None
    return (f"training has not finished ({epochs} of {train.get('epochs', '?')} epochs recorded): "
            "its scores are of its best.pt so far, not of a finished run")


def build_report(store: ObjectStore, runs: list[str], title: str = "cxrjobs report") -> tuple[str, dict]:
    """(HTML text, summary) for `runs`."""
    if not runs:
        raise CxrError("no runs given; e.g. cxrjobs report RUN1 RUN2 -o report.html")
    runs = list(dict.fromkeys(runs))  # a run named twice is one row
    items = [collect(store, r) for r in runs]
    columns = sorted({n for it in items for n in it["evals"]},
                     key=lambda n: (PREFERRED.index(n) if n in PREFERRED else len(PREFERRED), n))
    warnings = [f"{it['run']} on {name}: {label} CI {m['ci'][0]:.3f}-{m['ci'][1]:.3f} is wider than "
                f"{WIDE_CI} ({ev['res']['n_images']} images, {ev['res']['n_patients']} patients): "
                "too few to tell methods apart"
                for it in items for name, ev in it["evals"].items()
                for key, label in METRICS if (m := ev["metrics"][key])["wide"]]
    warnings += [f"{it['run']} on {name}: few cases ({ev['res']['few_cases']}; {ev['res']['n_images']} images, "
                 f"{ev['res']['n_patients']} patients): its CIs are not reliable, even a narrow one"
                 for it in items for name, ev in it["evals"].items() if ev["res"].get("few_cases")]
    warnings += [f"{it['run']}: {it['unfinished']}" for it in items if it["unfinished"]]
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    html = env.get_template("report.html.j2").render(
        title=title, items=items, columns=columns, metrics=METRICS, warnings=warnings, wide=WIDE_CI,
        min_class=MIN_CLASS_PATIENTS, min_patients=MIN_PATIENTS,
        store=store.url, created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    summary = {"runs": runs, "columns": columns, "warnings": warnings,
               "rows": [{"run": it["run"], "method": it["method"],
                         **{c: {m: it["evals"][c]["metrics"][m] for m, _ in METRICS} | {
                             "n_images": it["evals"][c]["res"]["n_images"],
                             "n_patients": it["evals"][c]["res"]["n_patients"]}
                            for c in columns if c in it["evals"]}}
                        | ({"search": {"trials": len(it["search"]["trials"]), "exploits": it["search"]["exploits"],
                                       "best": it["search"]["summary"].get("best")}} if it["search"] else {})
                        for it in items]}
    return html, summary


def write_report(store: ObjectStore, runs: list[str], out: str | Path, title: str = "cxrjobs report") -> dict:
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a folder; give the report's file name, e.g. {out / 'report.html'}")
    html, summary = build_report(store, runs, title)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"-o {out}: cannot write the report there ({e.strerror or e}); "
                          "give a file name in a folder you can write") from None
    summary["path"] = str(out.resolve())
    summary["bytes"] = out.stat().st_size
    return summary
