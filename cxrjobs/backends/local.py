"""Local backend: each replica a separate OS process with a pod's environment.

A detached supervisor process (cxrjobs.backends.local_supervisor) owns the replicas and applies
the Job's failure semantics; all state is in files under the state directory, so status, logs
and cancel work from any shell after the submitting CLI has exited.
"""

from __future__ import annotations

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
from cxrjobs.backends.states import local_state
from cxrjobs.config import SECRET_ENV, Settings, load_settings
from cxrjobs.errors import CxrError
from cxrjobs.jobs.spec import JobSpec
from cxrjobs.storage.local import atomic_write_bytes

# What a container image would provide besides the job's own variables.
HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
            "CUDA_VISIBLE_DEVICES", "XDG_CACHE_HOME", "RAY_AUTH_MODE", "CXRJOBS_DIST_BACKEND")
PORT_PLACEHOLDER = "<free port, picked at each start>"


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: only its parent has not reaped it yet
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class LocalBackend(Backend):
    name = "local"

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self.root = self.settings.local_state

    def _dir(self, run: str) -> Path:
        return self.root / run

    def submit_dryrun(self, job: JobSpec) -> SubmitPlan:
        objects = [{"kind": "Process", "replica": i, "command": replica_command(),
                    "env": replica_env(job, i, "127.0.0.1", PORT_PLACEHOLDER, self.settings),
                    "secret_env": [k for k in SECRET_ENV if os.environ.get(k)],
                    "log": str(self._dir(job.name) / "logs" / f"replica-{i}.log")}
                   for i in range(job.replicas)]
        return SubmitPlan(job.name, self.name, job, objects)

    def schedule(self, plan: SubmitPlan) -> JobStatus:
        d = self._dir(plan.run)
        if (d / "state.json").exists() and not self.status(plan.run).done:
            raise CxrError(f"run {plan.run} is already active; cancel it first or pick another --name")
        (d / "logs").mkdir(parents=True, exist_ok=True)
        (d / "supervisor.pid").unlink(missing_ok=True)  # a previous attempt's
        write_json(d / "plan.json", {"job": plan.job.model_dump(mode="json"), "objects": plan.objects})
        write_json(d / "state.json", {"run": plan.run, "state": "Pending", "kind": plan.job.kind,
                                      "replicas": plan.job.replicas, "restarts": 0,
                                      "submitted": time.time()})
        env = {k: os.environ[k] for k in HOST_ENV + SECRET_ENV if k in os.environ}
        env.update(self.settings.job_env())
        with open(d / "supervisor.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cxrjobs.backends.local_supervisor", str(d)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, cwd=os.getcwd())
        # Its own file: state.json belongs to the supervisor, which may already be writing it.
        atomic_write_bytes(d / "supervisor.pid", str(proc.pid).encode())
        return self.status(plan.run)

    def _supervisor_pid(self, run: str) -> int | None:
        try:
            return int((self._dir(run) / "supervisor.pid").read_text())
        except (OSError, ValueError):
            return None

    def status(self, run: str) -> JobStatus:
        path = self._dir(run) / "state.json"
        if not path.is_file():
            raise CxrError(f"no run {run!r} on the local backend (state in {self.root}); "
                           "`cxrjobs runs` lists them")
        s = read_json(path)
        state, message = s["state"], s.get("message", "")
        pid = self._supervisor_pid(run)
        if state not in TERMINAL and pid and not pid_alive(pid):
            # Re-read: the supervisor writes its final state just before it exits.
            s = read_json(path)
            state, message = s["state"], s.get("message", "")
            if state not in TERMINAL:
                state, message = "Failed", f"supervisor process {pid} is gone ({message})"
        return JobStatus(run=run, state=local_state(state), backend=self.name, kind=s.get("kind", ""),
                         replicas=s.get("replicas", 0), restarts=s.get("restarts", 0),
                         message=message, started=s.get("submitted"), finished=s.get("finished"),
                         extra={"attempt": s.get("attempt", 0), "pids": s.get("pids", [])})

    def logs(self, run: str, replica: int | None = None, follow: bool = False) -> Iterator[str]:
        self.status(run)  # a clear error for an unknown run
        logs = self._dir(run) / "logs"
        n = read_json(self._dir(run) / "state.json")["replicas"]
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

    def cancel(self, run: str) -> JobStatus:
        st = self.status(run)
        if st.done:
            return st
        s = read_json(self._dir(run) / "state.json")
        pid = self._supervisor_pid(run)
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not self.status(run).done:
                time.sleep(0.1)
        else:
            for p in s.get("pids", []):
                if pid_alive(p):
                    os.kill(p, signal.SIGKILL)
            s.update(state="Cancelled", message="cancelled", finished=time.time())
            write_json(self._dir(run) / "state.json", s)
        return self.status(run)

    def list(self) -> list[JobStatus]:
        if not self.root.is_dir():
            return []
        runs = sorted(p.name for p in self.root.iterdir() if (p / "state.json").is_file())
        return [self.status(r) for r in runs]
