"""Real multi-process training: replicas are OS processes started by the local backend, talking
torch.distributed over gloo on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from cxrjobs import api
from cxrjobs.backends import get_backend
from cxrjobs.backends.base import replica_env
from cxrjobs.config import load_settings
from cxrjobs.jobs.resolve import resolve_job
from cxrjobs.storage import join_key

pytestmark = pytest.mark.slow

DIGEST = re.compile(r"rank (\d+) final weights sha256 ([0-9a-f]{64})")


def train_job(data, name, replicas=2, **train):
    spec = dict(data=str(data), epochs=3, batch_size=32, optimizer="adam", lr=1e-3, threads=1,
                bootstrap=50)
    spec.update(train)
    return resolve_job("nih-train", None, dict(name=name, replicas=replicas, backoff_limit=2,
                                               rendezvous_timeout=60, train=spec))


def run_to_end(job, timeout=240):
    api.submit(job)
    return get_backend().wait(job.name, timeout=timeout, poll=0.2)


def digests(store, run):
    """Final-weights digest per rank, from the last attempt in each replica log."""
    out = {}
    for i in range(2):
        text = (load_settings().local_state / run / "logs" / f"replica-{i}.log").read_text()
        last = text.rsplit("=== attempt", 1)[-1]
        for rank, digest in DIGEST.findall(last):
            out[int(rank)] = digest
    return out


def metrics(store, run):
    return [json.loads(line) for line in store.get_text(join_key("runs", run, "metrics.jsonl")).splitlines()]


def test_two_replicas_train_in_sync_and_learn(phantom_nih_64, local_env):
    store = local_env
    job = train_job(phantom_nih_64, "ddp-two", epochs=4)
    st = run_to_end(job)
    assert st.state == "Succeeded", st.message
    d = digests(store, job.name)
    assert set(d) == {0, 1} and d[0] == d[1], "DDP replicas ended with different weights"
    m = metrics(store, job.name)
    assert [r["epoch"] for r in m] == [1, 2, 3, 4]
    assert m[-1]["train"]["loss"] < m[0]["train"]["loss"]
    for r in m:
        assert r["val"]["split"] == "val" and r["val"]["images"] > 0 and r["val"]["patients"] > 0
        assert r["train"]["images_seen"] >= r["train"]["images"]  # sampler padding only adds
        assert r["val"]["mean_auroc"]["ci"] is not None
    for key in ("spec.json", "checkpoints/latest.pt", "checkpoints/best.pt", "artifacts/result.json",
                "logs/replica-0.log", "logs/replica-1.log"):
        assert store.exists(join_key("runs", job.name, key)), key
    ckpt = torch.load(store.local_path(join_key("runs", job.name, "checkpoints/latest.pt")),
                      weights_only=True)
    assert ckpt["epoch"] == 4
    # status from another shell: a separate process reads the same state
    cli = subprocess.run([sys.executable, "-m", "cxrjobs.cli", "status", job.name, "--json"],
                         capture_output=True, text=True, env=os.environ, timeout=60)
    assert cli.returncode == 0, cli.stderr
    status = json.loads(cli.stdout)
    assert status["run"] == job.name and status["state"] == "Succeeded" and status["epoch"] == 4
    assert status["result"]["test"]["split"] == "test"


def test_killed_replica_restarts_and_resumes_to_identical_weights(phantom_nih_64, local_env):
    store = local_env
    common = dict(epochs=4, batch_size=8, deterministic=True, bootstrap=0)
    ref = train_job(phantom_nih_64, "uninterrupted", **common)
    assert run_to_end(ref).state == "Succeeded"

    job = train_job(phantom_nih_64, "interrupted", **common)
    api.submit(job)
    be = get_backend()
    state_path = load_settings().local_state / job.name / "state.json"
    latest = join_key("runs", job.name, "checkpoints/latest.pt")
    deadline = time.monotonic() + 120
    while not store.exists(latest):  # epoch 1 is checkpointed: kill during epoch 2
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    os.kill(json.loads(state_path.read_text())["pids"][1], signal.SIGKILL)
    st = be.wait(job.name, timeout=240, poll=0.2)
    assert st.state == "Succeeded", st.message
    assert st.restarts == 1
    log0 = (load_settings().local_state / job.name / "logs" / "replica-0.log").read_text()
    resumed = re.findall(r"resumed from checkpoint: (\d+) of 4 epochs done", log0)
    assert resumed and 1 <= int(resumed[0]) < 4
    assert [r["epoch"] for r in metrics(store, job.name)] == [1, 2, 3, 4]
    assert digests(store, job.name) == digests(store, ref.name)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rank", [0, 1])
def test_replica_alone_fails_with_rendezvous_timeout(phantom_nih_64, local_env, rank):
    job = resolve_job("nih-train", None, dict(name=f"lonely-{rank}", replicas=2, rendezvous_timeout=3,
                                             train=dict(data=str(phantom_nih_64), epochs=1)))
    local_env.put_text(join_key("runs", job.name, "spec.json"), job.model_dump_json())
    port = _free_port()
    env = dict(os.environ, **replica_env(job, rank, "127.0.0.1", port, load_settings()))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cxrjobs.jobs.entrypoint"], env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert f"rank {rank}" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr
    assert "3s rendezvous timeout" in proc.stderr
    assert elapsed < 60  # bounded by the timeout (plus interpreter start), not hanging


def test_failing_replicas_stop_after_backoff_limit(local_env, tmp_path):
    job = resolve_job("nih-train", None, dict(name="bad-data", replicas=2, backoff_limit=1,
                                             train=dict(data=str(tmp_path / "nope"), epochs=1)))
    st = run_to_end(job, timeout=120)
    assert st.state == "Failed"
    assert st.restarts == 1 and "backoff limit 1" in st.message
    logs = "".join(get_backend().logs(job.name))
    assert logs.count("=== attempt") == 4  # 2 replicas x (first try + 1 restart)
    assert "dataset" in logs and "not found" in logs


def test_cancel_stops_every_replica(phantom_nih_64, local_env):
    job = train_job(phantom_nih_64, "to-cancel", epochs=500)
    api.submit(job)
    be = get_backend()
    deadline = time.monotonic() + 60
    while not (st := be.status(job.name)).extra["pids"] or st.state != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pids = st.extra["pids"]
    cli = subprocess.run([sys.executable, "-m", "cxrjobs.cli", "cancel", job.name],
                         capture_output=True, text=True, env=os.environ, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert be.status(job.name).state == "Cancelled"
    time.sleep(0.5)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
