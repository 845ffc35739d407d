"""Library API behind the CLI: submit a job, and look at runs."""

from __future__ import annotations

import json

from cxrjobs.backends import get_backend
from cxrjobs.backends.base import JobStatus, SubmitPlan
from cxrjobs.backends.states import RunState
from cxrjobs.errors import ConfigError, CxrError
from cxrjobs.jobs.preflight import check_job
from cxrjobs.jobs.spec import JobSpec
from cxrjobs.storage import LocalStore, ObjectStore, join_key, open_store


def submit(job: JobSpec, backend: str = "local", dry_run: bool = False,
           store: ObjectStore | None = None, kube=None) -> SubmitPlan | JobStatus:
    """Store the resolved spec as runs/<name>/spec.json (the replicas read it), then schedule.
    Re-submitting the same spec under the same name continues that run from its checkpoint.
    `kube`: KubeOptions for the kubernetes backend."""
    be = get_backend(backend, kube)
    plan = be.submit_dryrun(job)
    if dry_run:
        return plan
    store = store or open_store()
    if be.needs_shared_store and isinstance(store, LocalStore):
        raise ConfigError(f"the {be.name} backend's pods cannot read the local store {store.url}: set "
                          "CXRJOBS_STORE=s3://BUCKET/PREFIX and CXRJOBS_S3_ENDPOINT to the MinIO/S3 "
                          "store the cluster's ConfigMap names (upload data with `cxrjobs data upload`)")
    be.preflight(store)
    check_job(job, store)  # configuration errors fail here, not in every replica
    key = join_key("runs", job.name, "spec.json")
    text = job.model_dump_json(indent=1)
    with be.lock(job.name):  # of two concurrent submits of one run, exactly one starts it
        if store.exists(key):
            old = JobSpec.model_validate_json(store.get_text(key))
            if old.kind != job.kind:
                raise CxrError(f"run {job.name} exists as a {old.kind} run ({store.url}/{key}); this is a "
                               f"{job.kind} job: pick another --name")
            diffs = spec_diff(old.model_dump(mode="json"), job.model_dump(mode="json"))
            if diffs and all(k in RETRY_SETTINGS for k, _, _ in diffs):
                store.put_text(key, text)  # e.g. a run failed on its backoff limit, resumed with a higher one
            elif diffs:
                raise CxrError(f"run {job.name} exists with a different spec ({store.url}/{key}; {describe_diffs(diffs)}); "
                               "pick another --name, or resubmit the same spec to resume it")
        else:
            store.put_text(key, text)
        return be.schedule(plan)


# How a run is retried, not what it computes: a resubmission may change them.
RETRY_SETTINGS = ("backoff_limit", "rendezvous_timeout")


def spec_diff(old, new, path: str = "") -> list[tuple[str, object, object]]:
    """(dotted field, old value, new value) for each field that differs between two specs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in spec_diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    return [] if old == new else [(path, old, new)]


def describe_diffs(diffs: list[tuple[str, object, object]], most: int = 6) -> str:
    """'train.epochs: 3 then, 4 now, ...': the differences an error names."""
    return ", ".join(f"{k}: {a!r} then, {b!r} now" for k, a, b in diffs[:most])


def run_metrics(run: str, store: ObjectStore | None = None) -> list[dict]:
    return (store or open_store()).get_jsonl(join_key("runs", run, "metrics.jsonl"))


def wait(run: str, backend: str = "local", kube=None, timeout: float | None = None) -> dict:
    """Block until the run ends; its final run_status."""
    get_backend(backend, kube).wait(run, timeout=timeout)
    return run_status(run, backend, kube)


def run_status(run: str, backend: str = "local", kube=None) -> dict:
    """Backend state plus training progress (epoch, last metrics) from the store."""
    store = open_store()
    try:
        st = get_backend(backend, kube).status(run).to_dict()
    except CxrError:
        st = _exported_status(run, backend, store)
        if st is None:
            raise
    metrics = run_metrics(run, store)
    if metrics:
        last = metrics[-1]
        st["epoch"] = last["epoch"]
        st["last_metrics"] = {"train_loss": last["train"]["loss"], "val": last["val"]}
        best = [m["epoch"] for m in metrics if m.get("best")]
        if best:  # the epoch of best.pt, which the test split scores (not always the last one)
            st["best_epoch"] = best[-1]
    tune_key = join_key("runs", run, "tune_status.json")  # a search: trial counts, best so far
    if store.exists(tune_key):
        st["tune"] = json.loads(store.get_text(tune_key))
    result_key = join_key("runs", run, "artifacts", "result.json")
    if store.exists(result_key):
        st["result"] = json.loads(store.get_text(result_key))
    st["artifacts"] = f"{store.url}/{join_key('runs', run)}"
    _point_at_evaluation(st, run, store)
    return st


def _exported_status(run: str, backend: str, store: ObjectStore) -> dict | None:
    """A search's best trial, exported as a run (NAME-best): it has no process or Job of its
    own, so the backend does not know it; its store record says it is finished."""
    try:
        result = json.loads(store.get_text(join_key("runs", run, "artifacts", "result.json")))
    except Exception:
        return None
    if not result.get("tuned_by"):
        return None
    return JobStatus(run=run, state=RunState.SUCCEEDED, backend=backend, kind="train",
                     message=f"the best trial of search {result['tuned_by']}, exported when it ended").to_dict()


def _point_at_evaluation(st: dict, run: str, store: ObjectStore) -> None:
    """An evaluate job writes into the run it scores (runs/RUN/eval/NAME/), not under its own id:
    its status points there and carries the results' headline. A preprocess job's output is its
    dataset."""
    try:
        spec = json.loads(store.get_text(join_key("runs", run, "spec.json")))
    except Exception:
        return
    if spec.get("kind") == "preprocess" and (spec.get("preprocess") or {}).get("output"):
        st["artifacts"] = f"{store.url}/{spec['preprocess']['output']}"
        return
    ev = spec.get("evaluate") if spec.get("kind") == "evaluate" else None
    if not ev:
        return
    prefix = join_key("runs", ev["run"], "eval", ev.get("name") or ev.get("split") or "test")
    st["artifacts"] = f"{store.url}/{prefix}"
    if store.exists(join_key(prefix, "results.json")):
        st["evaluation"] = json.loads(store.get_text(join_key(prefix, "results.json")))


def collect_run(run: str, dest: str, checkpoints: bool = False, workers: int = 8,
                progress: bool = True, store: ObjectStore | None = None) -> dict:
    """Download a run's artifacts (spec, metrics, results, evaluation plots, reports, logs; the
    checkpoints only when asked) from the store into `dest`, each verified by sha256, and write
    `dest/SHA256SUMS`. Files already there with a matching checksum are skipped, so a rerun only
    fetches what is missing or changed."""
    from pathlib import Path

    from cxrjobs.jobs.spec import check_run_name
    from cxrjobs.storage.sync import MANIFEST, download_prefix

    try:
        check_run_name(run)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    store = store or open_store()
    prefix = join_key("runs", run)
    if next(iter(store.list(prefix)), None) is None:
        raise CxrError(f"no run {run!r}: {store.nothing_under(prefix + '/')}")  # names a missing bucket
    try:
        Path(dest).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file of that name, or a parent that is a file or read-only
        raise ConfigError(f"-o {dest}: cannot make this folder ({e.strerror or e}); give a folder to fill, "
                          "new or one that collect filled before") from None

    def include(rel: str) -> bool:
        return checkpoints or not rel.startswith("checkpoints/")

    summary = download_prefix(store, prefix, dest, workers=workers, progress=progress,
                              include=include, verify=True)
    root = Path(dest)
    manifest = json.loads((root / MANIFEST).read_text())
    files = sorted(rel for rel in manifest if include(rel))
    sums = "".join(f"{manifest[rel]['sha256']}  {rel}\n" for rel in files)
    (root / "SHA256SUMS").write_text(sums)
    skipped_ckpt = 0 if checkpoints else sum(1 for o in store.list(join_key(prefix, "checkpoints")))
    return {"run": run, "source": f"{store.url}/{prefix}", "dest": str(root.resolve()),
            "files": len(files), "downloaded": summary.transferred, "already_there": summary.skipped,
            "bytes": summary.bytes, "seconds": round(summary.seconds, 3),
            "checkpoints_skipped": skipped_ckpt, "checksums": str((root / "SHA256SUMS").resolve()),
            "summary": summary.line()}
