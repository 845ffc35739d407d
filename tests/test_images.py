"""The container images, built and run on a real Docker engine (`make images-test`).

No registry is reachable here, so the images are built offline (images/build.py --offline): the
base from debootstrap + `docker import`, the wheels from a host-side `pip download`. Each job's
containers are the Kubernetes backend's rendered pods translated to `docker run` (image, command,
env, read-only root, uid 10001, no capabilities, no-new-privileges, tmpfs for the emptyDirs), on a
user-defined bridge network, named `<job>-<index>` and aliased `<job>-<index>.<service>` like an
Indexed Job's pods behind the headless Service. The S3 server (moto) listens on that network's
gateway address, where the containers and this process both reach it.

The tests that use the engine take minutes (builds are cached by the engine after the first run)
and need root and a Docker engine (dockerd is started when none answers): they are skipped unless
CXRJOBS_IMAGES_TEST=1, which `make images-test` sets. The first tests need neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

from conftest import start_moto, stop_process

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.images
DOCKER = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # a first run builds every image (minutes); later runs hit the cache
    pytest.mark.skipif(os.environ.get("CXRJOBS_IMAGES_TEST") != "1",
                       reason="container image tests build images with a Docker engine (minutes, root): "
                              "run `make images-test` (sets CXRJOBS_IMAGES_TEST=1)"),
]


def docker(f):
    for mark in DOCKER:
        f = mark(f)
    return f
DIGEST = re.compile(r"rank (\d+) final weights sha256 ([0-9a-f]{64})")
ACCESS, SECRET = "testing", "testing-secret-0123456789"


def load_build():
    spec = importlib.util.spec_from_file_location("cxrjobs_images_build", ROOT / "images" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


B = load_build()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    started = B.start_dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    try:
        yield
    finally:
        B.stop_dockerd(started)


@pytest.fixture(scope="module")
def images(engine):
    """{target: image} built offline; the build rows (sizes, seconds) go to the test log."""
    rows = B.build(offline=True)
    for r in rows:
        print(f"{r['image']}: {r['bytes'] / 1e6:.0f} MB, {r['seconds']:.0f} s")
    return {r["target"]: r["image"] for r in rows}


@pytest.fixture(scope="module")
def bridge(engine, tmp_path_factory):
    """(network name, S3 endpoint on its gateway): containers and this process reach the same server."""
    net = f"cxrjobs-it-{uuid.uuid4().hex[:8]}"
    gateway = B.network_create(net)
    proc = None
    try:
        proc, endpoint = start_moto(gateway, tmp_path_factory.mktemp("moto") / "moto.log")
        yield net, endpoint
    finally:
        if proc:
            stop_process(proc)
        B.network_remove(net)


@pytest.fixture
def store_env(bridge, monkeypatch):
    """This process's settings for a fresh bucket on the bridge's S3 server; returns the store."""
    from cxrjobs.storage import open_store

    _, endpoint = bridge
    monkeypatch.setenv("NO_PROXY", endpoint.split(":")[0])
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", f"s3://cxr-{uuid.uuid4().hex[:12]}/runs")
    monkeypatch.setenv("CXRJOBS_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("CXRJOBS_S3_SECURE", "0")
    monkeypatch.setenv("CXRJOBS_S3_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("CXRJOBS_S3_SECRET_KEY", SECRET)
    return open_store()


pod_of = B.rendered_pod


def run_job(job, net: str, timeout: float, volumes=()) -> list[str]:
    """Store the job's spec, then run each pod of its rendered Indexed Job as container
    `<job>-<i>` (aliased `<job>-<i>.<service>`, the name the headless Service gives it), with
    the pod's image, command, env, security settings and scratch volumes; returns their logs."""
    from cxrjobs.storage import join_key, open_store

    open_store().put_text(join_key("runs", job.name, "spec.json"), job.model_dump_json(indent=1))
    pod, service = pod_of(job)
    commands = B.job_containers(job, net, volumes)
    if service:
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == f"{job.name}-0.{service['metadata']['name']}"
    names = B.start_containers(commands, {"CXRJOBS_S3_ACCESS_KEY": ACCESS, "CXRJOBS_S3_SECRET_KEY": SECRET})
    try:
        codes = B.wait_containers(names, timeout)
        logs = [B.container_logs(n) for n in names]
    finally:
        B.remove_containers(names)
    for i, (code, log) in enumerate(zip(codes, logs)):
        assert code == 0, f"replica {i} exited {code}; its log:\n{log[-4000:]}"
    return logs


@pytest.fixture(scope="module")
def pod_flags():
    """The rendered pods' security settings and scratch volumes as docker run flags."""
    from cxrjobs.jobs.resolve import resolve_job

    job = resolve_job("nih-train", None, dict(name="flags", replicas=2, train=dict(data="datasets/x")))
    flags = B.pod_flags(pod_of(job)[0])
    for flag in ("--read-only", "no-new-privileges", "ALL", "10001:10001", "/tmp:rw,exec,mode=1777"):
        assert flag in flags, flags
    return flags


# --- without an engine ----------------------------------------------------------------------------

def test_entrypoint_help_lists_the_environment_it_reads():
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "3", "CXRJOBS_S3_SECRET_KEY": SECRET}
    env.pop("MASTER_ADDR", None)
    res = subprocess.run([sys.executable, "-m", "cxrjobs.jobs.entrypoint", "--help"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Example:" in res.stdout and "JOB_COMPLETION_INDEX" in res.stdout
    assert "  WORLD_SIZE=3" in res.stdout and "  MASTER_ADDR=(unset)" in res.stdout
    assert "CXRJOBS_S3_SECRET_KEY=(set, hidden)" in res.stdout and SECRET not in res.stdout
    bad = subprocess.run([sys.executable, "-m", "cxrjobs.jobs.entrypoint", "--rank", "1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "reads only its environment" in bad.stderr


def test_image_names_and_build_inputs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert B.image_name("train") == f"cxrjobs-train:{version}"
    assert B.image_name("tune", "registry.example.com/ml/") == f"registry.example.com/ml/cxrjobs-tune:{version}"
    # the names the Kubernetes backend puts in its pods
    from cxrjobs.backends.kubernetes.options import KubeOptions

    opts = KubeOptions(image_repository="registry.example.com/ml")
    assert all(opts.image(f"cxrjobs-{t}") == B.image_name(t, "registry.example.com/ml") for t in B.TARGETS)
    dockerfile = (ROOT / "images" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in dockerfile
    assert {f"AS {t}" for t in B.TARGETS} <= set(re.findall(r"AS [a-z-]+", dockerfile))
    assert dockerfile.count("USER 10001:10001") == len(B.TARGETS)
    # every requirement pinned exactly
    for req in (ROOT / "images" / "requirements").glob("*.txt"):
        for line in req.read_text().splitlines():
            if line and not line.startswith(("#", "-r ")):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9.+]+", line), f"{req.name}: {line}"
    # the build context is a whitelist: no .git, venvs, stores or data
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:4] == ["!pyproject.toml", "!README.md", "!cxrjobs/", "!images/"]


# --- the images themselves ------------------------------------------------------------------------

@docker
@pytest.mark.parametrize("target", ["preprocess", "train", "tune"])
def test_entrypoint_help_runs_as_a_pod_would(images, pod_flags, target):
    image = images[target]
    cfg = json.loads(B.sh(["docker", "image", "inspect", "--format", "{{json .Config}}", image]).stdout)
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["python", "-m", "cxrjobs.jobs.entrypoint"]
    assert not any(k.startswith("CXRJOBS_S3_") for k in (e.split("=")[0] for e in cfg["Env"])), cfg["Env"]
    res = B.sh(["docker", "run", "--rm", *pod_flags, "--env", "WORLD_SIZE=4", "--env", "CXRJOBS_S3_SECRET_KEY",
                image, "--help"], env={**os.environ, "CXRJOBS_S3_SECRET_KEY": SECRET})
    assert "CXRJOBS_RUN_ID" in res.stdout and "MASTER_ADDR" in res.stdout
    assert "  WORLD_SIZE=4" in res.stdout                      # it shows what it reads
    assert "CXRJOBS_S3_SECRET_KEY=(set, hidden)" in res.stdout and SECRET not in res.stdout
    # uid 10001 and a read-only root: only /tmp takes writes
    probe = ("import os, pathlib; print(os.getuid());"
             "pathlib.Path('/tmp/x').write_text('ok');"
             "import sys\ntry: open('/opt/venv/x', 'w')\nexcept OSError as e: print('ro', e.errno)")
    out = B.sh(["docker", "run", "--rm", *pod_flags, "--entrypoint", "python", image, "-c", probe]).stdout.split()
    assert out[0] == "10001" and out[1] == "ro"


@docker
def test_preprocess_image_has_no_torch_and_train_has_a_cpu_build(images, pod_flags):
    """The offline build's torch is the CPU wheel reachable here, without torchvision
    (images/build.py OFFLINE_TORCH says why); `make images` builds the pinned pair."""
    no = B.sh(["docker", "run", "--rm", *pod_flags, "--entrypoint", "python", images["preprocess"], "-c",
               "import torch"], check=False)
    assert no.returncode != 0 and "No module named 'torch'" in no.stderr
    v = B.sh(["docker", "run", "--rm", *pod_flags, "--entrypoint", "python", images["train"], "-c",
              "import importlib.util as u, torch; print(torch.__version__, torch.version.cuda, "
              "torch.cuda.is_available(), u.find_spec('torchvision') is not None)"])
    version, cuda, available, torchvision = v.stdout.split()
    assert version == B.OFFLINE_TORCH[0] and cuda == "None" and available == "False", v.stdout
    assert torchvision == str(bool(B.OFFLINE_TORCH[1]))
    # what evaluate jobs (run in the train image) import: metrics, plots, the HTML report
    B.sh(["docker", "run", "--rm", *pod_flags, "--entrypoint", "python", images["train"], "-c",
          "import cxrjobs.eval.metrics, cxrjobs.eval.plots, sklearn.metrics, matplotlib.pyplot, jinja2"])
    ray = B.sh(["docker", "run", "--rm", *pod_flags, "--entrypoint", "python", images["tune"], "-c",
                "import ray; print(ray.__version__)"])
    assert ray.stdout.strip() == "2.60.0"


# --- jobs in containers ---------------------------------------------------------------------------

def _raw_nih(tmp_path, count=48) -> Path:
    from cxrjobs.data.synth import synth_nih

    raw = tmp_path / "raw"
    synth_nih(raw, count, size=96, seed=4)
    for p in raw.rglob("*"):  # the container's uid 10001 reads it
        p.chmod(0o755 if p.is_dir() else 0o644)
    raw.chmod(0o755)
    return raw


def _check_dataset(store, prefix: str, raw_count: int) -> dict:
    from cxrjobs.storage import join_key

    manifest = json.loads(store.get_text(join_key(prefix, "manifest.json")))
    assert manifest["images"] + manifest["rejected"] == raw_count
    assert manifest["images"] > raw_count // 2
    assert store.exists(join_key(prefix, "index.csv")) and store.exists(join_key(prefix, "rejects.csv"))
    return manifest


@docker
def test_preprocess_job_two_containers_write_shards_to_s3(images, bridge, store_env, tmp_path):
    """Raw data on a read-only volume (`--volume` on Kubernetes), shards to the S3 store."""
    from cxrjobs.jobs.resolve import resolve_job

    raw = _raw_nih(tmp_path)
    job = resolve_job("preprocess", None, dict(
        name=f"prep-vol-{uuid.uuid4().hex[:6]}", replicas=2,
        preprocess=dict(spec=dict(source="/data/raw", format="nih", size=64, shard_size=8),
                        output="datasets/phantom-vol")))
    assert images["preprocess"] == pod_of(job)[0]["containers"][0]["image"]
    logs = run_job(job, bridge[0], 300, volumes=(f"{raw}:/data/raw:ro",))
    assert all("slice" in log for log in logs)
    assert any("merged" in log for log in logs)
    _check_dataset(store_env, "datasets/phantom-vol", 48)


@docker
def test_preprocess_job_reads_raw_data_from_s3(images, bridge, store_env, tmp_path):
    """`cxrjobs data upload RAW --name raw/NAME`, then a preprocess job whose source is
    store://raw/NAME: each container lists its slice in the store and downloads only that."""
    from cxrjobs.jobs.resolve import resolve_job
    from cxrjobs.storage.sync import upload_dir

    raw = _raw_nih(tmp_path)
    upload_dir(raw, store_env, "raw/phantom", progress=False)
    source = dict(source="store://raw/phantom", format="nih", size=64, shard_size=8)
    job = resolve_job("preprocess", None, dict(
        name=f"prep-s3-{uuid.uuid4().hex[:6]}", replicas=2,
        preprocess=dict(spec=source, output="datasets/phantom-s3")))
    logs = run_job(job, bridge[0], 300)
    assert any("merged" in log for log in logs)
    _check_dataset(store_env, "datasets/phantom-s3", 48)


@docker
def test_ddp_training_two_containers_end_in_sync(images, bridge, store_env, phantom_nih_64):
    """Two containers `<job>-0` and `<job>-1` running the rendered pods, MASTER_ADDR=<job>-0.<job>
    as rendered (pod 0's name under the headless Service), torch.distributed over gloo between
    them, data from and checkpoints to S3; both end with the same weights."""
    from cxrjobs.jobs.resolve import resolve_job
    from cxrjobs.storage import join_key
    from cxrjobs.storage.sync import upload_dir

    upload_dir(phantom_nih_64, store_env, "datasets/phantom64", progress=False)
    job = resolve_job("nih-train", None, dict(
        name=f"ddp-{uuid.uuid4().hex[:6]}", replicas=2, backoff_limit=0, rendezvous_timeout=120,
        train=dict(data="datasets/phantom64", epochs=2, batch_size=32, optimizer="adam", lr=1e-3,
                   threads=1, bootstrap=20)))
    assert images["train"] == pod_of(job)[0]["containers"][0]["image"]
    logs = run_job(job, bridge[0], 600)
    assert "gloo" in logs[0] and "rendezvous done" in logs[1]
    digests = {int(r): d for log in logs for r, d in DIGEST.findall(log)}
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests
    metrics = [json.loads(x) for x in store_env.get_text(join_key("runs", job.name, "metrics.jsonl")).splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert store_env.exists(join_key("runs", job.name, "artifacts", "result.json"))
    assert store_env.exists(join_key("runs", job.name, "checkpoints", "latest.pt"))
    # Each pod mirrored its output into the store (the Job and its pods are deleted after --ttl).
    for rank in (0, 1):
        mirrored = store_env.get_text(join_key("runs", job.name, "logs", f"replica-{rank}.log"))
        assert mirrored.startswith("=== attempt started ") and DIGEST.findall(mirrored) == [(str(rank), digests[rank])]
