"""Local backend: each replica a separate OS process with a pod's environment.

A detached supervisor process (cxrjobs.backends.local_supervisor) owns the replicas and applies
the Job's failure semantics; all state is in files under the state directory, so status, logs
and cancel work from any shell after the submitting CLI has exited.

Process safety: the supervisor leads its own process group (its replicas and their children
inherit it) and replicas die with it (parent-death signal). Every pid is recorded with its start
time from /proc, and a pid is signalled only when it still has that start time, so a recycled pid
is never killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from cxrjobs.backends.base import (TERMINAL, Backend, JobStatus, SubmitPlan, replica_command,
                                   replica_env)
from cxrjobs.backends.states import LOCAL_STATES, local_state
from cxrjobs.config import SECRET_ENV, Settings, load_settings
from cxrjobs.errors import ConfigError, CxrError
from cxrjobs.jobs.registry import get_kind
from cxrjobs.jobs.spec import JobSpec, check_run_name
from cxrjobs.procfs import all_stat_fields, stat_fields
from cxrjobs.storage.local import atomic_write_bytes

# What a container image would provide besides the job's own variables.
HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
            "CUDA_VISIBLE_DEVICES", "XDG_CACHE_HOME", "RAY_AUTH_MODE", "CXRJOBS_DIST_BACKEND")
PORT_PLACEHOLDER = "<free port, picked at each start>"
# A run whose state file cannot be read: listed by `cxrjobs runs` only (status/wait raise).
UNKNOWN = "Unknown"


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    f = stat_fields(pid)
    return int(f[19]) if f else None


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """Running (not a zombie), and when `start` is given, still the process started then."""
    if not pid:
        return False
    f = stat_fields(pid)
    if f is None or f[0] in ("Z", "X"):  # gone, or exited and not yet reaped
        return False
    return start is None or int(f[19]) == int(start)


def _run_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"CXRJOBS_RUN_ID="):
                    return item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    return None


def kill_verified(pid: int, start: int, sig: int = signal.SIGKILL) -> bool:
    """Signal `pid` only if it is still the process that started at `start`."""
    if not pid_alive(pid, start):
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class LocalBackend(Backend):
    name = "local"

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self.root = self.settings.local_state
        self._locks: dict[str, list] = {}

    def _dir(self, run: str) -> Path:
        try:  # a run name becomes a path: never let one escape the state directory
            check_run_name(run)
        except ValueError as e:
            raise ConfigError(f"run {e}") from None
        return self.root / run

    @contextlib.contextmanager
    def lock(self, run: str):
        """Exclusive per-run lock (fcntl), held while a submit checks and starts the run; re-entrant."""
        held = self._locks.get(run)
        if held:
            held[1] += 1
            try:
                yield
            finally:
                held[1] -= 1
            return
        d = self._dir(run)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._locks[run] = [fd, 1]
            yield
        finally:
            self._locks.pop(run, None)
            os.close(fd)  # releases the lock

    @staticmethod
    def process_count(job: JobSpec) -> int:
        # A RayJob kind runs one driver process here; Ray (started by it) runs the workers.
        return 1 if get_kind(job.kind).workload == "ray-job" else job.replicas

    @staticmethod
    def most_replicas() -> int:
        """Replicas one machine takes: more than a few per core only thrash (each training
        replica holds its model, data loader and gloo buffers: 300 MB and up)."""
        return max(16, 4 * len(os.sched_getaffinity(0)))

    def submit_dryrun(self, job: JobSpec) -> SubmitPlan:
        most = self.most_replicas()
        if self.process_count(job) > most:
            raise ConfigError(f"--replicas {job.replicas}: the local backend runs each replica as a process on "
                              f"this machine ({len(os.sched_getaffinity(0))} cores), at most {most}; use fewer, "
                              "or --backend kubernetes to spread them over a cluster")
        # All replicas share this host: LOCAL_* as torchrun sets them, so GPUs are assigned per rank.
        # Gloo's peer sockets on the loopback interface too: nothing of a local run listens on
        # the network (the rendezvous store binds MASTER_ADDR=127.0.0.1 itself).
        gloo = {"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
        objects = [{"kind": "Process", "replica": i, "command": replica_command(),
                    "env": {**replica_env(job, i, "127.0.0.1", PORT_PLACEHOLDER, self.settings), **gloo},
                    "secret_env": [k for k in SECRET_ENV if os.environ.get(k)],
                    "log": str(self._dir(job.name) / "logs" / f"replica-{i}.log")}
                   for i in range(self.process_count(job))]
        return SubmitPlan(job.name, self.name, job, objects)

    def schedule(self, plan: SubmitPlan) -> JobStatus:
        with self.lock(plan.run):  # two submits of one name: the second sees the first's state
            d = self._dir(plan.run)
            if (d / "state.json").exists() and not self.status(plan.run).done:
                raise CxrError(f"run {plan.run} is already active; cancel it first or pick another --name")
            (d / "logs").mkdir(parents=True, exist_ok=True)
            (d / "supervisor.pid").unlink(missing_ok=True)  # a previous attempt's
            write_json(d / "plan.json", {"job": plan.job.model_dump(mode="json"), "objects": plan.objects})
            write_json(d / "state.json", {"run": plan.run, "state": "Pending", "kind": plan.job.kind,
                                          "replicas": len(plan.objects), "restarts": 0,
                                          "submitted": time.time()})
            env = {k: os.environ[k] for k in HOST_ENV + SECRET_ENV if k in os.environ}
            env.update(self.settings.job_env(), CXRJOBS_RUN_ID=plan.run)  # marks the run's processes
            with open(d / "supervisor.log", "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "cxrjobs.backends.local_supervisor", str(d)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True, cwd=os.getcwd())
            # Its own file: state.json belongs to the supervisor, which may already be writing it.
            # The start time identifies it later, whatever happens to the pid.
            atomic_write_bytes(d / "supervisor.pid", f"{proc.pid} {proc_start_time(proc.pid)}".encode())
            return self.status(plan.run)

    def _supervisor(self, run: str) -> tuple[int, int] | None:
        try:
            pid, start = (self._dir(run) / "supervisor.pid").read_text().split()
            return int(pid), int(start)
        except (OSError, ValueError):
            return None

    def _read_state(self, run: str) -> dict:
        path = self._dir(run) / "state.json"
        if not path.is_file():
            raise CxrError(f"no run {run!r} on the local backend (state in {self.root}); "
                           "`cxrjobs runs` lists them")
        try:
            s = read_json(path)
            if not isinstance(s, dict) or s.get("state") not in LOCAL_STATES:
                raise ValueError(f"no known 'state' (one of {sorted(LOCAL_STATES)})")
            return s
        except (OSError, ValueError) as e:
            raise CxrError(f"state file {path} is unreadable ({type(e).__name__}: {e}); "
                           f"`cxrjobs cancel {run}` stops whatever is left of the run") from None

    def status(self, run: str) -> JobStatus:
        s = self._read_state(run)
        state, message = s["state"], s.get("message", "")
        sup = self._supervisor(run)
        if state not in TERMINAL and sup and not pid_alive(*sup):
            # Re-read: the supervisor writes its final state just before it exits.
            s = self._read_state(run)
            state, message = s["state"], s.get("message", "")
            if state not in TERMINAL:
                was = f" (its last word: {message})" if message else ""
                state, message = "Failed", (f"supervisor process {sup[0]} is gone{was}; resubmit the same "
                                            "command to resume from the last checkpoint")
        return JobStatus(run=run, state=local_state(state), backend=self.name, kind=s.get("kind", ""),
                         replicas=s.get("replicas", 0), restarts=s.get("restarts", 0),
                         message=message, started=s.get("submitted"), finished=s.get("finished"),
                         extra={"attempt": s.get("attempt", 0), "pids": s.get("pids", [])})

    def logs(self, run: str, replica: int | None = None, follow: bool = False) -> Iterator[str]:
        n = self._read_state(run).get("replicas", 0)  # a clear error for an unknown run
        logs = self._dir(run) / "logs"
        replicas = [replica] if replica is not None else list(range(n))
        if replica is not None and not 0 <= replica < n:
            raise CxrError(f"run {run} has replicas 0..{n - 1}; --replica {replica} does not exist")
        prefix = replica is None and n > 1
        handles = {}
        while True:
            got = False
            for i in replicas:
                path = logs / f"replica-{i}.log"
                if i not in handles and path.exists():
                    handles[i] = open(path, "r", errors="replace")
                if i in handles:
                    for line in iter(handles[i].readline, ""):
                        got = True
                        yield f"[replica {i}] {line}" if prefix else line
            if not follow or (not got and self.status(run).done):
                break
            if not got:
                time.sleep(0.3)
        for h in handles.values():
            h.close()

    def processes(self, run: str) -> list[tuple[int, int]]:
        """(pid, start time) of every live process of the run: its supervisor, its replicas as
        recorded, and anything else in the supervisor's process group that carries the run's id
        (e.g. a replica's worker processes)."""
        found: dict[int, int] = {}
        sup = self._supervisor(run)
        if sup and pid_alive(*sup):
            found[sup[0]] = sup[1]
        try:
            s = read_json(self._dir(run) / "state.json")
            for pid, start in zip(s.get("pids", []), s.get("pid_starts", [])):
                if pid_alive(pid, start):
                    found[int(pid)] = int(start)
        except (OSError, ValueError, AttributeError, TypeError):
            pass
        if sup:
            for pid, f in all_stat_fields().items():
                if pid in found:
                    continue
                # field 5 is the process group; a group id is never reused while the group lives,
                # and a member started no earlier than the supervisor that created the group
                if (f[0] not in ("Z", "X") and int(f[2]) == sup[0] and int(f[19]) >= sup[1]
                        and _run_of(pid) == run):
                    found[pid] = int(f[19])
        return sorted(found.items())

    def cancel(self, run: str) -> JobStatus:
        """Stop the run. Whatever its recorded state, every process of it still alive is killed."""
        d = self._dir(run)
        try:
            st = self.status(run)
        except CxrError:
            if not (d / "state.json").exists():
                raise
            st = None  # unreadable state: still stop its processes, then record the cancellation
        with self.lock(run):  # not half-way through a submit of the same run
            return self._cancel(run, st)

    def _cancel(self, run: str, st: JobStatus | None) -> JobStatus:
        d = self._dir(run)
        sup = self._supervisor(run)
        if st is not None and not st.done and sup and kill_verified(*sup, signal.SIGTERM):
            # The supervisor stops its replicas with a grace period and records "Cancelled".
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and pid_alive(*sup):
                time.sleep(0.1)
        for pid, start in self.processes(run):
            kill_verified(pid, start, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.processes(run):
            time.sleep(0.05)
        if st is None or not self.status(run).done:
            s = {"run": run, "state": "Pending"}
            with contextlib.suppress(CxrError):
                s = self._read_state(run)
            reason = "" if st is not None else " (its state file was unreadable)"
            s.update(state="Cancelled", message=f"cancelled{reason}", finished=time.time())
            write_json(d / "state.json", s)
        return self.status(run)

    def list(self) -> list[JobStatus]:
        if not self.root.is_dir():
            return []
        runs = sorted(p.name for p in self.root.iterdir() if (p / "state.json").is_file())
        out = []
        for r in runs:
            try:
                out.append(self.status(r))
            except CxrError as e:  # one broken run must not hide the others
                out.append(JobStatus(run=r, state=UNKNOWN, backend=self.name, message=str(e)))
        return out
