"""Job specs, dry-run output, and jobs that go through the S3 store and the preprocess job."""

from __future__ import annotations

import json
import re

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


# --- issue 6: jobs and the local backend ---------------------------------------------------------

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cxrjobs.backends import local as local_backend
from cxrjobs.config import load_settings
from cxrjobs.errors import CxrError

FINDINGS = ["Atelectasis", "Cardiomegaly"]


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command in its own process: exit code, stdout and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "cxrjobs.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def fake_dataset(root: Path, size: int = 64, splits=("train", "val", "test")) -> Path:
    """A dataset folder that passes the submit-time checks (a manifest) with one row per split;
    it has no shards, so a replica that gets past the empty-split check fails reading it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(
        {"image_size": size, "findings": FINDINGS, "labels": ["No Finding"] + FINDINGS}))
    rows = "".join(f"img{i}.png,p{i},Cardiomegaly,{s},0,{i}\n" for i, s in enumerate(splits))
    (root / "index.csv").write_text("image,patient,labels,split,shard,offset\n" + rows)
    return root


def state_dir(run: str) -> Path:
    return load_settings().local_state / run


def proc_gone(pid: int) -> bool:
    return not local_backend.pid_alive(pid)


def wait_until(cond, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(poll)
    return value


@pytest.fixture
def phantom_raw(tmp_path):
    from cxrjobs.data.synth import synth_nih
    synth_nih(tmp_path / "raw", 24, size=64, seed=3)
    return tmp_path / "raw"


def test_submit_wait_json_waits_for_the_end_and_spec_output_is_kept(local_env, phantom_raw, tmp_path):
    """Items 7 and 15: `--wait --json` prints the final status (exit 0), and a spec's output is
    not replaced by the flag's default when --output is not given."""
    spec = tmp_path / "prep.yaml"
    spec.write_text(f"replicas: 1\npreprocess:\n  output: datasets/from-spec\n  spec:\n"
                    f"    source: {phantom_raw}\n    format: nih\n    size: 32\n")
    res = cli("submit", "preprocess", "-f", str(spec), "--name", "waited", "--wait", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    final = json.loads(res.stdout)  # stdout is exactly one JSON object
    assert final["run"] == "waited" and final["state"] == "Succeeded", final
    assert final["finished"] is not None
    job = json.loads(local_env.get_text("runs/waited/spec.json"))
    assert job["preprocess"]["output"] == "datasets/from-spec"
    assert local_env.exists("datasets/from-spec/manifest.json")
    assert not local_env.exists("datasets/nih-224/manifest.json")


def test_submit_checks_configuration_before_any_replica(local_env, tmp_path):
    """Item 12, submit side: a missing dataset, a wrong image size and a bad output key fail at
    once (exit 2, naming the field) and start nothing."""
    res = cli("submit", "nih-train", "--data", "datasets/absent", "--name", "nodata")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "train.data" in res.stderr and "not found" in res.stderr
    assert not state_dir("nodata").exists()

    data = fake_dataset(tmp_path / "ds64", size=64)
    res = cli("submit", "nih-train", "--data", str(data), "--image-size", "96", "--name", "wrongsize")
    assert res.returncode == 2 and "train.image_size" in res.stderr and "64" in res.stderr, res.stderr
    assert not state_dir("wrongsize").exists()

    res = cli("submit", "preprocess", str(tmp_path), "--format", "nih", "--output", "../outside",
              "--name", "badout")
    assert res.returncode == 2 and "preprocess.output" in res.stderr, res.stderr
    assert not state_dir("badout").exists()


def test_user_error_in_a_replica_is_not_retried_and_shows_in_status(local_env, tmp_path):
    """Item 12, replica side: exit 2 (a CxrError) fails the run at once; status says why."""
    data = fake_dataset(tmp_path / "notrain", splits=("val", "test"))  # passes submit, empty train split
    job = resolve_job("nih-train", None, {"name": "usererr", "replicas": 1, "backoff_limit": 3,
                                          "train": {"data": str(data), "epochs": 1}})
    api.submit(job)
    st = get_backend().wait(job.name, timeout=120, poll=0.1)
    assert st.state == "Failed" and st.restarts == 0
    assert "train split is empty" in st.message and "code 2" in st.message, st.message
    assert "".join(get_backend().logs(job.name)).count("=== attempt") == 1
    res = cli("status", job.name)
    assert res.returncode == 0 and "train split is empty" in res.stdout, res.stdout


def test_concurrent_submits_of_one_run_start_it_once(local_env, tmp_path, monkeypatch):
    """Item 9: of two simultaneous submits with the same name and spec exactly one wins. Each
    submit, once past its "already active?" check, waits (up to 3 s) for the other to get there
    too: without a lock both do and both start the run, with it the second waits outside."""
    real_write = local_backend.write_json
    both_past_check = threading.Barrier(2)

    def slow_write(path, obj):
        if path.name == "plan.json":
            try:
                both_past_check.wait(timeout=3)
            except threading.BrokenBarrierError:
                pass
        real_write(path, obj)
    monkeypatch.setattr(local_backend, "write_json", slow_write)
    data = fake_dataset(tmp_path / "notrain", splits=("val", "test"))
    job = resolve_job("nih-train", None, {"name": "racer", "train": {"data": str(data), "epochs": 1}})
    results: list = [None, None]

    def submit(i):
        try:
            results[i] = api.submit(job)
        except CxrError as e:
            results[i] = e
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [r for r in results if isinstance(r, CxrError)]
    assert len(errors) == 1, results
    assert "already active" in str(errors[0])
    get_backend().wait(job.name, timeout=120, poll=0.1)
    log = (state_dir(job.name) / "logs" / "replica-0.log").read_text()
    assert log.count("=== attempt 0") == 1, log


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def test_run_names_are_validated_and_foreign_pids_never_signalled(local_env, tmp_path):
    """Item 10: `cancel ../evil` is refused (before it read a pid file outside the state
    directory); a recorded pid that now belongs to another process is left alone."""
    victim = _sleeper()
    try:
        root = load_settings().local_state
        root.mkdir(parents=True)  # as after any earlier run
        evil = root.parent / "evil"
        evil.mkdir(parents=True)
        (evil / "state.json").write_text(json.dumps({"state": "Running", "replicas": 1, "pids": [victim.pid]}))
        (evil / "supervisor.pid").write_text(f"{victim.pid} {local_backend.proc_start_time(victim.pid)}")
        for cmd in (["cancel", "../evil"], ["status", "../evil"], ["logs", "../evil"]):
            res = cli(*cmd)
            assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
            assert "name" in res.stderr and "lower-case" in res.stderr, res.stderr
        assert victim.poll() is None, "a process outside the run was killed"

        # A valid run whose recorded pids were recycled: start times differ, nothing is signalled.
        run = root / "recycled"
        run.mkdir(parents=True)
        wrong = local_backend.proc_start_time(victim.pid) - 1
        (run / "state.json").write_text(json.dumps({"run": "recycled", "state": "Running", "replicas": 1,
                                                    "pids": [victim.pid], "pid_starts": [wrong]}))
        (run / "supervisor.pid").write_text(f"{victim.pid} {wrong}")
        res = cli("cancel", "recycled")
        assert res.returncode == 0, res.stderr
        time.sleep(0.2)
        assert victim.poll() is None, "cancel killed a process that is not the run's"
    finally:
        victim.kill()
        victim.wait()


def test_runs_says_when_there_are_none(local_env):
    """A new user's first `cxrjobs runs` prints a way forward, not a bare header."""
    res = cli("runs")
    assert res.returncode == 0 and "no runs yet on the local backend" in res.stdout
    assert "cxrjobs submit --help" in res.stdout
    res = cli("runs", "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == []


def test_a_run_whose_supervisor_is_gone_says_how_to_go_on(local_env):
    """'Failed - supervisor process 20750 is gone ()': empty parentheses, and no way forward."""
    root = load_settings().local_state
    (root / "gone").mkdir(parents=True)
    (root / "gone" / "state.json").write_text(json.dumps({"run": "gone", "state": "Running", "kind": "train",
                                                          "replicas": 1}))
    (root / "gone" / "supervisor.pid").write_text("999999999 1")
    res = cli("status", "gone")
    assert "gone: Failed" in res.stdout and "supervisor process 999999999 is gone; resubmit the same command " \
        "to resume from the last checkpoint" in res.stdout and "()" not in res.stdout, res.stdout


def test_status_says_which_epoch_the_test_score_belongs_to(local_env):
    """'epoch 4, val_loss 0.8136, auroc 1.000 [...]; test auroc 0.245' read as a bug: the test
    score is best.pt's, from epoch 1, beside the last epoch's validation metrics."""
    root = load_settings().local_state
    (root / "m2").mkdir(parents=True)
    (root / "m2" / "state.json").write_text(json.dumps({"run": "m2", "state": "Succeeded", "kind": "train",
                                                        "replicas": 1}))
    local_env.put_text("runs/m2/spec.json", json.dumps({"kind": "train", "name": "m2"}))
    val = {"split": "val", "images": 10, "patients": 8, "loss": 0.5, "auroc": {"value": 0.9, "ci": [0.8, 1.0]}}
    local_env.put_text("runs/m2/metrics.jsonl", "".join(json.dumps(
        {"epoch": e, "train": {"loss": 0.4}, "val": {**val, "loss": loss}, "best": e == 1}) + "\n"
        for e, loss in ((1, 0.5), (2, 0.7))))
    test = {"split": "test", "images": 20, "patients": 9, "auroc": {"value": 0.7, "ci": [0.5, 0.9]}}
    local_env.put_text("runs/m2/artifacts/result.json", json.dumps({"run": "m2", "epochs": 2, "test": test}))
    res = cli("status", "m2")
    assert res.returncode == 0, res.stderr
    assert "epoch 2, val_loss 0.7000" in res.stdout
    assert "; test of best.pt (epoch 1): auroc 0.700 [0.500, 0.900] (test: 20 images, 9 patients)" in res.stdout


def test_status_points_at_an_evaluation_and_knows_an_exported_best_trial(local_env):
    """An evaluate job's results live in the run it scores (runs/RUN/eval/NAME/): its status and
    its --wait line pointed at an empty runs/<job>/ and showed no result. A search's exported
    best trial (NAME-best) has no process of its own: status said there was no such run."""
    root = load_settings().local_state
    (root / "ev1").mkdir(parents=True)
    (root / "ev1" / "state.json").write_text(json.dumps({"run": "ev1", "state": "Succeeded", "kind": "evaluate",
                                                        "replicas": 1}))
    local_env.put_text("runs/ev1/spec.json", json.dumps({"kind": "evaluate", "name": "ev1", "evaluate": {
        "run": "m1", "data": "datasets/x", "name": "test1"}}))
    local_env.put_text("runs/m1/eval/test1/results.json", json.dumps({
        "split": "test", "n_images": 20, "n_patients": 9, "auroc": 0.8, "auroc_ci": [0.6, 0.9],
        "balanced_accuracy": 0.7, "balanced_accuracy_ci": [0.5, 0.8], "sensitivity": 0.75,
        "sensitivity_ci": [0.5, 1.0], "specificity": 0.65, "specificity_ci": [0.4, 0.9]}))
    res = cli("status", "ev1")
    assert res.returncode == 0, res.stderr
    assert "auroc 0.800 [0.600, 0.900]" in res.stdout and "(test: 20 images, 9 patients)" in res.stdout
    assert res.stdout.rstrip().endswith("runs/m1/eval/test1"), res.stdout

    # A preprocess job pointed at runs/<job>/, not at the dataset it wrote.
    (root / "pp1").mkdir(parents=True)
    (root / "pp1" / "state.json").write_text(json.dumps({"run": "pp1", "state": "Succeeded", "kind": "preprocess",
                                                         "replicas": 1}))
    local_env.put_text("runs/pp1/spec.json", json.dumps({"kind": "preprocess", "name": "pp1", "preprocess": {
        "output": "datasets/nih-64"}}))
    res = cli("status", "pp1")
    assert res.returncode == 0 and res.stdout.rstrip().endswith("/datasets/nih-64"), res.stdout

    local_env.put_text("runs/t-best/artifacts/result.json", json.dumps({"run": "t-best", "tuned_by": "t"}))
    res = cli("status", "t-best")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("t-best: Succeeded") and "the best trial of search t" in res.stdout
    assert cli("status", "not-a-run").returncode == 2


def test_runs_lists_unreadable_state_as_unknown(local_env):
    """Item 13: one corrupt or empty state file does not hide the other runs."""
    root = load_settings().local_state
    for name, text in (("good", json.dumps({"run": "good", "state": "Succeeded", "kind": "nih-train",
                                            "replicas": 2})), ("empty", ""), ("garbled", "{not json")):
        (root / name).mkdir(parents=True)
        (root / name / "state.json").write_text(text)
    res = cli("runs", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["run"]: r for r in json.loads(res.stdout)}
    assert rows["good"]["state"] == "Succeeded"
    for bad in ("empty", "garbled"):
        assert rows[bad]["state"] == "Unknown" and "state.json" in rows[bad]["message"]
    res = cli("runs")
    assert res.returncode == 0 and "Unknown" in res.stdout and "good" in res.stdout
    res = cli("status", "garbled")
    assert res.returncode == 2 and "unreadable" in res.stderr and "Traceback" not in res.stderr
    # the way out the message names: cancel records the run as Cancelled
    res = cli("cancel", "garbled")
    assert res.returncode == 0 and "Cancelled" in res.stdout, res.stdout + res.stderr
    assert get_backend().status("garbled").state == "Cancelled"


def test_runs_table_never_cuts_run_ids(local_env):
    """Item 14: at 80 columns every run id is printed whole on one line."""
    root = load_settings().local_state
    names = ["nih-train-20261126-130000-ab12", "preprocess-20261126-130000-abcd",
             "a-run-name-of-the-longest-allowed-length-52-chars-x1"]
    assert len(names[-1]) == 52
    for n in names:
        (root / n).mkdir(parents=True)
        (root / n / "state.json").write_text(json.dumps({
            "run": n, "state": "Failed", "kind": "nih-train", "replicas": 2, "restarts": 3,
            "message": "replica 0 exited with code 1: RuntimeError: a long message " * 3}))
    long = "a-run-with-a-long-error"
    (root / long).mkdir(parents=True)
    (root / long / "state.json").write_text(json.dumps({
        "run": long, "state": "Failed", "kind": "train", "replicas": 1, "restarts": 0,
        "message": "replica 0 exited with code 2: " + "word " * 300 + "\nsecond line"}))
    res = cli("runs", env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    print(res.stdout)
    lines = res.stdout.splitlines()
    for n in names:
        assert any(n in line for line in lines), f"{n} is not printed whole:\n{res.stdout}"
    assert "…" not in res.stdout
    # A long error wrapped into some 25 lines of the table: its first 100 characters, and where the rest is.
    row = res.stdout[res.stdout.index(long):]
    assert "word...(seestatus)" in "".join(row.split())
    assert "second line" not in res.stdout and res.stdout.count("word") < 40


def test_spec_and_flag_errors_name_the_field(local_env, tmp_path):
    """Item 17 (spec/CLI parts): exit 2, no traceback, the field and what to do."""
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"train:\n  data: caf\xe9\n")
    cases = [
        (["submit", "nih-train", "-f", str(bad), "--dry-run"], [str(bad), "UTF-8", "line 2"]),
        (["submit", "nih-train", "--data", "d", "--lr", "inf", "--dry-run"], ["train.lr", "finite"]),
        (["submit", "nih-train", "--lr", "nan", "--data", "d", "--dry-run"], ["train.lr", "finite"]),
        (["submit", "nih-train", "--dry-run"], ["train.data", "--data"]),
        (["submit", "nih-train", "--data", "d", "--name", "Bad_Name", "--dry-run"], ["  name:", "lower-case"]),
    ]
    for args, expected in cases:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and "(spec)" not in res.stderr, res.stderr
        for text in expected:
            assert text in res.stderr, (args, text, res.stderr)
    assert "needs a 'train' section" not in cli("submit", "nih-train", "--dry-run").stderr


def test_evaluate_and_tune_are_checked_at_submit(local_env, phantom_nih_64):
    """A missing run or dataset for evaluate, and a tune search's missing data, fail at submit
    (naming the field) instead of inside a replica."""
    import pytest

    from cxrjobs import api
    from cxrjobs.errors import ConfigError
    from cxrjobs.jobs.resolve import resolve_job

    job = resolve_job("evaluate", None, {"name": "ev-missing-run",
                                         "evaluate": {"run": "nosuchrun", "data": str(phantom_nih_64)}})
    with pytest.raises(ConfigError, match=r"evaluate\.run: no trained run 'nosuchrun'"):
        api.submit(job, "local")
    job = resolve_job("evaluate", None, {"name": "ev-missing-data",
                                         "evaluate": {"run": "r", "data": "datasets/nope"}})
    with pytest.raises(ConfigError, match=r"evaluate\.data: dataset 'datasets/nope' not found"):
        api.submit(job, "local")
    job = resolve_job("tune", None, {"name": "tune-missing-data",
                                     "tune": {"job": "train", "train": {"data": "datasets/nope"}}})
    with pytest.raises(ConfigError, match=r"tune\.train\.data: dataset 'datasets/nope' not found"):
        api.submit(job, "local")
    for name in ("ev-missing-run", "ev-missing-data", "tune-missing-data"):
        assert not local_env.exists(f"runs/{name}/spec.json")  # nothing was recorded or started


def test_a_dataset_named_as_preprocess_names_it(local_env, phantom_nih_64):
    """`data preprocess --out store://datasets/NAME` makes a dataset that every job takes as
    `--data store://datasets/NAME` too (the same key as `datasets/NAME`); an s3:// URL or an
    empty name is refused at submit, naming the field and what to give instead."""
    import shutil

    import pytest

    from cxrjobs.errors import ConfigError
    from cxrjobs.jobs.preflight import check_job
    from cxrjobs.jobs.resolve import resolve_job

    shutil.copytree(phantom_nih_64, local_env.root / "datasets" / "ph")
    job = resolve_job("tune", None, {"name": "t", "tune": {"job": "train", "train": {"data": "store://datasets/ph/"}}})
    assert job.tune.train.data == "datasets/ph"
    check_job(job, local_env)  # the manifest is found under the key
    job = resolve_job("evaluate", None, {"name": "e", "evaluate": {"run": "r", "data": "store://datasets/ph"}})
    assert job.evaluate.data == "datasets/ph"
    for data, says in (("s3://bucket/datasets/ph", "set CXRJOBS_STORE=s3://BUCKET"), ("store://", "names nothing")):
        with pytest.raises(ConfigError, match=r"train\.data") as e:
            resolve_job("nih-train", None, {"name": "n", "train": {"data": data}})
        assert says in str(e.value)


def test_a_search_given_where_a_trained_model_is_expected_names_its_best_run(local_env, phantom_nih_64):
    """evaluate, predict and transfer --from given a tune search's id say which run holds its
    best trial (or that it has none yet), at submit where there is a submit."""
    import json

    import pytest

    from cxrjobs.errors import ConfigError, CxrError
    from cxrjobs.eval.predict import load_run
    from cxrjobs.jobs.preflight import check_job
    from cxrjobs.jobs.resolve import resolve_job
    from cxrjobs.storage.runs import locate_weights

    local_env.put_text("runs/srch/spec.json", json.dumps({"kind": "tune", "name": "srch"}))
    evaluate = resolve_job("evaluate", None, {"name": "e", "evaluate": {"run": "srch", "data": str(phantom_nih_64)}})
    transfer = resolve_job("nih-train", None, {"name": "t", "train": {"data": str(phantom_nih_64), "init_from": "srch"}})
    unfinished = "srch is a hyper-parameter search, not a trained model: its best trial becomes a run"
    for check in (lambda: check_job(evaluate, local_env), lambda: check_job(transfer, local_env)):
        with pytest.raises(ConfigError, match=unfinished):
            check()
    local_env.put_text("runs/srch/artifacts/result.json", json.dumps({"best": {"run": "srch-best"}}))
    finished = "srch is a hyper-parameter search, not a trained model: give its best trial's run, srch-best"
    with pytest.raises(ConfigError, match=r"evaluate\.run: " + finished):
        check_job(evaluate, local_env)
    with pytest.raises(ConfigError, match=r"train\.init_from: " + finished):
        check_job(transfer, local_env)
    for use in (lambda: load_run(local_env, "srch"), lambda: locate_weights("srch", local_env)):
        with pytest.raises(CxrError, match=finished):
            use()
    # Any other unfinished run keeps its own message.
    local_env.put_text("runs/plain/spec.json", json.dumps({"kind": "train", "name": "plain"}))
    with pytest.raises(CxrError, match="let it finish first"):
        locate_weights("plain", local_env)


def test_ctrl_c_on_wait_says_the_run_goes_on(local_env, phantom_covid_32):
    """Ctrl-C on `submit --wait` stops the waiting, not the run: it used to exit 130 in silence,
    and the user could not tell whether the run was still going."""
    proc = subprocess.Popen([sys.executable, "-m", "cxrjobs.cli", "submit", "train", "--data",
                             str(phantom_covid_32), "--model", "smallcnn", "--epochs", "500", "--bootstrap", "0",
                             "--name", "ctrlc", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    be = get_backend("local")
    try:
        deadline = time.monotonic() + 120
        while not api.run_metrics("ctrlc", local_env):  # an epoch done: the run is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, (out, err)
        assert "stopped waiting; run ctrlc goes on (local backend)" in err and "cxrjobs cancel ctrlc" in err
        assert "Traceback" not in err
        assert be.status("ctrlc").state == "Running"
    finally:
        if proc.poll() is None:
            proc.kill()
        be.cancel("ctrlc")


def test_resubmitting_a_name_with_other_options_names_what_differs(local_env, tmp_path):
    """It said only 'exists with a different spec': the user had to diff the JSON by hand."""
    data = fake_dataset(tmp_path / "ds")
    spec = {"kind": "train", "name": "same", "train": {"data": str(data), "epochs": 3, "lr": 0.001}}
    from cxrjobs.jobs.spec import JobSpec

    local_env.put_text("runs/same/spec.json", JobSpec.model_validate(spec).model_dump_json())
    changed = JobSpec.model_validate({**spec, "train": {**spec["train"], "epochs": 4, "lr": 0.01}})
    with pytest.raises(CxrError, match=r"run same exists with a different spec .*train\.epochs: 3 then, 4 now, "
                                       r"train\.lr: 0\.001 then, 0\.01 now\); pick another --name"):
        api.submit(changed, "local")
    # Another kind under the name: one line saying so (it was a dump of both payloads).
    other = JobSpec.model_validate({"kind": "nih-train", "name": "same", "train": spec["train"]})
    with pytest.raises(CxrError, match=r"run same exists as a train run .*; this is a nih-train job: pick another --name"):
        api.submit(other, "local")
    # How it is retried may change: a run failed on its backoff limit resumes with a higher one.
    retried = JobSpec.model_validate({**spec, "backoff_limit": 9, "rendezvous_timeout": 60})
    api.submit(retried, "local")
    assert JobSpec.model_validate_json(local_env.get_text("runs/same/spec.json")).backoff_limit == 9
    from cxrjobs.backends import get_backend
    get_backend("local").cancel("same")


def test_a_search_never_overwrites_a_run_named_like_its_best_trial(local_env, tmp_path):
    """A search named tc exported its best trial over a finished run tc-best (its checkpoints
    replaced; its ood.json, logs and evaluations left beside weights they do not describe)."""
    data = fake_dataset(tmp_path / "ds")
    local_env.put_text("runs/tc-best/spec.json", json.dumps({"kind": "train", "name": "tc-best"}))
    job = resolve_job("tune", None, {"name": "tc", "tune": {"train": {"data": str(data)}, "algo": "random",
                                                             "trials": 1, "epochs_per_trial": 1}})
    with pytest.raises(ConfigError, match="name: run tc-best exists in .* and search tc did not make it"):
        api.submit(job)
    assert not local_env.exists("runs/tc/spec.json")
    # Its own export (a search resubmitted to resume) is no obstacle.
    local_env.put_text("runs/tc-best/artifacts/result.json", json.dumps({"run": "tc-best", "tuned_by": "tc"}))
    from cxrjobs.jobs.preflight import check_job
    check_job(job, local_env)


def test_wait_exits_2_when_a_replica_reports_a_user_error(local_env, tmp_path):
    """`submit --wait` exited 1 for a run failed by a user error (replica exit 2), unlike submit's
    own refusals (exit 2): scripts could not tell bad options from a crash."""
    data = fake_dataset(tmp_path / "notrain", splits=("val", "test"))  # passes submit, empty train split
    res = cli("submit", "nih-train", "--data", str(data), "--epochs", "1", "--replicas", "1", "--name", "ue2",
              "--wait")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "train split is empty" in res.stdout and "(a user error: not retried)" in res.stdout


@pytest.mark.parametrize("train, words", [
    ({"init_from": "no-such-run"}, "train.init_from: weights 'no-such-run' not found"),
    ({"model": "resnext50", "pretrained": "/nonexistent.pth"}, "train.pretrained: weights '/nonexistent.pth' not found"),
    ({"monitor": "val_balanced_accuracy"}, "train.monitor: val_balanced_accuracy is not reported for a "
                                           "multilabel task with 2 classes"),
    ({"splits": {"train": 3, "val": 0, "test": 1}}, "has no val images; preprocess it with more images or other --fractions"),
])
def test_submit_refuses_what_a_replica_would_refuse(local_env, tmp_path, train, words):
    """Weights that are nowhere, a monitor the task does not report and an empty validation split
    failed inside the replica (a Failed run left behind); they are refused at submit, exit 2."""
    data = fake_dataset(tmp_path / "ds")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"] = train.pop("splits", {"train": 1, "val": 1, "test": 1})
    (data / "manifest.json").write_text(json.dumps(manifest))
    job = resolve_job("nih-train", None, {"name": "refused", "train": {"data": str(data), **train}})
    with pytest.raises(ConfigError, match=re.escape(words)):
        api.submit(job)
    assert not local_env.exists("runs/refused/spec.json")
