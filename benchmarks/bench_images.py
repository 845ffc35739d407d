"""Container images (issue 8, benchmarks 2 and 3): image sizes and build times of the CPU
variant, and the 2-container DDP run's throughput against the same run as 2 local processes.

Images are built offline as in tests/test_images.py (no registry here: a debootstrap base and a
wheelhouse). Both DDP runs read the same dataset from the same S3 server (moto, on the Docker
bridge's gateway), with the same model, batch, threads and epochs; throughput is what the
training loop records per epoch (best epoch, rank 0), runs interleaved over several rounds.
Skips, with its reason as the row, when no Docker engine can be had (dockerd needs root).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def row(name, value, unit, goal=None, ok=None, **details):
    return {"group": "images", "name": name, "value": float(value), "unit": unit, "goal": goal,
            "ok": ok, "details": details}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _train(name: str, replicas: int, per_rank: int, epochs: int) -> dict:
    return dict(name=name, replicas=replicas, backoff_limit=0, rendezvous_timeout=300,
                train=dict(data="datasets/bench-images", epochs=epochs, batch_size=per_rank * replicas,
                           threads=1, optimizer="sgd", lr=0.01, bootstrap=0, evaluate_test=False))


def _best_images_per_s(run: str) -> float:
    from cxrjobs import api
    return max(e["train"]["images_per_second"] for e in api.run_metrics(run))


def _torch_version() -> str:
    import torch
    return torch.__version__


def ddp_containers_vs_local(B, image: str, ds: Path, workdir: Path, rounds: int, epochs: int,
                            per_rank: int = 64, control: bool = True) -> list[dict]:
    from cxrjobs import api
    from cxrjobs.backends import get_backend
    from cxrjobs.jobs.resolve import resolve_job
    from cxrjobs.storage import join_key, open_store
    from cxrjobs.storage.sync import upload_dir

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import start_moto, stop_process

    net = f"cxrjobs-bench-{uuid.uuid4().hex[:6]}"
    gateway = B.network_create(net)
    proc, saved = None, dict(os.environ)
    try:
        proc, endpoint = start_moto(gateway, workdir / "moto-images.log")
        os.environ.update(CXRJOBS_STORE=f"s3://bench-{uuid.uuid4().hex[:8]}/runs", CXRJOBS_S3_ENDPOINT=endpoint,
                          CXRJOBS_S3_SECURE="0", CXRJOBS_S3_ACCESS_KEY="bench", CXRJOBS_S3_SECRET_KEY="bench-secret-0123",
                          CXRJOBS_STATE_DIR=str(workdir / "images-state"), NO_PROXY=gateway)
        os.environ.pop("CXRJOBS_CONFIG", None)
        store = open_store()
        upload_dir(ds, store, "datasets/bench-images", progress=False)
        secrets = {k: os.environ[k] for k in ("CXRJOBS_S3_ACCESS_KEY", "CXRJOBS_S3_SECRET_KEY")}
        stamp = time.strftime("%H%M%S")

        def in_containers(name: str, replicas: int) -> float:
            job = resolve_job("nih-train", None, _train(name, replicas, per_rank, epochs))
            store.put_text(join_key("runs", job.name, "spec.json"), job.model_dump_json(indent=1))
            if B.rendered_pod(job)[0]["containers"][0]["image"] != image:
                raise RuntimeError(f"the rendered pods run another image than {image}")
            names = B.start_containers(B.job_containers(job, net), secrets)
            try:
                codes = B.wait_containers(names, 1800)
                if set(codes) != {0}:
                    raise RuntimeError(f"container run {job.name} exited {codes}:\n"
                                       + B.container_logs(names[0])[-3000:])
            finally:
                B.remove_containers(names)
            return _best_images_per_s(job.name)

        def in_processes(name: str, replicas: int) -> float:
            job = resolve_job("nih-train", None, _train(name, replicas, per_rank, epochs))
            api.submit(job)
            st = get_backend().wait(job.name, timeout=1800, poll=0.2)
            if st.state != "Succeeded":
                raise RuntimeError(f"local run {job.name} {st.state}: {st.message}")
            return _best_images_per_s(job.name)

        # Interleaved, so each ratio compares runs made back to back (this VM's speed drifts). The
        # 1-replica pair is the control: it separates the images' torch build and container
        # overheads from the cost of DDP traffic between containers over the bridge.
        got = {k: [] for k in ("c2", "l2", "c1", "l1")}
        for r in range(rounds):
            got["c2"].append(in_containers(f"bi-c2-{stamp}-{r}", 2))
            got["l2"].append(in_processes(f"bi-l2-{stamp}-{r}", 2))
            if control:
                got["c1"].append(in_containers(f"bi-c1-{stamp}-{r}", 1))
                got["l1"].append(in_processes(f"bi-l1-{stamp}-{r}", 1))
        median = lambda xs: sorted(xs)[len(xs) // 2]
        ratios = [c / l for c, l in zip(got["c2"], got["l2"])]
        rows = [row(f"DDP 2 containers / 2 local processes, throughput (smallcnn 224, {per_rank}/replica, "
                    f"1 thread, median of {rounds})", median(ratios), "x", ">= 0.9", median(ratios) >= 0.9,
                    ratios=ratios, containers_images_per_s=got["c2"], local_images_per_s=got["l2"],
                    epochs=epochs, torch_containers=B.OFFLINE_TORCH[0], torch_local=_torch_version())]
        if control:
            ctl = [c / l for c, l in zip(got["c1"], got["l1"])]
            rows.append(row("control: 1 container / 1 local process, throughput (same job, 1 replica)",
                            median(ctl), "x", None, None, ratios=ctl, containers_images_per_s=got["c1"],
                            local_images_per_s=got["l1"]))
        return rows
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if proc:
            stop_process(proc)
        B.network_remove(net)


def run(quick: bool = False, workdir: Path = Path("benchmarks/results/work")) -> list[dict]:
    B = _load("cxrjobs_images_build", ROOT / "images" / "build.py")
    try:
        started = B.start_dockerd(workdir / "dockerd.log")
    except RuntimeError as e:
        return [row(f"skipped: no Docker engine ({str(e).splitlines()[0]})", 0, "", None, None)]
    try:
        t0 = time.perf_counter()
        B.offline_base()
        B.wheelhouse()
        prep = time.perf_counter() - t0
        # From scratch (every stage rebuilt) unless --quick, which times the engine's cache.
        built = B.build(offline=True, no_cache=not quick)
        how = "cached" if quick else "from scratch"
        rows = [row(f"image size: {r['image']} (CPU)", r["bytes"] / 1e6, "MB", None, None) for r in built]
        rows += [row(f"build time ({how}): {r['image']}", r["seconds"], "s", None, None) for r in built]
        rows.append(row("offline inputs: debootstrap base + wheelhouse (when not cached)", prep, "s"))
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import bench_train
        ds = bench_train.dataset(workdir, 600 if quick else 1200)
        image = next(r["image"] for r in built if r["target"] == "train")
        rows += ddp_containers_vs_local(B, image, ds, workdir, 1 if quick else 3, 2, control=not quick)
        return rows
    finally:
        B.stop_dockerd(started)
