"""What every replica runs, in a local process or a pod: `python -m cxrjobs.jobs.entrypoint`.

Everything comes from the environment (CXRJOBS_RUN_ID, the store settings, the rank variables),
so the command line is identical across backends and holds no secret.
"""

from __future__ import annotations

import json
import os
import sys
import time

from cxrjobs.errors import CxrError
from cxrjobs.jobs.spec import JobSpec
from cxrjobs.storage import ObjectStore, join_key, open_store


def log(msg: str) -> None:
    print(msg, flush=True)


def load_job(store: ObjectStore, run_id: str) -> JobSpec:
    key = join_key("runs", run_id, "spec.json")
    if not store.exists(key):
        raise CxrError(f"no job spec at {store.url}/{key}")
    return JobSpec.model_validate_json(store.get_text(key))


def run_train(job: JobSpec, store: ObjectStore) -> None:
    from cxrjobs.train.distributed import init_distributed, shutdown
    from cxrjobs.train.loop import Run, Trainer

    t0 = time.perf_counter()
    ctx = init_distributed(job.rendezvous_timeout)
    log(f"rank {ctx.rank}/{ctx.world_size}: rendezvous done in {time.perf_counter() - t0:.2f}s "
        f"({ctx.backend or 'single process'}, {ctx.device})")
    try:
        Trainer(job.train, Run(store, job.name), ctx, log=log).fit()
    finally:
        shutdown(ctx)


def run_preprocess(job: JobSpec, store: ObjectStore) -> None:
    from cxrjobs.data.preprocess import merge, missing_shards, run_slice
    from cxrjobs.train.distributed import rank_from_env

    index, count = rank_from_env()
    p = job.preprocess
    res = run_slice(p.spec, store, p.output, p.workers, index, count, show_progress=False)
    log(f"slice {index}/{count}: {res.shards_done} shards written, {res.shards_skipped} already done, "
        f"{res.images} images, {res.rejected} rejected in {res.seconds:.1f}s")
    # Whoever finishes last sees every shard and merges; a merge by two slices writes the same files.
    if not missing_shards(store, p.output):
        m = merge(store, p.output)
        log(f"merged {m['num_shards']} shards: {m['images']} images, {m['rejected']} rejected -> "
            f"{store.url}/{p.output}")


def main() -> int:
    try:
        store = open_store()
        run_id = os.environ.get("CXRJOBS_RUN_ID")
        if not run_id:
            raise CxrError("CXRJOBS_RUN_ID is not set; replicas are started by `cxrjobs submit`")
        job = load_job(store, run_id)
        {"nih-train": run_train, "preprocess": run_preprocess}[job.kind](job, store)
        return 0
    except CxrError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
