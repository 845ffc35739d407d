"""Supervises one local run: starts its replicas, and on any replica failure stops them all and
restarts the group (up to backoff_limit times) — the semantics of a Kubernetes Job whose pods
rendezvous, where one lost member fails the whole step. Replicas resume from the checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cxrjobs.backends.local import read_json, write_json

GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            env = {k: v for k, v in os.environ.items()}  # host basics + secrets, set by the backend
            env.update(obj["env"], MASTER_PORT=str(port))
            log = open(obj["log"], "ab")
            log.write(f"=== attempt {attempt} (replica {obj['replica']}, port {port}) ===\n".encode())
            log.flush()
            procs.append(subprocess.Popen(obj["command"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
            log.close()
        self.update(state="Running" if attempt == 0 else "Restarting", attempt=attempt,
                    pids=[p.pid for p in procs], master_port=port)
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
        """Block until the group ends: ('ok'|'failed'|'cancelled', message)."""
        running_marked = False
        while True:
            if self.cancelled:
                return "cancelled", "cancelled by user"
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                i, c = bad[0]
                return "failed", f"replica {i} exited with code {c}"
            if all(c == 0 for c in codes):
                return "ok", ""
            if not running_marked and any(c is None for c in codes):
                self.update(state="Running")
                running_marked = True
            time.sleep(POLL_SECONDS)

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
            procs = self.start(restarts)
            outcome, message = self.watch(procs)
            self.stop(procs)
            if outcome == "ok":
                self.update(state="Succeeded", message="", finished=time.time(), restarts=restarts)
                break
            if outcome == "cancelled":
                self.update(state="Cancelled", message=message, finished=time.time())
                break
            if restarts >= limit:
                self.update(state="Failed", finished=time.time(), restarts=restarts,
                            message=f"{message}; backoff limit {limit} reached")
                break
            restarts += 1
            self.update(state="Restarting", restarts=restarts, message=f"{message}; restart {restarts}/{limit}")
            print(f"{message}: restarting the group ({restarts}/{limit})", flush=True)
            time.sleep(min(10.0, 0.5 * 2 ** (restarts - 1)))  # Job-style exponential back-off
        self.upload_logs()
        return 0


def main() -> int:
    return Supervisor(Path(sys.argv[1])).run()


if __name__ == "__main__":
    sys.exit(main())
