"""Real COVID-19 data (../shared/data/covid-xray: 169 images, 94 patients), each method trained on
CPU with the one Trainer, scored once on a seeded patient-wise test split.

Methods: smallcnn from scratch; method 1 (smallcnn pre-trained on ../shared/data/nih-sample, conv
frozen, new head); method 2 (ResNeXt-50 pre-trained on nih-sample, new head, oversampling);
ResNeXt-50 from scratch. Model selection (best epoch, decision threshold) uses validation only:
the threshold is Youden's J on validation probabilities; the test split is scored once at the end.
CPU minutes are process CPU time (all threads) of training, pre-training included for methods 1
and 2; scoring runs the `evaluate` job's code in-process.

Usage: python benchmarks/covid_real.py [--size 128] [--epochs 30] [--quick] [--only NAME ...]
Goal: the best method reaches test ROC AUC >= 0.90 within 15 CPU-minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cxrjobs.data.preprocess import preprocess  # noqa: E402
from cxrjobs.data.shards import read_manifest  # noqa: E402
from cxrjobs.specs.preprocess import PreprocessSpec  # noqa: E402
from cxrjobs.specs.train import TrainSpec  # noqa: E402
from cxrjobs.storage import LocalStore  # noqa: E402
from cxrjobs.train.distributed import DistContext  # noqa: E402
from cxrjobs.train.loop import Run, Trainer  # noqa: E402
from cxrjobs.eval.job import evaluate  # noqa: E402
from cxrjobs.specs.eval import EvalSpec  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SOLO = DistContext(0, 1, torch.device("cpu"), None)
GOAL_AUROC, GOAL_CPU_MIN = 0.90, 15.0


def dataset(store_root: Path, source: Path, fmt: str, size: int, seed: int,
            fractions=(0.6, 0.2, 0.2)) -> Path:
    out = store_root / "datasets" / f"{fmt}-{size}-s{seed}"
    spec = PreprocessSpec(source=str(source), format=fmt, size=size, seed=seed, fractions=fractions)
    if not (out / "manifest.json").is_file():
        preprocess(spec, LocalStore(out), "", show_progress=False)
    return out


def train(store: LocalStore, run: str, **spec) -> tuple[Trainer, float, dict]:
    shutil.rmtree(store.root / "runs" / run, ignore_errors=True)
    t0 = time.process_time()
    t = Trainer(TrainSpec(**spec), Run(store, run), SOLO, log=lambda m: None)
    result = t.fit()
    return t, (time.process_time() - t0) / 60, result


def methods(a) -> dict[str, dict]:
    common = dict(objective="multiclass", epochs=a.epochs, batch_size=32, bootstrap=0, threads=a.threads,
                  augment={"hflip": 0.5, "vflip": 0.0, "brightness": 0.2, "rotation": a.rotation},
                  seed=a.seed, monitor=a.monitor)
    adam = dict(optimizer="adam", lr=a.lr, weight_decay=1e-4)
    resnext = dict(model="resnext50", sampler="balanced", epochs=a.resnext_epochs)
    return {
        "smallcnn scratch": {"train": {**common, **adam, "model": "smallcnn", "sampler": "balanced"}},
        "method 1": {"pretrain": "smallcnn",
                     "train": {**common, "model": "smallcnn", "freeze": a.freeze, "optimizer": "sgd", "lr": a.m1_lr,
                               "momentum": 0.9, "scheduler": "step", "step_size": 7, "gamma": 0.1}},
        "method 2": {"pretrain": "resnext50", "train": {**common, **adam, **resnext}},
        "resnext scratch": {"train": {**common, **adam, **resnext}},
    }


def run_methods(a) -> list[dict]:
    work = a.workdir
    store = LocalStore(work / "store")
    covid = dataset(work / "store", SHARED / "covid-xray", "covid", a.size, a.seed)
    m = read_manifest(covid)
    print(f"covid-xray at {a.size}px, seed {a.seed}: splits {m['splits']} images, {m['patients']} patients",
          flush=True)
    pre_cache: dict[str, tuple[str, float]] = {}
    rows = []
    for name, cfg in methods(a).items():
        if a.only and name not in a.only:
            continue
        pre_min = 0.0
        spec = dict(cfg["train"], data=str(covid))
        if "pretrain" in cfg:
            arch = cfg["pretrain"]
            if arch not in pre_cache:
                nih = dataset(work / "store", SHARED / "nih-sample", "nih", a.size, a.seed, (0.8, 0.2, 0.0))
                run_id = f"nih-{arch}-{a.size}"
                _, minutes, res = train(store, run_id, data=str(nih), model=arch, objective="multilabel",
                                        epochs=a.nih_epochs if arch == "smallcnn" else a.nih_resnext_epochs,
                                        optimizer="adam", lr=1e-3, batch_size=32, bootstrap=0,
                                        threads=a.threads, evaluate_test=False, seed=a.seed)
                print(f"  pre-training {arch} on nih-sample: {minutes:.2f} CPU-min, best val loss "
                      f"{res['best_val_loss']:.4f}", flush=True)
                pre_cache[arch] = (run_id, minutes)
            spec["init_from"], pre_min = pre_cache[arch]
        run_id = f"covid-{name.replace(' ', '-')}"
        t, minutes, res = train(store, run_id, **spec)
        # The evaluate job's code: best.pt, threshold (Youden's J) on the run's validation split,
        # then the test split once, with patient-bootstrap CIs.
        ev = evaluate(EvalSpec(run=run_id, data=str(covid), split="test", name="test1", bootstrap=1000,
                               examples=0), store, log=lambda m: None)
        s = {k: ev[k] for k in ("auroc", "auroc_ci", "balanced_accuracy", "balanced_accuracy_ci",
                                "sensitivity", "specificity")}
        s.update(threshold=ev["threshold"], images=ev["n_images"], patients=ev["n_patients"])
        thr = s["threshold"]
        best_epoch = max(i for i, h in enumerate(t.history) if h["best"]) + 1
        row = {"method": name, **s, "cpu_minutes": pre_min + minutes, "pretrain_cpu_minutes": pre_min,
               "best_epoch": best_epoch, "epochs": len(t.history),
               "val_auroc_at_best": t.history[best_epoch - 1]["val"]["auroc"]["value"],
               "spec": {k: v for k, v in spec.items() if k != "data"}}
        rows.append(row)
        print(f"  {name:<17} test AUROC {s['auroc']:.3f} [{s['auroc_ci'][0]:.3f}, {s['auroc_ci'][1]:.3f}] "
              f"bal.acc {s['balanced_accuracy']:.3f} sens {s['sensitivity']:.3f} spec {s['specificity']:.3f} "
              f"(thr {thr:.3f} from val; best epoch {best_epoch}/{len(t.history)}) "
              f"{row['cpu_minutes']:.2f} CPU-min", flush=True)
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="patient-wise split and training seed")
    ap.add_argument("--epochs", type=int, default=40, help="COVID epochs for smallcnn")
    ap.add_argument("--resnext-epochs", type=int, default=12)
    ap.add_argument("--nih-epochs", type=int, default=15, help="nih-sample pre-training epochs (smallcnn)")
    ap.add_argument("--nih-resnext-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--m1-lr", type=float, default=0.003, help="method 1 SGD learning rate")
    ap.add_argument("--freeze", default="conv", help="method 1 freeze preset")
    ap.add_argument("--rotation", type=float, default=10.0)
    ap.add_argument("--monitor", default="val_auroc",
                    help="validation metric that picks best.pt (val_loss swings with calibration on 35 images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="method names to run")
    ap.add_argument("--quick", action="store_true", help="64 px, few epochs (a smoke run)")
    ap.add_argument("--workdir", type=Path, default=HERE / "results" / "covid-work")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    return ap


def run(quick: bool = False, workdir: Path = HERE / "results" / "work") -> list[dict]:
    """Rows for benchmarks/run.py (`make bench`): each method's test AUROC, and the goal."""
    a = parser().parse_args(["--workdir", str(workdir / "covid-real")] + (["--quick"] if quick else []))
    doc = measure(a)
    rows = [{"group": "covid_real", "name": f"{r['method']} test AUROC "
             f"[{r['auroc_ci'][0]:.2f}, {r['auroc_ci'][1]:.2f}] ({r['images']} img / {r['patients']} pat, "
             f"{r['cpu_minutes']:.1f} CPU-min)", "value": r["auroc"], "unit": "AUROC", "goal": None, "ok": None}
            for r in doc.get("rows", [])]
    if doc.get("rows"):
        best = max(doc["rows"], key=lambda r: r["auroc"])
        rows.append({"group": "covid_real", "name": f"best method ({best['method']})", "value": best["auroc"],
                     "unit": "AUROC", "goal": f">= {GOAL_AUROC} in <= {GOAL_CPU_MIN:g} CPU-min",
                     "ok": doc["goal"]["met"]})
    return rows


def main() -> int:
    measure(parser().parse_args())
    return 0


def measure(a) -> dict:
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (real data lies beside the checkout in CI)")
        return {}
    if a.quick:
        a.size, a.epochs, a.resnext_epochs, a.nih_epochs, a.nih_resnext_epochs = 64, 3, 1, 2, 1
    a.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = run_methods(a)
    best = max(rows, key=lambda r: r["auroc"]) if rows else None
    print(f"\n{'method':<18} {'test AUROC [95% CI]':<24} {'bal.acc':>8} {'sens':>6} {'spec':>6} "
          f"{'CPU-min':>8}  images/patients")
    for r in rows:
        print(f"{r['method']:<18} {r['auroc']:.3f} [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]"
              f"{'':<3} {r['balanced_accuracy']:>8.3f} {r['sensitivity']:>6.3f} {r['specificity']:>6.3f} "
              f"{r['cpu_minutes']:>8.2f}  {r['images']}/{r['patients']}")
    ok = best is not None and best["auroc"] >= GOAL_AUROC and best["cpu_minutes"] <= GOAL_CPU_MIN
    if best:
        print(f"goal (best test AUROC >= {GOAL_AUROC} within {GOAL_CPU_MIN} CPU-min): "
              f"{'met' if ok else 'NOT met'} - best {best['method']} {best['auroc']:.3f} in "
              f"{best['cpu_minutes']:.1f} CPU-min")
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seconds": time.time() - started,
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
           "split": "test (seeded patient-wise 60/20/20 split of covid-xray); thresholds from val",
           "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                       "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]},
           "goal": {"auroc": GOAL_AUROC, "cpu_minutes": GOAL_CPU_MIN, "met": ok}, "rows": rows}
    out = HERE / "results" / f"covid_real{('-' + a.tag) if a.tag else ''}.json"
    out.write_text(json.dumps(doc, indent=1))
    print(f"written to {out}")
    return doc


if __name__ == "__main__":
    sys.exit(main())
