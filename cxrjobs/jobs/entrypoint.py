"""What every replica runs, in a local process or a pod: `python -m cxrjobs.jobs.entrypoint`.

Everything comes from the environment (CXRJOBS_RUN_ID, the store settings, the rank variables),
so the command line is identical across backends and holds no secret.
"""

from __future__ import annotations

import os
import sys

from cxrjobs.errors import CxrError, RendezvousTimeout
from cxrjobs.jobs.registry import get_kind
from cxrjobs.jobs.spec import JobSpec
from cxrjobs.storage import ObjectStore, join_key, open_store


def load_job(store: ObjectStore, run_id: str) -> JobSpec:
    key = join_key("runs", run_id, "spec.json")
    if not store.exists(key):
        raise CxrError(f"no job spec at {store.url}/{key}")
    return JobSpec.model_validate_json(store.get_text(key))


def main() -> int:
    try:
        store = open_store()
        run_id = os.environ.get("CXRJOBS_RUN_ID")
        if not run_id:
            raise CxrError("CXRJOBS_RUN_ID is not set; replicas are started by `cxrjobs submit`")
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
