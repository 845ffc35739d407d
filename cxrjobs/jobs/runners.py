"""Replica functions of the job kinds registered in cxrjobs.jobs.registry."""

from __future__ import annotations

import time

from cxrjobs.jobs.spec import JobSpec
from cxrjobs.storage import ObjectStore


def log(msg: str) -> None:
    print(msg, flush=True)


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
    from cxrjobs.train.rank import rank_from_env

    index, count = rank_from_env()
    p = job.preprocess
    res = run_slice(p.spec, store, p.output, p.workers, index, count, show_progress=False,
                    overwrite=p.overwrite, wait=job.rendezvous_timeout)
    log(f"slice {index}/{count}: {res.shards_done} shards written, {res.shards_skipped} already done, "
        f"{res.images} images, {res.rejected} rejected in {res.seconds:.1f}s")
    # Whoever finishes last sees every shard and merges; a merge by two slices writes the same files.
    if not missing_shards(store, p.output):
        m = merge(store, p.output)
        log(f"merged {m['num_shards']} shards: {m['images']} images, {m['rejected']} rejected -> "
            f"{store.url}/{p.output}")
