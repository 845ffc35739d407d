"""`make demo`: phantom NIH data -> preprocessing job -> 2-replica DDP training on the local backend."""

from __future__ import annotations

from pathlib import Path

from cxrjobs import api
from cxrjobs.backends import get_backend
from cxrjobs.errors import CxrError
from cxrjobs.jobs.resolve import resolve_job
from cxrjobs.progress import console
from cxrjobs.storage import join_key, open_store


def run_demo(out: Path, count: int = 1200, size: int = 224, replicas: int = 2, epochs: int = 8) -> dict:
    from cxrjobs.data.synth import synth_nih

    raw = out / "phantom-nih"
    if not (raw / "Data_Entry_2017.csv").exists():
        console.print(f"[bold]1/3[/] writing {count} phantom NIH-layout images to {raw}")
        console.print(synth_nih(raw, count, size=512, seed=0, workers=2).line())
    else:
        console.print(f"[bold]1/3[/] phantom data already in {raw}")
    store = open_store()
    dataset = f"datasets/demo-nih-{size}"
    backend = get_backend("local")
    if not store.exists(join_key(dataset, "manifest.json")):
        console.print(f"[bold]2/3[/] preprocessing job ({replicas} replicas) -> {store.url}/{dataset}")
        job = resolve_job("preprocess", None, {"replicas": replicas, "preprocess": {
            "output": dataset, "spec": {"source": str(raw.resolve()), "format": "nih", "size": size,
                                           "shard_size": 256}}})  # several shards, so both replicas work
        _run(backend, job)
    else:
        console.print(f"[bold]2/3[/] dataset already preprocessed: {store.url}/{dataset}")
    console.print(f"[bold]3/3[/] nih-train: smallcnn, {replicas} replicas (DDP over gloo), {epochs} epochs")
    job = resolve_job("nih-train", None, {"replicas": replicas, "train": {
        "data": dataset, "model": "smallcnn", "epochs": epochs, "batch_size": 64, "lr": 1e-3,
        "optimizer": "adam"}})
    _run(backend, job)
    return api.run_status(job.name)


def _run(backend, job) -> None:
    api.submit(job)
    for line in backend.logs(job.name, replica=0, follow=True):
        print(line, end="", flush=True)
    st = backend.status(job.name)
    if st.state != "Succeeded":
        raise CxrError(f"demo step {job.name} ended {st.state}: {st.message}; "
                       f"see `cxrjobs logs {job.name}`")
