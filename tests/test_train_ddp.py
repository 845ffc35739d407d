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
        # A CI, unless too few replicates drew a positive of every class (14 findings, a small val split)
        mean = r["val"]["mean_auroc"]
        assert mean["ci"] is not None or mean["replicates"] < 20, mean
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
    seen = set()  # status messages while it restarts: the cause, not the log's last line
    while not (st := be.status(job.name)).done and time.monotonic() < deadline + 240:
        seen.add(st.message)
        time.sleep(0.05)
    assert any(m.startswith("replica 1 was killed by signal 9 (SIGKILL); restart 1/") for m in seen), seen
    st = be.wait(job.name, timeout=240, poll=0.2)
    assert st.state == "Succeeded", st.message
    assert st.restarts == 1
    log0 = (load_settings().local_state / job.name / "logs" / "replica-0.log").read_text()
    resumed = re.findall(r"resumed from checkpoint: (\d+) of 4 epochs done", log0)
    assert resumed and 1 <= int(resumed[0]) < 4
    assert [r["epoch"] for r in metrics(store, job.name)] == [1, 2, 3, 4]
    resumed_digests, ref_digests = digests(store, job.name), digests(store, ref.name)
    # Both ranks' digests must be there: {} == {} would pass if the log line ever changed.
    assert set(resumed_digests) == set(ref_digests) == {0, 1}
    assert resumed_digests == ref_digests


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


def manifest_only_dataset(root):
    """Passes the submit-time checks (it has a manifest) but has no index: every replica fails
    with an internal error (exit 1), the kind of failure the Job retries."""
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"image_size": 64}))
    return root


def test_failing_replicas_stop_after_backoff_limit(local_env, tmp_path):
    job = resolve_job("nih-train", None, dict(name="bad-data", replicas=2, backoff_limit=1,
                                             train=dict(data=str(manifest_only_dataset(tmp_path / "d")),
                                                        epochs=1)))
    st = run_to_end(job, timeout=120)
    assert st.state == "Failed"
    assert st.restarts == 1 and "backoff limit 1" in st.message
    assert "index.csv" in st.message, st.message  # the cause, from the replica's log
    logs = "".join(get_backend().logs(job.name))
    assert logs.count("=== attempt") == 4  # 2 replicas x (first try + 1 restart)


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


# --- issue 6: orphans, cancel, loopback rendezvous, DDP-gathered metrics --------------------------

from cxrjobs.backends import local as local_backend  # noqa: E402


def start_long_run(data, name):
    """A 2-replica run that trains far longer than any test waits; returns it once both
    replicas are running."""
    job = train_job(data, name, epochs=500)
    api.submit(job)
    be = get_backend()
    deadline = time.monotonic() + 60
    while not (st := be.status(job.name)).extra["pids"] or st.state != "Running":
        assert time.monotonic() < deadline, f"{name} not running after 60 s: {st}"
        time.sleep(0.1)
    state = json.loads((load_settings().local_state / name / "state.json").read_text())
    sup = int((load_settings().local_state / name / "supervisor.pid").read_text().split()[0])
    return job, sup, state["pids"]


def wait_gone(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while any(local_backend.pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return [p for p in pids if local_backend.pid_alive(p)]
        time.sleep(0.1)
    return []


def test_replicas_die_with_their_supervisor(phantom_nih_64, local_env):
    """Item 8: a killed supervisor takes its replicas with it (they were orphans training on)."""
    job, sup, pids = start_long_run(phantom_nih_64, "orphans")
    try:
        os.kill(sup, signal.SIGKILL)
        left = wait_gone(pids)
        assert not left, f"replicas {left} outlived their supervisor"
        st = get_backend().status(job.name)
        assert st.state == "Failed" and "supervisor" in st.message
    finally:
        get_backend().cancel(job.name)


def test_cancel_stops_live_processes_of_a_terminal_run(phantom_nih_64, local_env):
    """Item 8: `cancel` kills whatever of a run is still alive even when its state says it
    ended (here: the supervisor frozen, and the state rewritten as Failed)."""
    job, sup, pids = start_long_run(phantom_nih_64, "zombie-run")
    os.kill(sup, signal.SIGSTOP)  # it can no longer react, or stop its replicas
    path = load_settings().local_state / job.name / "state.json"
    state = json.loads(path.read_text())
    state.update(state="Failed", message="supervisor lost")
    path.write_text(json.dumps(state))
    assert get_backend().status(job.name).done
    cli = subprocess.run([sys.executable, "-m", "cxrjobs.cli", "cancel", job.name],
                         capture_output=True, text=True, env=os.environ, timeout=60)
    assert cli.returncode == 0, cli.stderr
    left = wait_gone([sup, *pids])
    assert not left, f"processes {left} of a terminal run survived cancel"


def test_cancel_during_backoff_starts_no_new_group(local_env, tmp_path):
    """Item 11: a cancel while the supervisor sleeps between attempts never starts attempt 1."""
    job = resolve_job("nih-train", None, dict(name="backoff-cancel", replicas=1, backoff_limit=3,
                                             train=dict(data=str(manifest_only_dataset(tmp_path / "d")),
                                                        epochs=1)))
    api.submit(job)
    path = load_settings().local_state / job.name / "state.json"
    deadline = time.monotonic() + 120
    while True:  # attempt 0 failed and attempt 1 has not started: the back-off sleep (0.5 s)
        s = json.loads(path.read_text())
        if s.get("restarts") == 1 and s.get("attempt") == 0 and s["state"] == "Restarting":
            break
        assert s.get("attempt", 0) == 0, "missed the back-off window (the machine is very slow)"
        assert time.monotonic() < deadline, s
        time.sleep(0.01)
    st = get_backend().cancel(job.name)
    assert st.state == "Cancelled", st
    time.sleep(1.5)  # longer than the back-off that was running
    log = (load_settings().local_state / job.name / "logs" / "replica-0.log").read_text()
    assert "=== attempt 1" not in log, "a fresh replica group was started after the cancel"
    assert json.loads(path.read_text())["state"] == "Cancelled"


def _listening(port):
    """Local addresses listening on `port`, from /proc/net/tcp{,6} (state 0A = LISTEN)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, _, st = line.split()[1:4]
                addr, p = local.split(":")
                if st == "0A" and int(p, 16) == port:
                    found.append(addr)
    return found


def _is_loopback_hex(addr):
    if len(addr) == 8:  # IPv4, little-endian: the last byte pair is the first octet
        return addr[6:8] == "7F"
    words = [addr[i:i + 8] for i in range(0, 32, 8)]  # IPv6 as four host-order 32-bit words
    if words[:3] == ["00000000", "00000000", "0000FFFF"]:  # ::ffff:a.b.c.d
        return words[3][6:8] == "7F"
    return words == ["00000000", "00000000", "00000000", "01000000"]  # ::1


def test_local_rendezvous_store_listens_on_loopback_only(local_env):
    """Item 16: with MASTER_ADDR=127.0.0.1 (the local backend), rank 0's store, waiting for its
    peer, must not listen on every interface."""
    port = _free_port()
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK="0")
    proc = subprocess.Popen([sys.executable, "-c", "from cxrjobs.train.distributed import init_distributed;"
                             "init_distributed(60)"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (addrs := _listening(port)):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "rank 0 never listened"
            time.sleep(0.1)
        time.sleep(0.5)  # every listening socket of the store is up
        addrs = _listening(port)
        assert all(_is_loopback_hex(a) for a in addrs), f"rendezvous store listens on {addrs}"
    finally:
        proc.kill()
        proc.wait()
    # On a cluster MASTER_ADDR is the master pod's address: there the store binds as before.
    from cxrjobs.train.distributed import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("10.1.2.3")


EVAL_SCRIPT = """
import json, os, sys, torch
from cxrjobs.storage import open_store
from cxrjobs.specs.train import TrainSpec
from cxrjobs.train.distributed import init_distributed, shutdown
from cxrjobs.train.loop import Run, Trainer
spec = TrainSpec.model_validate_json(sys.argv[1])
ctx = init_distributed(60)
trainer = Trainer(spec, Run(open_store(), "ddp-eval"), ctx, log=lambda m: None)
trainer.model.load_state_dict(torch.load(sys.argv[2], weights_only=True)["model"])
val = trainer.evaluate("val")
if ctx.is_main:
    print("METRICS " + json.dumps(val))
shutdown(ctx)
"""


def test_ddp_gathered_validation_metrics_equal_single_process(phantom_nih_64, local_env, tmp_path):
    """Item 20: the same checkpoint scored by 2 DDP replicas (predictions gathered, no sampler
    padding) and by one process gives the same validation metrics."""
    from cxrjobs.specs.train import TrainSpec
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import Run, Trainer

    spec = TrainSpec(data=str(phantom_nih_64), epochs=1, batch_size=32, optimizer="adam", lr=1e-3,
                     threads=1, bootstrap=20, evaluate_test=False)
    trained = Trainer(spec, Run(local_env, "ddp-eval"), DistContext(0, 1, torch.device("cpu"), None),
                      log=lambda m: None)
    trained.fit()
    ckpt = local_env.local_path(join_key("runs", "ddp-eval", "checkpoints/latest.pt"))

    def score(world):
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, "-c", EVAL_SCRIPT, spec.model_dump_json(), str(ckpt)],
                                  env=dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                           WORLD_SIZE=str(world), RANK=str(r)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(world)]
        outs = [p.communicate(timeout=180) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        line = next(l for l in outs[0][0].splitlines() if l.startswith("METRICS "))
        return json.loads(line[len("METRICS "):])

    single, ddp = score(1), score(2)
    n_val = int((__import__("pandas").read_csv(phantom_nih_64 / "index.csv")["split"] == "val").sum())
    assert single["split"] == ddp["split"] == "val"
    assert single["images"] == ddp["images"] == n_val  # every image once: no padding, none lost
    assert single["patients"] == ddp["patients"]
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-7)
    assert ddp["mean_auroc"]["value"] == pytest.approx(single["mean_auroc"]["value"], abs=1e-6)
    assert ddp["mean_auroc"]["ci"] == pytest.approx(single["mean_auroc"]["ci"], abs=1e-6)
