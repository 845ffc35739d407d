"""Job specs, dry-run output, and jobs that go through the S3 store and the preprocess job."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cxrjobs import api
from cxrjobs.backends import get_backend
from cxrjobs.cli import app
from cxrjobs.errors import ConfigError
from cxrjobs.jobs.resolve import resolve_job
from cxrjobs.storage import join_key

runner = CliRunner()


def test_flags_override_yaml_and_errors_name_the_field(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("replicas: 3\ntrain:\n  data: datasets/x\n  lr: 0.5\n  epochs: 2\n")
    job = resolve_job("nih-train", spec, {"train": {"lr": 0.01, "epochs": None}})
    assert job.replicas == 3 and job.train.lr == 0.01 and job.train.epochs == 2
    with pytest.raises(ConfigError, match=r"train\.lr"):
        resolve_job("nih-train", None, {"train": {"data": "d", "lr": -1}})
    spec.write_text("train:\n  data: d\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        resolve_job("nih-train", spec, {})
    with pytest.raises(ConfigError, match="name"):
        resolve_job("nih-train", None, {"name": "Bad_Name", "train": {"data": "d"}})


def test_dry_run_prints_pod_environment_without_secrets(local_env, monkeypatch):
    monkeypatch.setenv("CXRJOBS_S3_SECRET_KEY", "super-secret-value")
    res = runner.invoke(app, ["submit", "nih-train", "--replicas", "3", "--data", "datasets/x",
                              "--name", "dry", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "super-secret-value" not in res.output
    plan = json.loads(res.output)
    envs = [o["env"] for o in plan["objects"]]
    assert [e["JOB_COMPLETION_INDEX"] for e in envs] == ["0", "1", "2"]
    assert all(e["WORLD_SIZE"] == "3" and e["MASTER_ADDR"] == "127.0.0.1" for e in envs)
    assert plan["objects"][0]["secret_env"] == ["CXRJOBS_S3_SECRET_KEY"]
    assert not local_env.exists(join_key("runs", "dry", "spec.json"))  # dry-run creates nothing


def test_invalid_cli_value_names_the_field(local_env):
    res = runner.invoke(app, ["submit", "nih-train", "--data", "d", "--lr", "-3", "--dry-run"])
    assert res.exit_code != 0
    assert "train.lr" in str(res.exception)


def test_preprocess_job_slices_then_merges(shared_data, local_env):
    job = resolve_job("preprocess", None, {"name": "prep", "replicas": 2, "preprocess": {
        "output": "datasets/covid-64", "spec": {"source": str(shared_data / "covid-xray"),
                                                "format": "covid", "size": 64, "shard_size": 40}}})
    api.submit(job)
    st = get_backend().wait(job.name, timeout=180, poll=0.2)
    assert st.state == "Succeeded", st.message
    manifest = json.loads(local_env.get_text("datasets/covid-64/manifest.json"))
    assert manifest["images"] == 169 and manifest["num_shards"] == 5
    logs = "".join(get_backend().logs(job.name))
    assert "slice 0/2" in logs and "slice 1/2" in logs and "merged 5 shards" in logs


@pytest.mark.slow
def test_training_reads_dataset_and_writes_run_through_s3(phantom_nih_64, s3_env, tmp_path, monkeypatch):
    from cxrjobs.storage.sync import upload_dir
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import Run, Trainer
    from cxrjobs.specs.train import TrainSpec
    import torch

    monkeypatch.setenv("CXRJOBS_CACHE_DIR", str(tmp_path / "cache"))
    upload_dir(phantom_nih_64, s3_env, "datasets/phantom-64", progress=False)
    spec = TrainSpec(data="datasets/phantom-64", epochs=1, batch_size=64, bootstrap=0)
    Trainer(spec, Run(s3_env, "s3run"), DistContext(0, 1, torch.device("cpu"), None),
            log=lambda m: None).fit()
    for key in ("metrics.jsonl", "checkpoints/latest.pt", "checkpoints/best.pt", "artifacts/result.json"):
        assert s3_env.exists(join_key("runs", "s3run", key)), key
    assert (tmp_path / "cache").is_dir()
