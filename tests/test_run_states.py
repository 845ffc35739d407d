"""Every native status of every backend maps to the intended RunState (expected values written
out here, not read from the tables under test)."""

from __future__ import annotations

import pytest

from cxrjobs.backends import states
from cxrjobs.backends.states import RunState as S

P, R, RS, OK, F, C = S.PENDING, S.RUNNING, S.RESTARTING, S.SUCCEEDED, S.FAILED, S.CANCELLED


def test_enum_prints_as_its_value():
    assert f"{S.RUNNING}" == str(S.RUNNING) == "Running" and S.RUNNING == "Running"
    assert {s for s in S if s.done} == {OK, F, C}


@pytest.mark.parametrize("native,want", [("Pending", P), ("Running", R), ("Restarting", RS),
                                         ("Succeeded", OK), ("Failed", F), ("Cancelled", C)])
def test_local_supervisor_states(native, want):
    assert states.local_state(native) is want


def _job(*conditions, failed=0, active=0, deleting=False):
    meta = {"name": "j"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"failed": failed, "active": active, "conditions": [
        {"type": t, "status": st, "reason": reason} for t, st, reason in conditions]}}


def _pod(index, phase, ts="2026-01-01T00:00:01Z", deleting=False):
    meta = {"name": f"j-{index}-{ts[-3:-1]}", "creationTimestamp": ts,
            "annotations": {states.INDEX_KEY: str(index)}}
    if deleting:
        meta["deletionTimestamp"] = ts
    return {"metadata": meta, "status": {"phase": phase}}


@pytest.mark.parametrize("conditions,want,words", [
    ([("Complete", "True", "CompletionsReached")], OK, ""),
    ([("SuccessCriteriaMet", "True", "CompletionsReached")], OK, ""),
    ([("Failed", "True", "BackoffLimitExceeded")], F, "backoff limit"),
    ([("Failed", "True", "DeadlineExceeded")], F, "active deadline"),
    ([("Failed", "True", "PodFailurePolicy")], F, "code 2"),
    ([("FailureTarget", "True", "PodFailurePolicy")], F, "code 2"),
    ([("Failed", "True", "MaxFailedIndexesExceeded")], F, "indexes"),
    ([("Failed", "True", "FailedIndexes")], F, "index"),
    ([("Suspended", "True", "JobSuspended")], P, "Suspended"),
    ([("Complete", "False", ""), ("Suspended", "False", "")], P, ""),  # False conditions decide nothing
    ([("FailureTarget", "True", "PodFailurePolicy"), ("Failed", "True", "PodFailurePolicy")], F, "code 2"),
])
def test_job_conditions(conditions, want, words):
    state, msg = states.job_state(_job(*conditions))
    assert state is want and words in msg


@pytest.mark.parametrize("job,pods,want", [
    (_job(), [], P),
    (_job(active=2), [_pod(0, "Pending"), _pod(1, "Pending")], P),
    (_job(active=2), [_pod(0, "Running"), _pod(1, "Pending")], R),
    (_job(active=2), [_pod(0, "Running"), _pod(1, "Running")], R),
    (_job(active=1), [_pod(0, "Running"), _pod(1, "Unknown")], R),
    (_job(failed=1, active=1), [_pod(0, "Running"), _pod(1, "Failed")], RS),
    (_job(failed=2), [], RS),
    # a failed pod whose replacement runs: Running again
    (_job(failed=1, active=2), [_pod(0, "Running"), _pod(1, "Failed", "2026-01-01T00:00:01Z"),
                                _pod(1, "Running", "2026-01-01T00:00:09Z")], R),
    # an evicted pod (not counted as failed): Restarting until replaced
    (_job(active=1), [_pod(0, "Running"), _pod(1, "Failed")], RS),
    (_job(active=2), [_pod(0, "Running"), _pod(1, "Running", deleting=True)], R),
    (_job(deleting=True), [_pod(0, "Running")], C),
])
def test_job_progress_from_pods(job, pods, want):
    assert states.job_state(job, pods)[0] is want


@pytest.mark.parametrize("phase,want", [("Pending", P), ("Running", R), ("Succeeded", OK), ("Failed", F),
                                        ("Unknown", P), (None, P)])
def test_pod_phases(phase, want):
    assert states.pod_state({"status": {"phase": phase}}) is want


@pytest.mark.parametrize("deployment,job_status,want", [
    ("", "", P), ("Initializing", "", P), ("Waiting", "", P), ("Scheduling", "", P),
    ("Scheduled", "", P), ("Suspending", "", P), ("Suspended", "", P),
    ("Running", "PENDING", R), ("Running", "RUNNING", R), ("Retrying", "", RS),
    ("Failed", "", F), ("Failed", "RUNNING", F),
    ("Complete", "SUCCEEDED", OK), ("Complete", "FAILED", F), ("Complete", "STOPPED", C),
    ("Complete", "", F),  # complete without a terminal job status: the submitter failed
    ("SomethingNew", "", P),
])
def test_rayjob_status(deployment, job_status, want):
    rj = {"metadata": {"name": "r"}, "status": {"jobDeploymentStatus": deployment, "jobStatus": job_status}}
    assert states.rayjob_state(rj)[0] is want


def test_every_native_status_in_the_tables_is_covered():
    assert set(states.LOCAL_STATES) == {"Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled"}
    assert set(states.POD_PHASES) == {"Pending", "Running", "Succeeded", "Failed", "Unknown"}
    assert set(states.JOB_CONDITIONS) == {"Complete", "SuccessCriteriaMet", "Failed", "FailureTarget", "Suspended"}
    assert set(states.RAYJOB_DEPLOYMENT) == {"", "Initializing", "Waiting", "Scheduling", "Scheduled", "Suspending",
                                             "Suspended", "Running", "Retrying", "Failed", "Complete"}
    assert set(states.RAYJOB_JOB_STATUS) == {"", "PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"}
