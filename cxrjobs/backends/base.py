"""The backend interface (submit with dry-run, status, logs, wait, cancel, list) and the one
definition of a replica's environment, shared by every backend so a local process sees exactly
what a pod of the Indexed Job would."""

from __future__ import annotations

import contextlib
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Iterator

from cxrjobs.backends.states import TERMINAL_STATES, RunState
from cxrjobs.config import Settings
from cxrjobs.errors import CxrError
from cxrjobs.jobs.spec import JobSpec

TERMINAL = tuple(s.value for s in RunState if s in TERMINAL_STATES)
STATES = tuple(s.value for s in RunState)
ENTRYPOINT = ["-m", "cxrjobs.jobs.entrypoint"]


@dataclass
class JobStatus:
    run: str
    state: RunState
    backend: str
    kind: str = ""
    replicas: int = 0
    restarts: int = 0
    message: str = ""
    started: float | None = None
    finished: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict:
        d = asdict(self)
        d["state"] = str(self.state)
        d.update(d.pop("extra"))
        return d


@dataclass
class SubmitPlan:
    """What `schedule` would create: for --dry-run, printed as is."""
    run: str
    backend: str
    job: JobSpec
    objects: list[dict]
    text_format: str = "json"  # how --dry-run prints it: "json" (processes) or "yaml" (manifests)

    def to_dict(self) -> dict:
        return {"run": self.run, "backend": self.backend, "objects": self.objects}

    def render_text(self) -> str:
        """What --dry-run prints: the plan as JSON, or the objects as a multi-document YAML
        stream that `kubectl apply -f -` takes."""
        if self.text_format == "yaml":
            import yaml
            return yaml.safe_dump_all(self.objects, sort_keys=False, default_flow_style=False)
        import json
        return json.dumps(self.to_dict(), indent=1, default=str)


def pod_env(job: JobSpec, master_addr: str | None, master_port: int | str) -> dict[str, str]:
    """The environment every replica of `job` shares: one pod template's `env` on Kubernetes.
    No store settings (a ConfigMap there) and no secrets (a Secret). No MASTER_* without a
    master address (replicas that never rendezvous)."""
    env = {"CXRJOBS_RUN_ID": job.name, "WORLD_SIZE": str(job.replicas)}
    if master_addr is not None:
        env.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    env["PYTHONUNBUFFERED"] = "1"
    threads = job.train.threads if job.train and job.train.threads else None
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def local_index_env(index: int, replicas: int) -> dict[str, str]:
    """What only a local process needs to be told: its index (on Kubernetes the Job controller
    sets JOB_COMPLETION_INDEX in each pod) and, as torchrun does, its place among the replicas
    that share this host (so GPUs are assigned per rank)."""
    return {"JOB_COMPLETION_INDEX": str(index), "LOCAL_RANK": str(index),
            "LOCAL_WORLD_SIZE": str(replicas)}


def replica_env(job: JobSpec, index: int, master_addr: str, master_port: int | str,
                settings: Settings) -> dict[str, str]:
    """A local replica's environment: the shared pod environment, the store settings and the
    per-index variables (secrets excluded: the backend passes those from its own environment)."""
    return {**pod_env(job, master_addr, master_port), **settings.job_env(),
            **local_index_env(index, job.replicas)}


def replica_command() -> list[str]:
    return [sys.executable, *ENTRYPOINT]


class Backend(ABC):
    name: str
    # Replicas run elsewhere and reach run data only through a shared (S3/MinIO) store.
    needs_shared_store: bool = False

    @abstractmethod
    def submit_dryrun(self, job: JobSpec) -> SubmitPlan: ...

    @abstractmethod
    def schedule(self, plan: SubmitPlan) -> JobStatus: ...

    def preflight(self, store) -> None:
        """Checks before a submission writes anything (the run's spec goes to `store`)."""

    def submit(self, job: JobSpec, dry_run: bool = False) -> SubmitPlan | JobStatus:
        plan = self.submit_dryrun(job)
        return plan if dry_run else self.schedule(plan)

    def lock(self, run: str) -> contextlib.AbstractContextManager:
        """Held while a submit checks and starts `run`, so that of two concurrent submits one wins."""
        return contextlib.nullcontext()

    @abstractmethod
    def status(self, run: str) -> JobStatus: ...

    @abstractmethod
    def logs(self, run: str, replica: int | None = None, follow: bool = False) -> Iterator[str]: ...

    @abstractmethod
    def cancel(self, run: str) -> JobStatus: ...

    @abstractmethod
    def list(self) -> list[JobStatus]: ...

    def wait(self, run: str, timeout: float | None = None, poll: float = 0.5) -> JobStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(run)
            if st.done:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise CxrError(f"run {run} still {st.state} after {timeout:g}s")
            time.sleep(poll)
