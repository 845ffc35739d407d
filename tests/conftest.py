"""Shared test fixtures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest


# --- S3 (storage) -----------------------------------------------------------------------------

def start_moto(host: str, log) -> tuple[subprocess.Popen, str]:
    """moto's standalone S3 server on host:<free port>; returns (process, "host:port").
    A plain function: tests/test_images.py and benchmarks/bench_images.py start one on a Docker
    bridge's gateway address, where containers reach it."""
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    # No proxies: the client must talk to the server directly.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return proc, f"{host}:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"moto S3 server did not start on {host}:{port} within 30 s "
                            f"(exit code {proc.returncode}); its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 HTTP server on 127.0.0.1 for the session; yields its endpoint "127.0.0.1:PORT".

    It is moto's standalone server, because no MinIO server binary is installable here; the
    `minio` client that S3Store uses speaks real S3 HTTP to it, so the same code path runs as
    against MinIO (signing, multipart uploads, user metadata, error codes)."""
    try:
        proc, endpoint = start_moto("127.0.0.1", tmp_path_factory.mktemp("moto") / "moto.log")
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield endpoint
    finally:
        stop_process(proc)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment for an S3 store in a fresh bucket on the moto server; returns that store."""
    from cxrjobs.storage import open_store

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", f"s3://cxr-{uuid.uuid4().hex[:16]}/runs")
    monkeypatch.setenv("CXRJOBS_S3_ENDPOINT", s3_server)
    monkeypatch.setenv("CXRJOBS_S3_SECURE", "0")
    monkeypatch.setenv("CXRJOBS_S3_ACCESS_KEY", "testing")
    monkeypatch.setenv("CXRJOBS_S3_SECRET_KEY", "testing-secret-0123456789")
    return open_store()


# --- data and local runs ------------------------------------------------------------------------

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data: real chest X-rays laid beside the checkout (absent in a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is provided beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_nih_64(tmp_path_factory):
    """A preprocessed phantom NIH dataset (600 images, 64 px): small enough for multi-process
    training tests, with class patterns a small CNN learns."""
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.data.synth import synth_nih
    from cxrjobs.storage import LocalStore

    root = tmp_path_factory.mktemp("phantom")
    synth_nih(root / "raw", 600, size=128, seed=1)
    spec = PreprocessSpec(source=str(root / "raw"), format="nih", size=64)
    preprocess(spec, LocalStore(root / "ds64"), "", show_progress=False)
    return root / "ds64"


@pytest.fixture
def local_env(tmp_path, monkeypatch):
    """A private local store and backend state directory; returns the store."""
    from cxrjobs.storage import open_store

    monkeypatch.chdir(tmp_path)
    for name in ("CXRJOBS_CONFIG", "CXRJOBS_S3_ENDPOINT", "CXRJOBS_CACHE_DIR", "CXRJOBS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", str(tmp_path / "store"))
    return open_store()


@pytest.fixture(scope="session")
def phantom_covid_32(tmp_path_factory):
    """A preprocessed phantom COVID dataset (160 images, 32 px): the smallest real training input
    (binary objective), for tests that run many short trainings (Tune trials)."""
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.data.synth import synth_covid
    from cxrjobs.storage import LocalStore

    root = tmp_path_factory.mktemp("phantom-covid")
    synth_covid(root / "raw", 160, size=64, seed=3)
    spec = PreprocessSpec(source=str(root / "raw"), format="covid", size=32, fractions=(0.6, 0.2, 0.2))
    preprocess(spec, LocalStore(root / "ds32"), "", show_progress=False)
    return root / "ds32"


# --- Kubernetes ----------------------------------------------------------------------------------

@pytest.fixture
def ray_kind():
    """A test-only job kind whose workload is a KubeRay RayJob (a train payload), registered for
    one test: RayJob rendering is tested without depending on which real kinds use it."""
    from cxrjobs.jobs.registry import KINDS, JobKind, register

    kind = register(JobKind("ray-test", "train", "cxrjobs.jobs.runners:run_train", False,
                            "test-only RayJob kind", workload="ray-job"))
    try:
        yield kind.name
    finally:
        KINDS.pop(kind.name, None)
