"""The backend interface (submit with dry-run, status, logs, wait, cancel, list) and the one
definition of a replica's environment, shared by every backend so a local process sees exactly
what a pod of the Indexed Job would."""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Iterator

from cxrjobs.config import Settings
from cxrjobs.errors import CxrError
from cxrjobs.jobs.spec import JobSpec

TERMINAL = ("Succeeded", "Failed", "Cancelled")
STATES = ("Pending", "Running", "Restarting") + TERMINAL
ENTRYPOINT = ["-m", "cxrjobs.jobs.entrypoint"]


@dataclass
class JobStatus:
    run: str
    state: str
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
        d.update(d.pop("extra"))
        return d


@dataclass
class SubmitPlan:
    """What `schedule` would create: for --dry-run, printed as is."""
    run: str
    backend: str
    job: JobSpec
    objects: list[dict]

    def to_dict(self) -> dict:
        return {"run": self.run, "backend": self.backend, "objects": self.objects}


def replica_env(job: JobSpec, index: int, master_addr: str, master_port: int | str,
                settings: Settings) -> dict[str, str]:
    """The pod environment of replica `index` (secrets excluded: those come from a Secret)."""
    env = {
        "CXRJOBS_RUN_ID": job.name,
        "JOB_COMPLETION_INDEX": str(index),
        "WORLD_SIZE": str(job.replicas),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "PYTHONUNBUFFERED": "1",
    }
    threads = job.train.threads if job.train and job.train.threads else None
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(settings.job_env())
    return env


def replica_command() -> list[str]:
    return [sys.executable, *ENTRYPOINT]


class Backend(ABC):
    name: str

    @abstractmethod
    def submit_dryrun(self, job: JobSpec) -> SubmitPlan: ...

    @abstractmethod
    def schedule(self, plan: SubmitPlan) -> JobStatus: ...

    def submit(self, job: JobSpec, dry_run: bool = False) -> SubmitPlan | JobStatus:
        plan = self.submit_dryrun(job)
        return plan if dry_run else self.schedule(plan)

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
