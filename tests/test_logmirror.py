"""A replica's output mirrored into the store (cxrjobs.jobs.logmirror), as the entrypoint does in
every pod the Kubernetes backend renders: pods and their logs are deleted with their Job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cxrjobs.jobs.logmirror import ENV_FLAG, log_key
from cxrjobs.jobs.resolve import resolve_job
from cxrjobs.storage import LocalStore, join_key

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import os, subprocess, sys, time
from cxrjobs.jobs.logmirror import StoreLogMirror
from cxrjobs.storage import LocalStore
store = LocalStore(sys.argv[1])
with StoreLogMirror(store, "run-1", 0, interval=0.2):
    print("from python", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    subprocess.run(["sh", "-c", "echo from a child process"])
    os.write(2, b"from fd 2\\n")
    time.sleep(1.0)   # periodic uploads happen while the replica runs
    print("mid-run copy:", store.exists("runs/run-1/logs/replica-0.log"), flush=True)
    print("last line", flush=True)
"""


def _run(args, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_output_of_python_children_and_raw_fds_reaches_the_pod_log_and_the_store(tmp_path):
    first = _run(["-c", WRITER, str(tmp_path)])
    assert first.returncode == 0, first.stderr
    # The pod's own log (the original stdout) still gets everything, in order.
    assert first.stdout.splitlines() == ["from python", "to stderr", "from a child process", "from fd 2",
                                         "mid-run copy: True", "last line"]
    text = LocalStore(tmp_path).get_text(log_key("run-1", 0))
    lines = text.splitlines()
    assert lines[0].startswith("=== attempt started ") and lines[1:] == first.stdout.splitlines()
    # A second attempt of the replica (a new pod) appends under its own header.
    second = _run(["-c", WRITER, str(tmp_path)])
    assert second.returncode == 0, second.stderr
    text2 = LocalStore(tmp_path).get_text(log_key("run-1", 0))
    assert text2.startswith(text) and text2.count("=== attempt started ") == 2


def test_the_entrypoint_in_a_pod_mirrors_its_log_with_the_error_that_ended_it(tmp_path):
    store = LocalStore(tmp_path / "store")
    job = resolve_job("evaluate", None, {"name": "ev-1", "evaluate": {"run": "no-such-run", "data": "datasets/x"}})
    store.put_text(join_key("runs", "ev-1", "spec.json"), job.model_dump_json())
    env = {"CXRJOBS_STORE": str(tmp_path / "store"), "CXRJOBS_RUN_ID": "ev-1", "JOB_COMPLETION_INDEX": "0",
           "CXRJOBS_CACHE_DIR": str(tmp_path / "cache"), ENV_FLAG: "1"}
    r = _run(["-m", "cxrjobs.jobs.entrypoint"], **env)
    assert r.returncode == 2, r.stderr          # a user error, as without the mirror
    assert "error:" in r.stdout and "no-such-run" in r.stdout   # the pod log (fd 1 and 2 merged)
    text = store.get_text(log_key("ev-1", 0))
    assert "error:" in text and "no-such-run" in text
    # Without the flag (the local backend: its supervisor keeps and uploads the log files) nothing
    # is mirrored by the replica itself.
    store.delete(log_key("ev-1", 0))
    env.pop(ENV_FLAG)
    r = _run(["-m", "cxrjobs.jobs.entrypoint"], **env)
    assert r.returncode == 2 and "no-such-run" in r.stderr
    assert not store.exists(log_key("ev-1", 0))


def test_a_terminated_pod_uploads_its_last_lines(tmp_path):
    """The kubelet stops a pod with SIGTERM (cancel, eviction): the log's end is still uploaded."""
    code = ("import os, sys, time\nsys.argv = ['entrypoint']\n"
            "from cxrjobs.jobs import entrypoint\n"
            "def slow(store, run_id):\n    print('working', flush=True)\n    time.sleep(60)\n"
            "entrypoint._run = slow\nsys.exit(entrypoint.main())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CXRJOBS_STORE": str(tmp_path / "store"),
           "CXRJOBS_RUN_ID": "run-t", "JOB_COMPLETION_INDEX": "1", ENV_FLAG: "1"}
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "working\n"
    time.sleep(0.3)
    p.terminate()
    assert p.wait(timeout=30) == 143
    assert "working" in LocalStore(tmp_path / "store").get_text(log_key("run-t", 1))
