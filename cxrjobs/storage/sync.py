"""Copy directory trees to and from an object store: parallel, resumable, atomic per file.

An object counts as already transferred when its size and sha256 match, so a sync that was
interrupted (Ctrl-C, a killed pod) is simply run again and picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from cxrjobs.errors import StoreError
from cxrjobs.progress import bar as progress_bar
from cxrjobs.storage.base import ObjectStore, check_key, human_bytes, join_key, sha256_file
from cxrjobs.storage.local import atomic_write_bytes, walk_dirs

MANIFEST = ".cxrjobs-sync.json"


@dataclass
class SyncSummary:
    transferred: int
    skipped: int
    bytes: int  # bytes actually transferred (skipped objects not counted)
    seconds: float

    def line(self) -> str:
        rate = self.bytes / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.transferred} transferred ({human_bytes(self.bytes)}, {human_bytes(rate)}/s), "
                f"{self.skipped} already up to date, in {self.seconds:.1f} s")


def _skip_local(name: str) -> bool:
    # In-flight atomic writes and our own manifest are not data.
    return (name.startswith(".") and name.endswith(".tmp")) or name == MANIFEST


def _run(jobs: Iterable, work: Callable, workers: int, bar) -> tuple[int, int, int]:
    """Run `work(job) -> (transferred: bool, nbytes)` in parallel. The first failure stops the
    remaining jobs (`stop` also stops those a worker would pick up before we can cancel them)
    and is re-raised; finished transfers stay, so a rerun resumes."""
    stop = threading.Event()
    done = [0, 0, 0]

    def guarded(job):
        if stop.is_set():
            return None
        try:
            return work(job)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(guarded, j) for j in jobs]
        try:
            for fut in as_completed(futures):
                res = fut.result()
                if res is None:
                    continue
                moved, nbytes = res
                done[0 if moved else 1] += 1
                done[2] += nbytes if moved else 0
                bar.advance(nbytes)
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise
    return done[0], done[1], done[2]


DATASET_AREAS = ("datasets", "raw")  # preprocessed datasets, raw dataset folders


def dataset_prefix(name: str) -> str:
    """`NAME` -> datasets/NAME; `datasets/NAME` and `raw/NAME` as given (the store layout)."""
    area, sep, rest = name.strip().partition("/")
    if not sep:
        area, rest = "datasets", area
    if area not in DATASET_AREAS or not rest.strip("/"):
        raise StoreError(f"dataset name {name!r}: use NAME or datasets/NAME for a preprocessed dataset, "
                         "raw/NAME for a raw dataset folder")
    return check_key(f"{area}/{rest}")


def check_upload(local_dir: str | Path, store: ObjectStore, prefix: str) -> None:
    """Refuse an upload that would leave a mixed dataset under `prefix`: a folder that is no
    preprocessed dataset sent to datasets/, another dataset's objects (a different plan.json, or
    objects this folder does not have) already there. An interrupted upload of the same folder
    passes: what is there is a part of what it sends."""
    root = Path(local_dir)
    local = {(Path(d) / n).relative_to(root).as_posix()
             for d, names in walk_dirs(root) for n in names if not _skip_local(n)}
    if not local:
        raise StoreError(f"cannot upload {root}: it holds no files")
    if prefix.startswith("datasets/") and "manifest.json" not in local:
        raise StoreError(f"cannot upload {root} to {prefix}: it has no manifest.json, so it is no preprocessed "
                         f"dataset. Upload a raw folder with --name raw/{prefix.split('/', 1)[1]} (then `cxrjobs "
                         "submit preprocess store://raw/NAME ...`), or preprocess it first")
    there = {o.key[len(prefix) + 1:] for o in store.list(prefix + "/")}
    plan = join_key(prefix, "plan.json")
    other = ("plan.json" in local and "plan.json" in there
             and json.loads((root / "plan.json").read_text()) != json.loads(store.get_text(plan)))
    extra = sorted(there - local)
    if other or extra:
        why = ("a dataset preprocessed with other options (plan.json differs)" if other else
               f"{len(extra)} object(s) this folder does not have (e.g. {extra[0]})")
        raise StoreError(f"{store.url}/{prefix} already holds {why}: uploading {root} there would mix two "
                         "datasets. Pick another --name, or delete that prefix from the store first")


def upload_dir(local_dir: str | Path, store: ObjectStore, prefix: str, workers: int = 8,
               progress: bool = True, on_object: Callable[[str], None] | None = None) -> SyncSummary:
    """Upload every file under `local_dir` to `prefix/<relative path>`. `on_object(key)` is
    called (in a worker thread) after each upload; an exception from it aborts the sync."""
    root = Path(local_dir)
    if not root.is_dir():
        raise StoreError(f"cannot upload {root}: not a directory")
    files = sorted(Path(d) / n for d, names in walk_dirs(root) for n in names if not _skip_local(n))
    jobs = [(p, join_key(prefix, p.relative_to(root).as_posix()), p.stat().st_size) for p in files]

    def push(job) -> tuple[bool, int]:
        path, key, size = job
        info = store.stat(key)
        if info is not None and info.size == size:
            remote = info.sha256 or store.checksum(key)
            if remote is not None and remote == sha256_file(path):
                return False, size
        store.put_file(key, path)
        if on_object is not None:
            on_object(key)
        return True, size

    t0 = time.monotonic()
    with progress_bar(sum(j[2] for j in jobs), f"upload {root.name or root}", progress, in_bytes=True) as bar:
        moved, skipped, nbytes = _run(jobs, push, workers, bar)
    return SyncSummary(moved, skipped, nbytes, time.monotonic() - t0)


def download_prefix(store: ObjectStore, prefix: str, dest_dir: str | Path, workers: int = 8,
                    progress: bool = True, include: Callable[[str], bool] | None = None,
                    verify: bool = False) -> SyncSummary:
    """Download every object under `prefix` to `dest_dir/<key relative to prefix>` (an object
    named exactly `prefix` lands at `dest_dir/<its last segment>`). `include(relative path)`
    selects objects; `verify` checks each downloaded file's sha256 against the store's."""
    dest = Path(dest_dir)
    want = check_key(prefix) if prefix.strip("/") else ""
    manifest_path = dest / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            manifest = {}
    except (OSError, ValueError):
        manifest = {}  # missing or damaged: it is only a cache, rebuilt by hashing
    lock = threading.Lock()
    jobs = []
    for obj in store.list(want):
        if not want:
            rel = obj.key
        elif obj.key == want:
            rel = obj.key.rsplit("/", 1)[-1]
        else:
            rel = obj.key[len(want) + 1:]
        if include is not None and not include(rel):
            continue
        jobs.append((obj, check_key(rel)))  # a foreign key with '..' must not escape dest
    dest.mkdir(parents=True, exist_ok=True)

    def local_sha(rel: str, path: Path, st: os.stat_result) -> str:
        # Hashing a multi-GB shard on every job start is what the manifest is for.
        entry = manifest.get(rel)
        if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime_ns:
            return entry["sha256"]
        return sha256_file(path)

    def pull(job) -> tuple[bool, int]:
        obj, rel = job
        path = dest / rel
        remote = obj.sha256
        st = path.stat() if path.is_file() else None
        if st is not None and st.st_size == obj.size:
            sha = local_sha(rel, path, st)
            # Unknown remote hash (object written by another tool): re-download to be safe.
            remote = remote or store.checksum(obj.key)
            if remote is not None and sha == remote:
                with lock:
                    manifest[rel] = {"size": st.st_size, "sha256": sha, "mtime": st.st_mtime_ns}
                return False, obj.size
        store.get_file(obj.key, path)
        st = path.stat()
        got = sha256_file(path) if verify or not remote else remote
        if verify:
            remote = remote or store.checksum(obj.key)
            if remote is not None and got != remote:
                path.unlink(missing_ok=True)
                raise StoreError(f"{obj.key}: downloaded sha256 {got[:12]}... does not match the "
                                 f"store's {remote[:12]}...; the object changed or the transfer was "
                                 "corrupted; run again")
        with lock:
            manifest[rel] = {"size": st.st_size, "sha256": got, "mtime": st.st_mtime_ns}
        return True, st.st_size

    t0 = time.monotonic()
    try:
        with progress_bar(sum(o.size for o, _ in jobs), f"download {want or store.url}", progress,
                          in_bytes=True) as bar:
            moved, skipped, nbytes = _run(jobs, pull, workers, bar)
    finally:
        # Saved even after a failure, so the files that did arrive are not re-hashed next time.
        with lock:
            keep = {k: v for k, v in manifest.items() if (dest / k).is_file()}
        atomic_write_bytes(manifest_path, json.dumps(keep, indent=0, sort_keys=True).encode())
    return SyncSummary(moved, skipped, nbytes, time.monotonic() - t0)


def materialize(store: ObjectStore, prefix: str, cache_dir: str | Path, *,
                progress: bool = False) -> Path:
    """A local path holding the objects under `prefix`, for jobs that memory-map datasets:
    the store's own files when it is a local directory, else a synced cache copy."""
    here = store.local_path(prefix)
    if here is not None:
        if not here.exists():
            raise store.nothing_under(prefix)
        return here
    want = check_key(prefix)
    target = Path(cache_dir) / re.sub(r"[^A-Za-z0-9._-]+", "_", store.url).strip("_") / want
    single = store.stat(want) is not None  # a one-object prefix materializes as that file
    summary = download_prefix(store, want, target.parent if single else target, progress=progress)
    if summary.transferred + summary.skipped == 0:
        raise store.nothing_under(prefix)  # on S3 it names a bucket that does not exist
    return target
