"""The preprocess JOB (replicas on the local backend) on phantom data, so it runs in any clone,
and from a raw dataset in the object store (the real S3 server: moto, see conftest.s3_server):
each replica lists the objects, reads the CSV, and downloads only its own shards' images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrjobs import api
from cxrjobs.backends import get_backend
from cxrjobs.cli import app
from cxrjobs.data.preprocess import plan, preprocess, run_slice
from cxrjobs.data.synth import synth_nih
from cxrjobs.jobs.resolve import resolve_job
from cxrjobs.specs.preprocess import PreprocessSpec
from cxrjobs.storage import LocalStore

runner = CliRunner()
COUNT, SIZE, SHARD = 40, 64, 8


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A raw phantom NIH folder (with an RGBA, a 16-bit, a truncated and an empty file)."""
    return synth_nih(tmp_path_factory.mktemp("raw") / "nih", COUNT, size=96, seed=4).out


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory):
    """The same data preprocessed in this process from the local folder."""
    out = tmp_path_factory.mktemp("ref") / "out"
    spec = PreprocessSpec(source=str(raw), format="nih", size=SIZE, shard_size=SHARD)
    _, manifest = preprocess(spec, LocalStore(out), "", show_progress=False)
    return out, manifest


def job_spec(name: str, source: str, output: str, **extra):
    p = {"output": output, "spec": {"source": source, "format": "nih", "size": SIZE, "shard_size": SHARD}}
    p.update(extra.pop("preprocess", {}))
    return resolve_job("preprocess", None, {"name": name, "replicas": 2, "preprocess": p, **extra})


def run_job(job, timeout=240):
    api.submit(job)
    st = get_backend().wait(job.name, timeout=timeout, poll=0.2)
    return st, "".join(get_backend().logs(job.name))


def same_dataset(store, prefix: str, reference) -> None:
    ref_root, ref_manifest = reference
    manifest = json.loads(store.get_text(f"{prefix}/manifest.json"))
    for k in ("images", "rejected", "splits", "patients", "num_shards", "image_size"):
        assert manifest[k] == ref_manifest[k], k
    index = pd.read_csv(__import__("io").BytesIO(store.get_bytes(f"{prefix}/index.csv")), dtype=str)
    ref = pd.read_csv(ref_root / "index.csv", dtype=str)
    cols = ["image_id", "patient_id", "split", "labels", "shard", "offset", "sha256"]
    pd.testing.assert_frame_equal(index[cols], ref[cols])
    for k in range(manifest["num_shards"]):
        got = np.load(__import__("io").BytesIO(store.get_bytes(f"{prefix}/shards/shard-{k:05d}.npy")))
        assert np.array_equal(got, np.load(ref_root / "shards" / f"shard-{k:05d}.npy")), k
    return index


def test_preprocess_job_on_phantom_data(raw, reference, local_env):
    st, logs = run_job(job_spec("prep-phantom", str(raw), "datasets/phantom-64"))
    assert st.state == "Succeeded", (st.message, logs)
    same_dataset(local_env, "datasets/phantom-64", reference)
    assert "slice 0/2" in logs and "slice 1/2" in logs and f"merged {reference[1]['num_shards']} shards" in logs


def test_preprocess_job_rerun_with_other_options_needs_overwrite(raw, reference, local_env):
    # the first output, made in this process (the same code the job runs)
    preprocess(PreprocessSpec(source=str(raw), format="nih", size=SIZE, shard_size=SHARD), local_env,
               "datasets/p", show_progress=False)
    other = {"spec": {"source": str(raw), "format": "nih", "size": 32, "shard_size": SHARD}}
    st, logs = run_job(job_spec("prep-b", str(raw), "datasets/p", backoff_limit=0, preprocess=other))
    assert st.state == "Failed"
    assert "size: 64 there, 32 now" in logs and "overwrite: true" in logs
    assert json.loads(local_env.get_text("datasets/p/manifest.json"))["image_size"] == 64
    st, logs = run_job(job_spec("prep-c", str(raw), "datasets/p", preprocess={**other, "overwrite": True}))
    assert st.state == "Succeeded", logs
    manifest = json.loads(local_env.get_text("datasets/p/manifest.json"))
    assert manifest["image_size"] == 32 and manifest["images"] == reference[1]["images"]
    shapes = {np.load(p).shape[1:] for p in local_env.local_path("datasets/p/shards").glob("*.npy")}
    assert shapes == {(32, 32)}


# ----------------------------------------------------------------------------- raw data in the store

def test_preprocess_job_from_the_store(raw, reference, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRJOBS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CXRJOBS_CACHE_DIR", str(tmp_path / "cache"))
    res = runner.invoke(app, ["data", "upload", str(raw), "--name", "raw/phantom"])
    assert res.exit_code == 0, res.output
    assert s3_env.exists("raw/phantom/Data_Entry_2017.csv")
    spec_file = tmp_path / "prep.yaml"
    spec_file.write_text(f"preprocess:\n  spec:\n    shard_size: {SHARD}\n")
    res = runner.invoke(app, ["submit", "preprocess", "store://raw/phantom", "--format", "nih", "--size", str(SIZE),
                              "--replicas", "2", "--output", "datasets/phantom-64", "--name", "prep-s3",
                              "-f", str(spec_file)])
    assert res.exit_code == 0, (res.output, res.exception)
    job = json.loads(s3_env.get_text("runs/prep-s3/spec.json"))
    assert job["preprocess"]["spec"]["source"] == "store://raw/phantom"  # not turned into a local path
    st = get_backend().wait("prep-s3", timeout=240, poll=0.2)
    logs = "".join(get_backend().logs("prep-s3"))
    assert st.state == "Succeeded", (st.message, logs)
    index = same_dataset(s3_env, "datasets/phantom-64", reference)
    assert index["source"].str.startswith("store://raw/phantom/images_").all()
    assert "slice 0/2" in logs and "slice 1/2" in logs and "merged" in logs
    assert not (tmp_path / "cache").exists()  # decoded from bytes: no local copy of the raw set


def test_a_slice_downloads_only_its_own_shards(raw, s3_env, monkeypatch):
    from cxrjobs.storage.s3 import S3Store
    from cxrjobs.storage.sync import upload_dir

    upload_dir(raw, s3_env, "raw/spy", progress=False)
    fetched: list[str] = []
    real_get = S3Store.get_bytes

    def spy(self, key):  # the real download, recorded
        fetched.append(key)
        return real_get(self, key)

    monkeypatch.setattr(S3Store, "get_bytes", spy)
    source = f"{s3_env.url}/raw/spy"  # the s3://BUCKET/PREFIX form
    spec = PreprocessSpec(source=source, format="nih", size=SIZE, shard_size=SHARD)
    _, rec = plan(spec)
    fetched.clear()
    res = run_slice(spec, s3_env, "datasets/spy", shard_index=1, num_shards=2, show_progress=False, workers=2)
    images = {k for k in fetched if k.lower().endswith(".png")}
    mine = rec[rec["shard"] % 2 == 1]
    bucket_url = f"s3://{s3_env.bucket}/"  # s3:// sources name keys from the bucket's root
    assert images == {p[len(bucket_url):] for p in mine["path"]}  # exactly its shards' images
    assert len(images) == len(mine) < len(rec)
    assert res.images + res.rejected == len(mine)
    assert "runs/raw/spy/Data_Entry_2017.csv" in fetched


def test_store_source_errors(s3_env):
    from cxrjobs.errors import DataError

    with pytest.raises(DataError, match="upload the raw dataset folder first"):
        plan(PreprocessSpec(source="store://raw/never-uploaded", format="nih", size=SIZE))


@pytest.mark.parametrize("output", ["", "/", "../x", "/abs/x"])
def test_job_output_must_name_a_dataset_key(output):
    from cxrjobs.errors import ConfigError

    with pytest.raises(ConfigError, match="preprocess.output"):
        job_spec("bad-out", "/data/nih", output)
    with pytest.raises(ConfigError, match="the output is a prefix in the job's store"):
        job_spec("bad-out", "/data/nih", "s3://bucket/datasets/x")


def test_job_output_takes_the_store_scheme_data_preprocess_takes():
    """`--output store://datasets/x` wrote to a folder literally named 'store:' in the store."""
    assert job_spec("out", "/data/nih", "store://datasets/x").preprocess.output == "datasets/x"
