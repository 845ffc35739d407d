"""GPU check (issue 11): one short script for a machine with a CUDA GPU; < 4 minutes.

  1. smallcnn 224: end to end (Trainer.fit's training loop: memory-mapped shards -> pinned uint8
     batches -> non-blocking copy -> normalise/augment on the GPU -> step) against the raw train
     step (Trainer.step on a batch already on the GPU), same card, same batch.   goal >= 0.8
  2. resnext50 224: raw train-step throughput, bf16 autocast + channels-last against fp32
     (contiguous), same card.                                     goal >= 1.8x and >= 3,000 img/s
     on an H100-class card
  3. two replicas over nccl (one per GPU), smallcnn end to end: only when the host has >= 2 GPUs.

Inputs are random uint8 images written as preprocessed shards (the data path does not care what
the pixels are). Prints a table and writes gpu_check.json to --out (default: $OUT, else
benchmarks/results). Without CUDA it says so, writes a JSON saying skipped, and exits 0;
--cpu-smoke runs every step tiny on the CPU to check the script itself (numbers meaningless).

Run: python benchmarks/gpu_check.py [--out DIR] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

E2E_GOAL, BF16_GOAL, BF16_RATE_GOAL = 0.8, 1.8, 3000.0
FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
            "Hernia"]


def write_dataset(root: Path, size: int, train: int, val: int, shard: int = 2048) -> Path:
    """Random uint8 images in the preprocessed layout (manifest.json, index.csv, shards/)."""
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    n = train + val
    rows = []
    for k, start in enumerate(range(0, n, shard)):
        count = min(shard, n - start)
        np.save(root / "shards" / f"shard-{k:05d}.npy", rng.integers(0, 256, (count, size, size), np.uint8))
        for off in range(count):
            i = start + off
            labels = "|".join(f for f in FINDINGS if rng.random() < 0.1) or "No Finding"
            rows.append({"image_id": f"{i:06d}.png", "patient_id": f"p{i}", "labels": labels, "view": "PA",
                         "split": "train" if i < train else "val", "shard": k, "offset": off})
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
    (root / "manifest.json").write_text(json.dumps(
        {"image_size": size, "findings": FINDINGS, "labels": ["No Finding"] + FINDINGS, "parameters": {"fit": "pad"}}))
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(data: Path, store_root: Path, run: str, device: torch.device, **spec_kw):
    from cxrjobs.specs.train import TrainSpec
    from cxrjobs.storage import LocalStore
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import Run, Trainer

    spec = TrainSpec(data=str(data), bootstrap=0, evaluate_test=False, **spec_kw)
    ctx = DistContext(0, 1, device, None)
    return Trainer(spec, Run(LocalStore(store_root), run), ctx, log=lambda m: None)


def raw_step_rate(t, device: torch.device, steps: int, warmup: int) -> float:
    """Trainer.step on one uint8 batch already on the device: the ceiling of end to end."""
    n = t.per_rank
    x, y = t.data["train"].__getitems__(list(range(n)))
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(warmup):
        t.step(x, y, gen)
    sync(device)
    t0 = time.perf_counter()
    total = torch.zeros((), device=device)
    for _ in range(steps):
        total += t.step(x, y, gen)
    float(total)
    return steps * n / (time.perf_counter() - t0)


def end_to_end(t) -> dict:
    """Trainer.fit over the whole train split (2 epochs; the first warms up): images/s of the
    second epoch's training loop, and the epoch's wall time including evaluation."""
    t0 = time.perf_counter()
    t.fit()
    wall = time.perf_counter() - t0
    second = t.history[-1]["train"]
    return {"images_per_s": second["images_per_second"], "train_s": second["seconds"],
            "fit_wall_s": wall, "epochs": len(t.history)}


def nccl_worker(rank: int, world: int, port: int, data: str, store: str, out: str, spec_kw: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from cxrjobs.specs.train import TrainSpec
    from cxrjobs.storage import LocalStore
    from cxrjobs.train.distributed import init_distributed, shutdown
    from cxrjobs.train.loop import Run, Trainer

    ctx = init_distributed(60)
    try:
        spec = TrainSpec(data=data, bootstrap=0, evaluate_test=False, **spec_kw)
        t = Trainer(spec, Run(LocalStore(store), "nccl"), ctx, log=lambda m: None)
        t.fit()
        if ctx.is_main:
            Path(out).write_text(json.dumps({"backend": ctx.backend, **t.history[-1]["train"]}))
    finally:
        shutdown(ctx)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict]) -> str:
    lines = [f"{'check':58s} {'value':>14s}  {'goal':>22s}  ok"]
    for r in rows:
        ok = {True: "yes", False: "NO", None: ""}[r["ok"]]
        lines.append(f"{r['name']:58s} {r['value']:>10,.2f} {r['unit']:3s}  {r['goal'] or '':>22s}  {ok}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results"))
    ap.add_argument("--cpu-smoke", action="store_true", help="run every step tiny on the CPU (checks the script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "gpu_check.json"
    started = time.time()
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "torch": torch.__version__,
           "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available() and not args.cpu_smoke:
        msg = (f"SKIPPED: no CUDA device here (torch {torch.__version__}, "
               f"torch.cuda.is_available() = False); run this on a machine with a GPU")
        print(msg)
        out_file.write_text(json.dumps({**doc, "skipped": msg, "rows": []}, indent=1))
        print(f"written to {out_file}")
        return 0

    smoke = args.cpu_smoke and not torch.cuda.is_available()
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    gpus = 0 if smoke else torch.cuda.device_count()
    card = "CPU (smoke run: numbers mean nothing)" if smoke else torch.cuda.get_device_name(0)
    doc.update(card=card, gpus=gpus, capability=None if smoke else list(torch.cuda.get_device_capability(0)))
    print(f"card: {card}; GPUs on this host: {gpus}", flush=True)
    size = 64 if smoke else 224
    n_train, n_val = (256, 64) if smoke else (16384, 1024)
    small_batch, big_batch = (64, 16) if smoke else (1024, 128)
    steps, warmup = (2, 1) if smoke else (20, 5)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        t0 = time.perf_counter()
        data = write_dataset(work / "data", size, n_train, n_val)
        doc["dataset"] = {"train": n_train, "val": n_val, "size": size, "write_s": round(time.perf_counter() - t0, 1)}
        print(f"dataset: {n_train} + {n_val} random images at {size} px ({doc['dataset']['write_s']} s)", flush=True)

        # 1. smallcnn 224: raw step vs end to end (0 and 4 loader workers), same batch
        small = dict(model="smallcnn", batch_size=small_batch, epochs=2)
        raw = raw_step_rate(trainer(data, work / "s", "raw", device, **small), device, steps, warmup)
        e2e = {w: end_to_end(trainer(data, work / "s", f"e2e-w{w}", device, loader_workers=w, **small))
               for w in (0, 4)}
        best_w = max(e2e, key=lambda w: e2e[w]["images_per_s"])
        ratio = e2e[best_w]["images_per_s"] / raw
        rows.append(dict(name=f"smallcnn {size} raw train step (batch {small_batch})", value=raw,
                         unit="i/s", goal=None, ok=None))
        for w, r in e2e.items():
            rows.append(dict(name=f"smallcnn {size} end to end, {w} loader workers", value=r["images_per_s"],
                             unit="i/s", goal=None, ok=None, details=r))
        rows.append(dict(name=f"smallcnn {size} end to end / raw step ({best_w} workers)", value=ratio, unit="x",
                         goal=f">= {E2E_GOAL}", ok=ratio >= E2E_GOAL))
        print(table(rows), flush=True)

        # 2. resnext50 224: bf16 + channels-last vs fp32, raw step on the same card
        big = dict(model="resnext50", batch_size=big_batch, epochs=1)
        rates = {}
        for label, kw in (("fp32", dict(precision="fp32", channels_last=False)),
                          ("bf16+channels_last", dict(precision="bf16", channels_last=True))):
            t = trainer(data, work / "r", label, device, **big, **kw)
            rates[label] = raw_step_rate(t, device, steps, warmup)
            del t
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(dict(name=f"resnext50 {size} raw train step {label} (batch {big_batch})",
                             value=rates[label], unit="i/s", goal=None, ok=None))
        speedup = rates["bf16+channels_last"] / rates["fp32"]
        h100 = any(k in card for k in ("H100", "H200", "GH200"))
        rows.append(dict(name="resnext50 bf16+channels-last / fp32", value=speedup, unit="x",
                         goal=f">= {BF16_GOAL}", ok=speedup >= BF16_GOAL))
        rows.append(dict(name="resnext50 bf16+channels-last (H100-class goal)", value=rates["bf16+channels_last"],
                         unit="i/s", goal=f">= {BF16_RATE_GOAL:,.0f}" if h100 else "(H100-class only)",
                         ok=(rates["bf16+channels_last"] >= BF16_RATE_GOAL) if h100 else None))

        # 3. two replicas over nccl, one per GPU (only with >= 2 GPUs)
        if gpus >= 2:
            import torch.multiprocessing as mp
            res = work / "nccl.json"
            mp.spawn(nccl_worker, args=(2, free_port(), str(data), str(work / "n"), str(res), small),
                     nprocs=2, join=True)
            got = json.loads(res.read_text())
            one = e2e[0]["images_per_s"]
            rows.append(dict(name=f"smallcnn {size} 2 replicas over {got['backend']} (global batch {small_batch})",
                             value=got["images_per_second"], unit="i/s", goal=None, ok=None, details=got))
            rows.append(dict(name="2 replicas / 1 replica (same global batch, 0 workers)",
                             value=got["images_per_second"] / one, unit="x", goal=None, ok=None))
        else:
            rows.append(dict(name="2-replica nccl", value=0.0, unit="", goal=None, ok=None,
                             skipped=f"{gpus} GPU(s) on this host; needs 2"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc.update(seconds=round(time.time() - started, 1), rows=rows)
    print(table(rows))
    out_file.write_text(json.dumps(doc, indent=1, default=str))
    print(f"{card}: {sum(r['ok'] is False for r in rows)} goals missed; {doc['seconds']} s; written to {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
