"""Supervises one local run: starts its replicas, and on any replica failure stops them all and
restarts the group (up to backoff_limit times) — the semantics of a Kubernetes Job whose pods
rendezvous, where one lost member fails the whole step. Replicas resume from the checkpoint.

A replica that exits with code 2 reported a user error (bad spec or data, see
cxrjobs.jobs.entrypoint): restarting cannot fix it, so the run fails at once and its `error:`
line becomes the run's status message. Replicas get a parent-death signal: they never outlive
this process, even when it is killed."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cxrjobs.backends.local import proc_start_time, read_json, write_json
from cxrjobs.backends.states import USER_ERROR_NOTE

GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1
USER_ERROR = 2  # the entrypoint's exit code for a CxrError: not retried
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent(parent: int):
    """preexec_fn for a replica: SIGKILL it when the supervisor dies (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the prctl took effect
            os._exit(1)
    return preexec


def last_error(log_path: str, limit: int = 500) -> str:
    """The replica's last `error:` line in its current attempt (or, after a traceback, the last
    line), for the run's status message."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [l.strip() for l in text.rsplit("=== attempt", 1)[-1].splitlines()[1:] if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    line = errors[-1][len("error:"):].strip() if errors else (lines[-1] if lines else "")
    return line[:limit]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown signal"


class Supervisor:
    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.plan = read_json(state_dir / "plan.json")
        self.job = self.plan["job"]
        self.cancelled = False
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)

    def _on_term(self, *_):
        self.cancelled = True

    def update(self, **fields) -> None:
        state = read_json(self.dir / "state.json")
        state.update(fields)
        write_json(self.dir / "state.json", state)

    def start(self, attempt: int) -> list[subprocess.Popen]:
        port = free_port()
        procs = []
        for obj in self.plan["objects"]:
            if self.cancelled:  # never start (the rest of) a group once cancelled
                break
            env = {k: v for k, v in os.environ.items()}  # host basics + secrets, set by the backend
            env.update(obj["env"], MASTER_PORT=str(port))
            log = open(obj["log"], "ab")
            log.write(f"=== attempt {attempt} (replica {obj['replica']}, port {port}) ===\n".encode())
            log.flush()
            procs.append(subprocess.Popen(obj["command"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(os.getpid())))
            log.close()
        self.update(state="Running" if attempt == 0 else "Restarting", attempt=attempt,
                    pids=[p.pid for p in procs], pid_starts=[proc_start_time(p.pid) for p in procs],
                    master_port=port)
        return procs

    @staticmethod
    def stop(procs: list[subprocess.Popen]) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + GRACE_SECONDS
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def watch(self, procs) -> tuple[str, str]:
        """Block until the group ends: ('ok'|'failed'|'user-error'|'cancelled', message)."""
        running_marked = False
        while True:
            if self.cancelled:
                return "cancelled", "cancelled by user"
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                # A user error explains the others (a peer that lost its partner fails too).
                i, c = next(((i, c) for i, c in bad if c == USER_ERROR), bad[0])
                if c < 0:  # killed by a signal: its log's last line is whatever it was doing then
                    message = f"replica {i} was killed by signal {-c} ({_signal_name(-c)})"
                else:
                    cause = last_error(self.plan["objects"][i]["log"])
                    message = f"replica {i} exited with code {c}" + (f": {cause}" if cause else "")
                return ("user-error" if c == USER_ERROR else "failed"), message
            if all(c == 0 for c in codes):
                return "ok", ""
            if not running_marked and any(c is None for c in codes):
                self.update(state="Running")
                running_marked = True
            time.sleep(POLL_SECONDS)

    def backoff(self, seconds: float) -> None:
        """Sleep, but wake up at once for a cancellation."""
        deadline = time.monotonic() + seconds
        while not self.cancelled and time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def upload_logs(self) -> None:
        # Best effort: the run's logs also belong next to its checkpoints in the store.
        try:
            from cxrjobs.storage import join_key, open_store
            store = open_store()
            for obj in self.plan["objects"]:
                path = Path(obj["log"])
                if path.exists():
                    store.put_file(join_key("runs", self.job["name"], "logs", path.name), path)
        except Exception as e:  # the run's outcome must not depend on log upload
            print(f"could not upload logs: {e}", flush=True)

    def run(self) -> int:
        limit = int(self.job["backoff_limit"])
        restarts = 0
        while True:
            if self.cancelled:  # checked right before each start: a cancel during back-off wins
                self.update(state="Cancelled", message="cancelled by user", finished=time.time())
                break
            procs = self.start(restarts)
            outcome, message = self.watch(procs)
            self.stop(procs)
            if outcome == "ok":
                self.update(state="Succeeded", message="", finished=time.time(), restarts=restarts)
                break
            if outcome == "cancelled":
                self.update(state="Cancelled", message=message, finished=time.time())
                break
            if outcome == "user-error":
                self.update(state="Failed", finished=time.time(), restarts=restarts,
                            message=f"{message} ({USER_ERROR_NOTE}: not retried)")
                break
            if restarts >= limit:
                self.update(state="Failed", finished=time.time(), restarts=restarts,
                            message=f"{message}; backoff limit {limit} reached")
                break
            restarts += 1
            self.update(state="Restarting", restarts=restarts, message=f"{message}; restart {restarts}/{limit}")
            print(f"{message}: restarting the group ({restarts}/{limit})", flush=True)
            self.backoff(min(10.0, 0.5 * 2 ** (restarts - 1)))  # Job-style exponential back-off
        self.upload_logs()
        return 0


def main() -> int:
    return Supervisor(Path(sys.argv[1])).run()


if __name__ == "__main__":
    sys.exit(main())
