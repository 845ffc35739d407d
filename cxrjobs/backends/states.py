"""Run states, and the explicit tables that map each backend's native status onto them.

One enum for every backend, so `cxrjobs status` and `--wait` read the same words whether a run is
a set of local processes, a Kubernetes Indexed Job or a KubeRay RayJob. Pure and light (no
kubernetes import): the tables are data, tested row by row.
"""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    PENDING = "Pending"          # accepted, no replica running yet (scheduling, pulling images)
    RUNNING = "Running"
    RESTARTING = "Restarting"    # a replica failed and the group is being recreated
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def done(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})

# --- local backend: the words the supervisor writes to state.json ------------------------------
LOCAL_STATES: dict[str, RunState] = {
    "Pending": RunState.PENDING,
    "Running": RunState.RUNNING,
    "Restarting": RunState.RESTARTING,
    "Succeeded": RunState.SUCCEEDED,
    "Failed": RunState.FAILED,
    "Cancelled": RunState.CANCELLED,
}

# --- Kubernetes batch/v1 Job: a condition (type, status) that decides the run's state ----------
# Checked in this order; the first condition present with status "True" wins. FailureTarget and
# SuccessCriteriaMet (Kubernetes 1.31+) are set before the terminal condition while pods are
# still being terminated: the outcome is already decided.
JOB_CONDITIONS: dict[str, RunState] = {
    "Failed": RunState.FAILED,
    "FailureTarget": RunState.FAILED,
    "Complete": RunState.SUCCEEDED,
    "SuccessCriteriaMet": RunState.SUCCEEDED,
    "Suspended": RunState.PENDING,
}
# The words both backends put in a run's message when a replica exited with code 2 (a user error,
# not retried): `submit --wait` then exits 2 too, as it does when submit itself refuses the spec.
USER_ERROR_NOTE = "a user error"


def is_user_error(message: str) -> bool:
    return f"({USER_ERROR_NOTE}" in (message or "")


# Why a Job failed (the Failed condition's reason) in words a user can act on.
JOB_FAILED_REASONS: dict[str, str] = {
    "PodFailurePolicy": f"a replica exited with code 2 ({USER_ERROR_NOTE}: bad spec, data or options); "
                        "the Job fails at once instead of retrying",
    "BackoffLimitExceeded": "replicas failed more often than the backoff limit allows",
    "DeadlineExceeded": "the run exceeded its active deadline (--active-deadline)",
    "FailedIndexes": "a replica index failed more often than its per-index backoff limit",
    "MaxFailedIndexesExceeded": "too many replica indexes failed",
}

# --- core/v1 Pod phase (per replica) --------------------------------------------------------------
POD_PHASES: dict[str, RunState] = {
    "Pending": RunState.PENDING,
    "Running": RunState.RUNNING,
    "Succeeded": RunState.SUCCEEDED,
    "Failed": RunState.FAILED,
    "Unknown": RunState.PENDING,  # node unreachable: the pod may come back or be replaced
}

# --- KubeRay ray.io/v1 RayJob: status.jobDeploymentStatus, then status.jobStatus -----------------
RAYJOB_DEPLOYMENT: dict[str, RunState | None] = {
    "": RunState.PENDING,
    "Initializing": RunState.PENDING,
    "Waiting": RunState.PENDING,
    "Scheduling": RunState.PENDING,
    "Scheduled": RunState.PENDING,
    "Suspending": RunState.PENDING,
    "Suspended": RunState.PENDING,
    "Running": RunState.RUNNING,
    "Retrying": RunState.RESTARTING,
    "Failed": RunState.FAILED,
    "Complete": None,  # terminal: the Ray job's own status says how it ended
}
RAYJOB_JOB_STATUS: dict[str, RunState] = {
    "": RunState.PENDING,
    "PENDING": RunState.PENDING,
    "SCHEDULED": RunState.PENDING,
    "RUNNING": RunState.RUNNING,
    "SUCCEEDED": RunState.SUCCEEDED,
    "FAILED": RunState.FAILED,
    "STOPPED": RunState.CANCELLED,
}


INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def pod_index(pod: dict) -> int | None:
    """A pod's completion index (annotation, and label since Kubernetes 1.28)."""
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(INDEX_KEY) or (meta.get("labels") or {}).get(INDEX_KEY)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def latest_pods(pods) -> list[dict]:
    """The newest pod of each index (a failed pod stays listed after its replacement starts);
    pods that are being deleted are left out."""
    best: dict = {}
    for p in pods:
        meta = p.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        key = pod_index(p)
        key = meta.get("name") if key is None else key
        if key not in best or str(meta.get("creationTimestamp") or "") >= \
                str((best[key].get("metadata") or {}).get("creationTimestamp") or ""):
            best[key] = p
    return [best[k] for k in sorted(best, key=lambda k: (isinstance(k, str), k))]


def pod_state(pod: dict) -> RunState:
    return POD_PHASES.get((pod.get("status") or {}).get("phase") or "Unknown", RunState.PENDING)


def local_state(native: str) -> RunState:
    return LOCAL_STATES[native]


def job_state(job: dict, pods: list[dict] = ()) -> tuple[RunState, str]:
    """State and message of an Indexed Job (a dict as the API returns it) and its pods."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    if meta.get("deletionTimestamp"):
        return RunState.CANCELLED, "cancelled: the Job and its pods are being deleted"
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for ctype, state in JOB_CONDITIONS.items():
        if ctype in true:
            c = true[ctype]
            reason = c.get("reason") or ""
            words = JOB_FAILED_REASONS.get(reason, "")
            if state is RunState.SUCCEEDED:
                return state, ""
            msg = "; ".join(x for x in (words, c.get("message") or "") if x)
            return state, msg or reason or ctype
    failed = int(status.get("failed") or 0)
    phases = [pod_state(p) for p in latest_pods(pods)]
    restarts = f"{failed} replica pod(s) failed so far; the Job recreates them" if failed else ""
    # A replica's newest pod failed (or was evicted) and its replacement is not running yet.
    if RunState.FAILED in phases or (failed and (not phases or RunState.PENDING in phases)):
        return RunState.RESTARTING, restarts or "a replica pod ended; the Job recreates it"
    if RunState.RUNNING in phases:
        return RunState.RUNNING, restarts
    return (RunState.RESTARTING if failed else RunState.PENDING), restarts


def rayjob_state(rayjob: dict) -> tuple[RunState, str]:
    meta, status = rayjob.get("metadata") or {}, rayjob.get("status") or {}
    if meta.get("deletionTimestamp"):
        return RunState.CANCELLED, "cancelled: the RayJob and its cluster are being deleted"
    dep = status.get("jobDeploymentStatus") or ""
    msg = "; ".join(x for x in (status.get("reason") or "", status.get("message") or "") if x)
    if dep not in RAYJOB_DEPLOYMENT:
        return RunState.PENDING, f"unknown RayJob deployment status {dep!r}"
    state = RAYJOB_DEPLOYMENT[dep]
    if state is None:
        job = status.get("jobStatus") or ""
        state = RAYJOB_JOB_STATUS.get(job, RunState.FAILED)
        if state is RunState.PENDING:  # Complete with a non-terminal job status: submitter gone
            state = RunState.FAILED
    return state, msg
