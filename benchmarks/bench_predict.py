"""Benchmark 3: `cxrjobs predict` throughput on 200 PNG files vs the raw model forward pass.

A run is made the way training leaves one: a checkpoint with the input recipe (best.pt) and an
OOD detector (ood.json, fitted by the same code as at the end of training on a small phantom
dataset). Weights are random: throughput does not depend on them.

  predict   predict_files(): read + decode + resize (pad) 200 PNG files on a thread pool, overlapped
            with the model; normalise; forward with the penultimate-feature hook; OOD score
            (image statistics + Mahalanobis); per-image entries. Batch 64.
  forward   model(prepare(x)) on the same 200 already-decoded images, batch 64, no_grad: the
            ceiling predict can approach.
Goal: predict images/s >= 0.5 x forward images/s. Inputs: 200 phantom chest X-ray PNGs at
512 x 512 (synth_nih), written once under `workdir`. Best of 3 repeats (the cores are shared).

Run alone: python benchmarks/bench_predict.py [--quick] [--workdir DIR]  (prints the rows as JSON)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

GOAL = 0.5
N_FILES = 200


def row(name, value, unit, goal=None, ok=None, **details):
    return {"group": "predict", "name": name, "value": float(value), "unit": unit, "goal": goal,
            "ok": ok, "details": details}


def make_run(workdir: Path, model: str, size: int, quick: bool):
    """A run 'bench-<model>' in a local store: random weights in best.pt, detector fitted."""
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.data.synth import synth_nih
    from cxrjobs.data.transforms import MEAN, STD
    from cxrjobs.eval import ood
    from cxrjobs.models import build_model
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.specs.train import TrainSpec
    from cxrjobs.storage import LocalStore
    from cxrjobs.train import checkpoint

    ds = workdir / f"predict-ds{size}"
    if not (ds / "manifest.json").is_file():
        shutil.rmtree(workdir / "predict-raw", ignore_errors=True)  # synth needs an empty folder
        synth_nih(workdir / "predict-raw", 120 if quick else 300, size=256, seed=5)
        preprocess(PreprocessSpec(source=str(workdir / "predict-raw"), format="nih", size=size),
                   LocalStore(ds), "", show_progress=False)
    manifest = json.loads((ds / "manifest.json").read_text())
    store = LocalStore(workdir / "predict-store")
    run = f"bench-{model}-{size}"
    torch.manual_seed(0)
    net = build_model(model, len(manifest["findings"]), size)
    spec = TrainSpec(data=str(ds), model=model, objective="multilabel")
    checkpoint.save(store, f"runs/{run}/checkpoints/best.pt", {
        "model": net.state_dict(), "spec": spec.model_dump_json(), "arch": model,
        "class_names": manifest["findings"], "objective": "multilabel", "image_size": size,
        "fit": "pad", "normalization": {"mean": MEAN, "std": STD}})
    ood.fit_for_run(store, run, log=lambda m: None)
    return store, run


def files(workdir: Path, n: int) -> list[str]:
    from cxrjobs.data.synth import synth_nih

    root = workdir / "predict-png512"
    if not (root / "Data_Entry_2017.csv").is_file():
        shutil.rmtree(root, ignore_errors=True)  # an interrupted set: synth needs an empty folder
        synth_nih(root, n, size=512, seed=11, special=False)
    return sorted(str(p) for p in root.rglob("*.png"))[:n]


def measure(store, run, paths: list[str], repeats: int) -> dict:
    from cxrjobs.eval import ood
    from cxrjobs.eval.predict import _load_one, load_run, predict_files

    rm = load_run(store, run)
    det = ood.load_for_run(store, run, rm=rm)
    x = torch.from_numpy(np.stack([_load_one(p, rm.image_size, rm.fit)[1] for p in paths])[:, None])
    fwd, pred = [], []
    with torch.no_grad():
        rm.model(rm.normalize(x[:8]))  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), 64):
                rm.model(rm.normalize(x[i:i + 64]))
            fwd.append(len(x) / (time.perf_counter() - t0))
    predict_files(rm, paths[:8], det)  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = predict_files(rm, paths, det, batch_size=64)
        pred.append(len(paths) / (time.perf_counter() - t0))
        assert sum("error" in r for r in res) == 0
    return {"forward": max(fwd), "predict": max(pred), "forward_all": fwd, "predict_all": pred,
            "flagged": sum(r["ood"] for r in res), "threads": torch.get_num_threads()}


def run(quick: bool = False, workdir: Path = Path("benchmarks/results/work")) -> list[dict]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = files(workdir, N_FILES)
    rows = []
    for model, size in (("smallcnn", 224),) + (() if quick else (("resnext50", 224),)):
        store, run_id = make_run(workdir, model, size, quick)
        m = measure(store, run_id, paths, 2 if quick else 3)
        ratio = m["predict"] / m["forward"]
        common = dict(model=model, image_size=size, files=len(paths), png_size=512, batch=64, **m)
        rows.append(row(f"predict {model}@{size} (200 PNG files)", m["predict"], "img/s", **common))
        rows.append(row(f"raw forward {model}@{size} (same batch)", m["forward"], "img/s", **common))
        rows.append(row(f"predict / forward {model}@{size}", ratio, "x", goal=f">= {GOAL}", ok=ratio >= GOAL, **common))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "results" / "work")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(run(a.quick, a.workdir), indent=1))
