"""What every replica runs, in a local process or a pod: `python -m cxrjobs.jobs.entrypoint`.

Everything comes from the environment (CXRJOBS_RUN_ID, the store settings, the rank variables),
so the command line is identical across backends and holds no secret.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from cxrjobs.config import SECRET_ENV
from cxrjobs.errors import CxrError, RendezvousTimeout
from cxrjobs.jobs.logmirror import ENV_FLAG, StoreLogMirror
from cxrjobs.jobs.registry import get_kind
from cxrjobs.jobs.spec import JobSpec
from cxrjobs.storage import ObjectStore, join_key, open_store


def load_job(store: ObjectStore, run_id: str) -> JobSpec:
    key = join_key("runs", run_id, "spec.json")
    if not store.exists(key):
        raise CxrError(f"no job spec at {store.url}/{key}")
    return JobSpec.model_validate_json(store.get_text(key))


ENV_READ = ("CXRJOBS_RUN_ID", "CXRJOBS_STORE", "CXRJOBS_S3_ENDPOINT", "CXRJOBS_S3_SECURE",
            *SECRET_ENV, "CXRJOBS_CACHE_DIR", "JOB_COMPLETION_INDEX", "RANK", "WORLD_SIZE",
            "MASTER_ADDR", "MASTER_PORT", "CXRJOBS_DIST_BACKEND", "OMP_NUM_THREADS")
HELP = """usage: python -m cxrjobs.jobs.entrypoint [--help]

Runs one replica of a cxrjobs job (the command of every local process and every pod; containers
use it as their entrypoint). It takes no arguments: it reads the environment, loads the job's
spec from runs/$CXRJOBS_RUN_ID/spec.json in the store and runs that job kind's replica function.

Environment:
  CXRJOBS_RUN_ID         the run (job name) whose spec to load                         [required]
  CXRJOBS_STORE          the object store: s3://BUCKET/PREFIX or a local folder
  CXRJOBS_S3_ENDPOINT    host:port of the S3/MinIO server (for s3:// stores)
  CXRJOBS_S3_SECURE      1 for https, 0 for http
  CXRJOBS_S3_ACCESS_KEY, CXRJOBS_S3_SECRET_KEY
                         S3 credentials (on Kubernetes from a Secret; never on a command line)
  CXRJOBS_CACHE_DIR      where store objects are cached (default $XDG_CACHE_HOME/cxrjobs)
  JOB_COMPLETION_INDEX   this replica's index (set by the Indexed Job controller), or RANK
  WORLD_SIZE             number of replicas
  MASTER_ADDR, MASTER_PORT
                         replica 0's address for the torch.distributed rendezvous
  CXRJOBS_DIST_BACKEND   override the collective backend (gloo | nccl)
  OMP_NUM_THREADS        threads per replica

Exit status: 0 done, 2 a user error (bad spec, data or settings: not retried), 3 a rendezvous
timeout (a peer late or lost: retried), else a crash.
Example: CXRJOBS_RUN_ID=nih-train-1 CXRJOBS_STORE=s3://cxr/runs CXRJOBS_S3_ENDPOINT=minio:9000 \\
           python -m cxrjobs.jobs.entrypoint"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--help"], ["-h"]):
        print(HELP)
        print("\nIn this environment:")
        for name in ENV_READ:
            value = os.environ.get(name)
            shown = "(unset)" if value is None else "(set, hidden)" if name in SECRET_ENV else value
            print(f"  {name}={shown}")
        return 0
    if args:
        print(f"error: unexpected arguments {args}; the entrypoint reads only its environment "
              "(see --help)", file=sys.stderr)
        return 2
    try:
        store = open_store()
        run_id = os.environ.get("CXRJOBS_RUN_ID")
        if not run_id:
            raise CxrError("CXRJOBS_RUN_ID is not set; replicas are started by `cxrjobs submit`")
    except CxrError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if os.environ.get(ENV_FLAG) != "1":
        return _run(store, run_id)
    # In a pod: its log would go with it (after the Job's TTL, or when a crash replaces the pod).
    replica = os.environ.get("JOB_COMPLETION_INDEX") or os.environ.get("RANK") or "0"
    # The kubelet stops a pod with SIGTERM: end through Python so the log's last part is uploaded.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with StoreLogMirror(store, run_id, replica):
        try:
            return _run(store, run_id)
        except Exception:  # the traceback belongs in the mirrored log, not after it
            traceback.print_exc()
            return 1


def _run(store: ObjectStore, run_id: str) -> int:
    try:
        job = load_job(store, run_id)
        get_kind(job.kind).load_runner()(job, store)
        return 0
    except RendezvousTimeout as e:  # a peer late or lost: transient, the Job's back-off retries it
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 3
    except CxrError as e:  # the user's spec or data: exit 2, which backends do not retry
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
