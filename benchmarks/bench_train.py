"""Training benchmarks: data stall, DDP scaling, 10 replicas on this machine, step throughput.

Multi-replica numbers come from real runs on the local backend (separate processes, gloo);
throughput is what the training loop itself records per epoch (images / rank-0 seconds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch


def row(name, value, unit, goal=None, ok=None, **details):
    return {"group": "train", "name": name, "value": float(value), "unit": unit, "goal": goal,
            "ok": ok, "details": details}


def dataset(workdir: Path, count: int) -> Path:
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.data.synth import synth_nih
    from cxrjobs.storage import LocalStore

    out = workdir / f"train-ds-224-{count}"
    if not (out / "manifest.json").exists():
        raw = workdir / f"train-raw-{count}"
        if not (raw / "Data_Entry_2017.csv").exists():
            shutil.rmtree(raw, ignore_errors=True)  # an interrupted set: synth needs an empty folder
            synth_nih(raw, count, size=256, seed=3, special=False, workers=2)
        preprocess(PreprocessSpec(source=str(raw), format="nih", size=224), LocalStore(out), "",
                   workers=2, show_progress=False)
    return out


def data_stall(ds: Path, workdir: Path, batches: int) -> list[dict]:
    from cxrjobs.storage import LocalStore
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import Run, Trainer
    from cxrjobs.specs.train import TrainSpec
    from torch.utils.data import DataLoader, RandomSampler

    from cxrjobs.data.shards import passthrough

    spec = TrainSpec(data=str(ds), batch_size=64, optimizer="sgd", lr=0.01)
    t = Trainer(spec, Run(LocalStore(workdir / "store"), "bench-stall"),
                DistContext(0, 1, torch.device("cpu"), None), log=lambda m: None)
    train = t.data["train"]
    sampler = RandomSampler(train, replacement=True, num_samples=64 * batches,
                            generator=torch.Generator().manual_seed(0))
    loader = lambda: DataLoader(train, batch_size=64, sampler=sampler, collate_fn=passthrough)
    in_memory = [b for b in loader()]
    gen = torch.Generator().manual_seed(0)
    for x, y in in_memory[:3]:
        t.step(x, y, gen)  # warm-up
    best_loader = best_mem = 0.0
    for _ in range(3):  # alternate, keep the best of each: another process may share the cores
        t0 = time.perf_counter()
        for x, y in loader():
            t.step(x, y, gen)
        best_loader = max(best_loader, 64 * batches / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for x, y in in_memory:
            t.step(x, y, gen)
        best_mem = max(best_mem, 64 * batches / (time.perf_counter() - t0))
    ratio = best_loader / best_mem
    return [row("data stall: shard loader / in-memory batches (smallcnn 224, batch 64)", ratio, "x",
                ">= 0.95", ratio >= 0.95, loader_images_per_s=best_loader, in_memory_images_per_s=best_mem,
                threads=torch.get_num_threads())]


def run_job(name: str, ds: Path, replicas: int, per_rank: int, epochs: int, timeout: float = 1800):
    from cxrjobs import api
    from cxrjobs.backends import get_backend
    from cxrjobs.jobs.resolve import resolve_job

    job = resolve_job("nih-train", None, dict(
        name=name, replicas=replicas, backoff_limit=0, rendezvous_timeout=600,
        train=dict(data=str(ds), epochs=epochs, batch_size=per_rank * replicas, threads=1,
                   optimizer="sgd", lr=0.01, bootstrap=0, evaluate_test=False)))
    t0 = time.perf_counter()
    api.submit(job)
    st = get_backend().wait(name, timeout=timeout, poll=0.2)
    wall = time.perf_counter() - t0
    if st.state != "Succeeded":
        raise RuntimeError(f"benchmark run {name} {st.state}: {st.message}")
    return job, api.run_metrics(name), wall


def rendezvous_seconds(run: str) -> list[float]:
    from cxrjobs.config import load_settings
    logs = (load_settings().local_state / run / "logs").glob("replica-*.log")
    return [float(m) for p in logs for m in re.findall(r"rendezvous done in ([0-9.]+)s", p.read_text())]


def ddp_scaling(ds: Path, stamp: str, rounds: int, per_rank: int = 64) -> list[dict]:
    """1 x 1 thread and 2 x 1 thread, interleaved for several rounds: this VM's speed drifts by
    +-15 % over minutes, so each round's ratio compares runs made back to back."""
    ratios, ones, twos = [], [], []
    for r in range(rounds):
        _, m1, _ = run_job(f"bench-ddp1-{stamp}-{r}", ds, 1, per_rank, 2)
        _, m2, _ = run_job(f"bench-ddp2-{stamp}-{r}", ds, 2, per_rank, 2)
        one = max(e["train"]["images_per_second"] for e in m1)
        two = max(e["train"]["images_per_second"] for e in m2)
        ones.append(one)
        twos.append(two)
        ratios.append(two / one)
    ratio = sorted(ratios)[len(ratios) // 2]
    return [row(f"DDP scaling: 2 replicas x 1 thread / 1 x 1 (smallcnn 224, {per_rank}/replica, "
                f"median of {rounds})", ratio, "x", ">= 1.8", ratio >= 1.8, ratios=ratios,
                one_replica_images_per_s=ones, two_replicas_images_per_s=twos)]


def ten_replicas(ds: Path, stamp: str, epochs: int) -> list[dict]:
    job, m, wall = run_job(f"bench-r10-{stamp}", ds, 10, 16, epochs)
    rdv = rendezvous_seconds(job.name)
    per_epoch = [r["train"]["seconds"] for r in m]
    return [row("--replicas 10 on this machine: train time per epoch (smallcnn 224)", min(per_epoch), "s",
                "completes", True, epochs=len(m), per_epoch_seconds=per_epoch, wall_seconds=wall,
                images_per_s=m[-1]["train"]["images_per_second"]),
            row("--replicas 10: rendezvous time (slowest replica)", max(rdv), "s", None, None,
                per_replica=sorted(rdv))]


def step_throughput(quick: bool) -> list[dict]:
    from cxrjobs.models import build_model

    torch.set_num_threads(1)
    rows = []
    for model, size, batch in (("smallcnn", 224, 32), ("smallcnn", 512, 16), ("resnext50", 224, 8)):
        net = build_model(model, 14, size)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, 1, size, size)
        y = (torch.rand(batch, 14) < 0.2).float()
        steps = 2 if quick else (3 if model == "resnext50" else 6)

        def step():
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
            opt.step()
        step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rows.append(row(f"train step {model} {size}px, 1 core", batch * steps / (time.perf_counter() - t0),
                        "img/s/core", None, None, batch=batch, steps=steps))
    return rows


def run(quick: bool = False, workdir: Path = Path("benchmarks/results/work")) -> list[dict]:
    os.environ["CXRJOBS_STORE"] = str((workdir / "store").resolve())
    os.environ.pop("CXRJOBS_STATE_DIR", None)
    stamp = time.strftime("%H%M%S")
    ds = dataset(workdir, 600 if quick else 1500)
    rows = data_stall(ds, workdir, 10 if quick else 30)
    rows += ddp_scaling(ds, stamp, 1 if quick else 3)
    rows += ten_replicas(ds, stamp, 1 if quick else 2)
    rows += step_throughput(quick)
    return rows


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
