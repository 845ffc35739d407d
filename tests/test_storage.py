"""Object stores (local directory and S3 via moto) and directory sync."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from cxrjobs.errors import ConfigError, StoreError
from cxrjobs.storage import LocalStore, open_store
from cxrjobs.storage.s3 import S3Store
from cxrjobs.storage.sync import MANIFEST, download_prefix, materialize, upload_dir


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_env")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "b.bin": os.urandom(1000),
        "empty": b"",
        "sub/c.txt": b"gamma" * 100,
        "sub/deep/d.npy": os.urandom(50_000),
        "sub/deep/e.json": b'{"e": 1}',
        "big.bin": os.urandom(6 * 1024 * 1024 + 123),  # > 5 MiB: a multipart upload on S3
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}


def test_bytes_and_file_roundtrip(store, tmp_path):
    info = store.put_bytes("x/y.txt", b"hello")
    assert (info.key, info.size) == ("x/y.txt", 5)
    assert store.get_bytes("x/y.txt") == b"hello"
    assert store.put_text("t.txt", "héllo").size == len("héllo".encode())
    assert store.get_text("t.txt") == "héllo"

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    assert store.put_file("f/src.bin", src).size == 300_000
    dst = tmp_path / "out" / "nested" / "copy.bin"
    store.get_file("f/src.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert not [p for p in dst.parent.iterdir() if p.name.endswith(".tmp")]
    store.put_bytes("x/y.txt", b"replaced")  # overwrite
    assert store.get_bytes("x/y.txt") == b"replaced"


def test_stat_and_checksum(store):
    data = os.urandom(4096)
    store.put_bytes("d/obj", data)
    info = store.stat("d/obj")
    assert (info.key, info.size) == ("d/obj", 4096)
    assert info.sha256 in (None, sha(data))  # local stat does not hash; S3 reads it from metadata
    if isinstance(store, S3Store):
        assert info.sha256 == sha(data)
    assert store.checksum("d/obj") == sha(data)
    assert store.stat("d/none") is None and store.checksum("d/none") is None
    assert store.exists("d/obj") and not store.exists("d")
    store.delete("d/obj")
    assert store.stat("d/obj") is None
    store.delete("d/obj")  # deleting a missing key is not an error


def test_list_sorted_and_prefix(store):
    for k in ["b/2", "a/10", "a/1", "ab/x", "a/sub/3", "z"]:
        store.put_bytes(k, k.encode())
    assert [o.key for o in store.list()] == ["a/1", "a/10", "a/sub/3", "ab/x", "b/2", "z"]
    assert [o.key for o in store.list("a")] == ["a/1", "a/10", "a/sub/3"]  # not "ab/x"
    assert [o.key for o in store.list("a/")] == ["a/1", "a/10", "a/sub/3"]
    assert [(o.key, o.size) for o in store.list("a/sub/3")] == [("a/sub/3", 7)]
    assert list(store.list("nope")) == []


def test_missing_key_names_key_and_store(store, tmp_path):
    for call in (lambda: store.get_bytes("no/such.bin"),
                 lambda: store.get_file("no/such.bin", tmp_path / "dl" / "x")):
        with pytest.raises(StoreError) as e:
            call()
        assert "no/such.bin" in str(e.value) and store.url in str(e.value)
    assert not (tmp_path / "dl" / "x").exists()


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\b", "", "/"])
def test_bad_keys_rejected(store, key):
    with pytest.raises(StoreError):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreError):
        store.get_bytes(key)
    with pytest.raises(StoreError):
        store.stat(key)


def test_upload_and_download_tree(store, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    (src / ".part.bin.tmp").write_bytes(b"in-flight write")  # must not be uploaded
    up = upload_dir(src, store, "datasets/toy", workers=4, progress=False)
    assert (up.transferred, up.skipped) == (len(files), 0)
    assert up.bytes == sum(map(len, files.values()))
    assert [o.key for o in store.list("datasets/toy")] == sorted(f"datasets/toy/{k}" for k in files)
    assert store.stat("datasets/toy/big.bin").size == len(files["big.bin"])
    assert store.checksum("datasets/toy/big.bin") == sha(files["big.bin"])

    again = upload_dir(src, store, "datasets/toy", progress=False)
    assert (again.transferred, again.skipped, again.bytes) == (0, len(files), 0)

    dst = tmp_path / "dst"
    down = download_prefix(store, "datasets/toy", dst, workers=4, progress=True)
    assert (down.transferred, down.skipped) == (len(files), 0)
    assert read_tree(dst) == files
    assert (dst / MANIFEST).is_file()
    assert "transferred" in down.line()

    second = download_prefix(store, "datasets/toy", dst, progress=False)
    assert (second.transferred, second.skipped) == (0, len(files))

    # Same size, different content: the manifest's mtime no longer matches, so it is re-hashed
    # and re-downloaded.
    (dst / "sub/c.txt").write_bytes(b"GAMMA" * 100)
    os.utime(dst / "sub/c.txt", ns=(1, 1))
    third = download_prefix(store, "datasets/toy", dst, progress=False)
    assert (third.transferred, third.skipped) == (1, len(files) - 1)
    assert read_tree(dst) == files


def test_interrupted_upload_resumes(store, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    seen = []

    def crash_after_three(key):
        seen.append(key)
        if len(seen) == 3:
            raise KeyboardInterrupt("simulated interruption")

    # One worker makes "exactly three objects made it" deterministic.
    with pytest.raises(KeyboardInterrupt):
        upload_dir(src, store, "ds", workers=1, progress=False, on_object=crash_after_three)
    assert len(list(store.list("ds"))) == 3

    resumed = upload_dir(src, store, "ds", workers=4, progress=False)
    assert (resumed.transferred, resumed.skipped) == (len(files) - 3, 3)
    dst = tmp_path / "dst"
    download_prefix(store, "ds", dst, progress=False)
    assert read_tree(dst) == files


def test_interrupted_parallel_upload_stops_and_resumes(store, tmp_path):
    src = tmp_path / "src"
    files = {f"f{i:02d}": os.urandom(2000) for i in range(40)}
    for k, v in files.items():
        (src / k).parent.mkdir(parents=True, exist_ok=True)
        (src / k).write_bytes(v)
    calls = []

    def boom(key):
        calls.append(key)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        upload_dir(src, store, "p", workers=4, progress=False, on_object=boom)
    uploaded = len(list(store.list("p")))
    assert 3 <= uploaded < len(files)  # in-flight ones may finish, but the rest is cancelled
    resumed = upload_dir(src, store, "p", workers=4, progress=False)
    assert (resumed.transferred, resumed.skipped) == (len(files) - uploaded, uploaded)


def test_materialize(store, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    upload_dir(src, store, "datasets/toy", progress=False)
    cache = tmp_path / "cache"
    path = materialize(store, "datasets/toy", cache)
    assert read_tree(path) == files
    if isinstance(store, LocalStore):
        assert path == store.root / "datasets/toy"  # in place: no copy
        assert not cache.exists()
    else:
        assert path.is_relative_to(cache)
        mtime = (path / "big.bin").stat().st_mtime_ns
        assert materialize(store, "datasets/toy", cache) == path
        assert (path / "big.bin").stat().st_mtime_ns == mtime  # cached, not downloaded again
    one = materialize(store, "datasets/toy/sub/c.txt", cache)
    assert one.is_file() and one.read_bytes() == files["sub/c.txt"]
    with pytest.raises(StoreError, match="nothing under"):
        materialize(store, "datasets/missing", cache)


def test_s3_missing_credentials_is_config_error(monkeypatch):
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", "s3://bucket/prefix")
    monkeypatch.setenv("CXRJOBS_S3_ENDPOINT", "127.0.0.1:9")
    monkeypatch.delenv("CXRJOBS_S3_ACCESS_KEY", raising=False)
    monkeypatch.setenv("CXRJOBS_S3_SECRET_KEY", "top-secret-value-42")
    with pytest.raises(ConfigError) as e:
        open_store()
    assert "CXRJOBS_S3_ACCESS_KEY" in str(e.value)
    assert "top-secret-value-42" not in str(e.value)


def test_secret_never_shown(s3_env, s3_server, tmp_path):
    secret = os.environ["CXRJOBS_S3_SECRET_KEY"]
    store = s3_env
    assert store.url.startswith("s3://cxr-") and store.url.endswith("/runs")
    for text in (repr(store), str(store), repr(vars(store))):
        assert secret not in text
    with pytest.raises(StoreError) as e:
        store.get_file("missing", tmp_path / "x")
    assert secret not in str(e.value) and secret not in repr(e.value)
    with pytest.raises(StoreError) as e:  # an invalid bucket name fails before any request
        S3Store(endpoint=s3_server, bucket="Bad_Bucket", access_key="a", secret_key=secret)
    assert secret not in str(e.value)


# ----------------------------------------------------------------------------- endpoint scheme (issue 6.17)

@pytest.mark.parametrize("endpoint,secure,want", [
    ("http://minio:9000", None, ("minio:9000", False)),
    ("https://minio.example.org:443/", None, ("minio.example.org:443", True)),
    ("HTTPS://minio:9000", "1", ("minio:9000", True)),
    ("minio:9000", "1", ("minio:9000", True)),
    ("minio:9000", None, ("minio:9000", False)),
])
def test_endpoint_scheme_sets_tls(monkeypatch, endpoint, secure, want):
    from cxrjobs.config import load_settings

    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", "s3://bucket/prefix")
    monkeypatch.setenv("CXRJOBS_S3_ENDPOINT", endpoint)
    if secure is None:
        monkeypatch.delenv("CXRJOBS_S3_SECURE", raising=False)
    else:
        monkeypatch.setenv("CXRJOBS_S3_SECURE", secure)
    s = load_settings()
    assert (s.s3_endpoint, s.s3_secure) == want
    # what replicas get is the normalised pair, so a pod does not parse it again
    assert s.job_env()["CXRJOBS_S3_ENDPOINT"] == want[0]


@pytest.mark.parametrize("endpoint,secure,words", [
    ("ftp://minio:9000", None, ["scheme 'ftp'", "http://host:port"]),
    ("http://minio:9000/bucket", None, ["no path"]),
    ("http://", None, ["expected host:port"]),
    ("https://minio:9000", "0", ["says https", "CXRJOBS_S3_SECURE"]),
    ("http://minio:9000", "1", ["says http", "TLS on"]),
])
def test_endpoint_errors_name_the_variable(monkeypatch, endpoint, secure, words):
    from cxrjobs.config import load_settings

    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", "s3://bucket/prefix")
    monkeypatch.setenv("CXRJOBS_S3_ENDPOINT", endpoint)
    if secure is None:
        monkeypatch.delenv("CXRJOBS_S3_SECURE", raising=False)
    else:
        monkeypatch.setenv("CXRJOBS_S3_SECURE", secure)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "CXRJOBS_S3_ENDPOINT" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_store_with_an_http_endpoint_works(s3_server, monkeypatch):
    """The scheme is stripped before the client sees it (minio rejects 'http://' in an endpoint)."""
    monkeypatch.setenv("CXRJOBS_S3_ENDPOINT", f"http://{s3_server}")
    monkeypatch.delenv("CXRJOBS_S3_SECURE", raising=False)
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("CXRJOBS_STORE", "s3://cxr-scheme-test/x")
    monkeypatch.setenv("CXRJOBS_S3_ACCESS_KEY", "testing")
    monkeypatch.setenv("CXRJOBS_S3_SECRET_KEY", "testing-secret-0123456789")
    store = open_store()
    store.put_text("k", "v")
    assert store.get_text("k") == "v"


def test_local_store_root_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        LocalStore(f)
    with pytest.raises(StoreError, match="is a file, not a folder"):
        LocalStore(tmp_path).put_text("f/inner.json", "{}")


def test_dataset_prefix_areas():
    from cxrjobs.storage.sync import dataset_prefix

    assert dataset_prefix("nih") == "datasets/nih"
    assert dataset_prefix("datasets/nih") == "datasets/nih"
    assert dataset_prefix("raw/nih") == "raw/nih"
    for bad in ("raw/", "runs/x", "", "raw/../../x"):
        with pytest.raises(StoreError):
            dataset_prefix(bad)


def test_open_location(tmp_path, monkeypatch):
    from cxrjobs.storage import open_location

    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    monkeypatch.setenv("CXRJOBS_STORE", str(tmp_path))
    store, key = open_location("store://raw/x/")
    assert isinstance(store, LocalStore) and key == "raw/x"
    for bad in ("store://", "store:///", "s3://", "s3://bucket", "s3:///x", "file://x"):
        with pytest.raises(ConfigError):
            open_location(bad)


def test_upload_follows_symlinked_folders(store, tmp_path):
    """A raw NIH folder whose images_002 is a link to another disk uploads whole (the store copy
    must preprocess like the folder does); a link back up the tree is entered once."""
    elsewhere = tmp_path / "disk2" / "images_002"
    (elsewhere / "images").mkdir(parents=True)
    (elsewhere / "images" / "x.png").write_bytes(b"png")
    root = tmp_path / "raw"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text("csv")
    (root / "images_002").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(root, target_is_directory=True)
    upload_dir(root, store, "raw/nih", progress=False)
    keys = sorted(o.key for o in store.list("raw/nih"))
    assert keys == ["raw/nih/Data_Entry_2017.csv", "raw/nih/images_002/images/x.png"]


def test_reads_never_create_a_bucket_and_say_it_is_missing(s3_server, tmp_path, caplog):
    """Every command opened the store and so created its bucket: a typo in CXRJOBS_STORE left a
    stray bucket behind even for `data inspect`. Now only a write makes it."""
    import uuid

    from minio import Minio

    name = f"typo-{uuid.uuid4().hex[:12]}"
    store = S3Store(endpoint=s3_server, bucket=name, prefix="x", access_key="a", secret_key="b")
    # Absence, not an error: write paths ask these first (resumable upload, rerun checks).
    assert store.stat("k") is None and list(store.list("")) == [] and not store.exists("k")
    store.delete("k")
    what_to_do = f"bucket '{name}' does not exist at {s3_server}. If the name is right, create it"
    with pytest.raises(StoreError, match=what_to_do) as e:
        store.get_bytes("k")
    assert f"mc mb ALIAS/{name}" in str(e.value) and "fix CXRJOBS_STORE" in str(e.value)
    with pytest.raises(StoreError, match=what_to_do):
        store.get_file("k", tmp_path / "k")
    # What `data inspect` and jobs' --data report: it said only "nothing under 'datasets/x'".
    with pytest.raises(StoreError, match=f"nothing under 'datasets/x' in store s3://{name}/x: {what_to_do}"):
        materialize(store, "datasets/x", tmp_path / "cache")
    client = Minio(s3_server, access_key="a", secret_key="b", secure=False, region="us-east-1")
    assert not client.bucket_exists(name)
    # The first write makes it, and says so.
    with caplog.at_level(logging.WARNING, logger="cxrjobs.storage.s3"):
        store.put_bytes("k", b"v")
    assert f"bucket '{name}' does not exist at {s3_server}: creating it" in caplog.text
    assert client.bucket_exists(name) and store.get_bytes("k") == b"v"
    # Once it exists, "nothing under" is only that.
    with pytest.raises(StoreError) as e:
        materialize(store, "datasets/x", tmp_path / "cache")
    assert str(e.value) == f"nothing under 'datasets/x' in store s3://{name}/x"


def test_cli_reads_of_a_missing_bucket_name_it_and_make_nothing(s3_env, s3_server, tmp_path, monkeypatch, capsys):
    """`CXRJOBS_STORE=s3://nobucket2/x cxrjobs data inspect store://datasets/covid-32` answered
    "nothing under 'datasets/covid-32'" and created the bucket."""
    import sys

    from minio import Minio

    from cxrjobs.cli import main

    monkeypatch.chdir(tmp_path)
    missing = f"in store {s3_env.url}: bucket '{s3_env.bucket}' does not exist at {s3_server}"
    for argv, said in (
            (["data", "inspect", "store://datasets/covid-32"], f"error: nothing under 'datasets/covid-32' {missing}"),
            # `collect` said only "no run 'r1' in store s3://...".
            (["collect", "r1", "-o", str(tmp_path / "out")], f"no run 'r1': nothing under 'runs/r1/' {missing}")):
        monkeypatch.setattr(sys, "argv", ["cxrjobs", *argv])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err and said in err, err
    client = Minio(s3_server, access_key="a", secret_key="b", secure=False, region="us-east-1")
    assert not client.bucket_exists(s3_env.bucket)


def test_a_bucket_that_cannot_be_made_is_named(s3_server, monkeypatch):
    """A write to a missing bucket that the server refuses to create says which and what to do."""
    from minio.error import S3Error

    store = S3Store(endpoint=s3_server, bucket="cxr-denied", access_key="a", secret_key="b")

    def denied(bucket, *a, **k):
        raise S3Error(None, "AccessDenied", "Access Denied.", f"/{bucket}", "r", "h")

    monkeypatch.setattr(store._client, "make_bucket", denied)
    with pytest.raises(StoreError, match="cannot create bucket 'cxr-denied' at .*AccessDenied.*mc mb ALIAS/cxr-denied"):
        store.put_bytes("k", b"v")
