"""The tune job kind's spec, search space and local plan (no Ray started here)."""

from __future__ import annotations

import pytest

from cxrjobs.errors import ConfigError
from cxrjobs.jobs.registry import get_kind
from cxrjobs.jobs.resolve import resolve_job
from cxrjobs.specs.tune import TuneSpec, default_space


def _tune(**kw):
    return TuneSpec.model_validate({"train": {"data": "datasets/covid-32"}, **kw})


def test_defaults_resolve_to_the_papers_space_and_the_metrics_direction():
    t = _tune(epochs_per_trial=3, metric="val_auroc")
    assert t.space == default_space(3) and set(t.space) == {"optimizer", "lr", "step_size", "gamma", "momentum"}
    assert t.mode == "max" and t.train.epochs == 3
    spec = t.trial_train_spec({"optimizer": "adam", "lr": 0.003, "step_size": 2, "gamma": 0.5, "momentum": 0.8})
    assert (spec.optimizer, spec.lr, spec.scheduler, spec.step_size, spec.monitor) == ("adam", 0.003, "step", 2, "val_auroc")
    assert get_kind("tune").workload == "ray-job" and not get_kind("tune").rendezvous


@pytest.mark.parametrize("space, message", [
    ({"batch_size": [8, 16]}, "space.batch_size: not a tunable"),
    ({"momentum": {"uniform": [0.5, 1.2]}}, "space.momentum: value 1.2 is not a valid momentum"),
    ({"lr": {"loguniform": [0, 0.1]}}, "loguniform needs lo > 0"),
    ({"lr": {"normal": [0, 1]}}, "expected one of"),
    ({"step_size": {"randint": [1.5, 3]}}, "randint bounds must be integers"),
    ({"optimizer": ["sgd", "rmsprop"]}, "value 'rmsprop' is not a valid optimizer"),
    ({"gamma": {"uniform": [0.9, 0.1]}}, "lo < hi"),
])
def test_a_bad_space_is_a_clear_error_naming_the_entry(space, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        resolve_job("tune", None, {"tune": {"train": {"data": "d"}, "space": space}})
    assert "tune" in str(e.value)


def test_space_file_overrides_the_defaults_key_by_key(tmp_path):
    from cxrjobs.tune.space import clamp, load_space_file, mutations, param_space

    f = tmp_path / "space.yaml"
    f.write_text("lr: {loguniform: [1.0e-3, 1.0e-2]}\nmomentum: 0.9\n")
    space = load_space_file(f, default_space(5))
    assert space["lr"] == {"loguniform": [1e-3, 1e-2]} and space["momentum"] == 0.9
    assert space["optimizer"] == ["sgd", "adam"]
    ps, mu = param_space(space), mutations(space)
    assert ps["momentum"] == 0.9 and "momentum" not in mu and mu["optimizer"] == ["sgd", "adam"]
    assert 1e-3 <= ps["lr"].sample() <= 1e-2 and ps["step_size"].sample() in range(1, 6)
    assert clamp(space, {"lr": 0.5, "step_size": 7.4, "gamma": 0.01}) == {"lr": 1e-2, "step_size": 5, "gamma": 0.1}
    (tmp_path / "bad.yaml").write_text("- lr\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        load_space_file(tmp_path / "bad.yaml", default_space(5))


def test_threads_per_trial_are_cores_over_concurrent_trials():
    from cxrjobs.tune.runner import plan

    assert plan(_tune(trials=50), cpus=10).__dict__ == {"cpus": 10, "concurrent": 10, "threads": 1}
    assert plan(_tune(trials=4, max_concurrent=2), cpus=16).__dict__ == {"cpus": 16, "concurrent": 2, "threads": 8}
    assert plan(_tune(trials=3), cpus=16).__dict__ == {"cpus": 16, "concurrent": 3, "threads": 5}


def test_local_backend_runs_one_driver_for_a_ray_job(local_env):
    from cxrjobs.backends import get_backend

    job = resolve_job("tune", None, {"replicas": 3, "tune": {"train": {"data": "d"}}})
    plan = get_backend("local").submit_dryrun(job)
    assert len(plan.objects) == 1 and plan.objects[0]["command"][-1] == "cxrjobs.jobs.entrypoint"


def test_cli_submit_tune_dry_run_reads_space_file_and_training_flags(local_env, tmp_path):
    import json

    from typer.testing import CliRunner

    from cxrjobs.cli import app

    (tmp_path / "space.yaml").write_text("lr: {loguniform: [1.0e-3, 1.0e-2]}\ngamma: 0.5\n")
    res = CliRunner().invoke(app, ["submit", "tune", "--job", "train", "--data", "datasets/covid-32",
                                   "--batch-size", "16", "--trials", "6", "--algo", "asha",
                                   "--epochs-per-trial", "3", "--space", str(tmp_path / "space.yaml"),
                                   "--name", "t1", "--dry-run"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["run"] == "t1" and len(plan["objects"]) == 1
    job = resolve_job("tune", None, {"name": "t1", "tune": {
        "job": "train", "train": {"data": "datasets/covid-32", "batch_size": 16}, "trials": 6, "algo": "asha",
        "epochs_per_trial": 3, "space": {**default_space(3), "lr": {"loguniform": [1e-3, 1e-2]}, "gamma": 0.5}}})
    assert job.tune.train.batch_size == 16 and job.tune.space["gamma"] == 0.5

    # --epochs was replaced by --epochs-per-trial without a word.
    bad = CliRunner().invoke(app, ["submit", "tune", "--data", "d", "--epochs", "3", "--epochs-per-trial", "2",
                                   "--dry-run"])
    assert bad.exit_code != 0 and "--epochs 3 and --epochs-per-trial 2" in str(bad.exception)
    same = CliRunner().invoke(app, ["submit", "tune", "--data", "d", "--epochs", "3", "--name", "t3", "--dry-run"])
    assert same.exit_code == 0, same.output

    bad = CliRunner().invoke(app, ["submit", "tune", "--data", "d", "--metric", "val_f1", "--dry-run"])
    assert bad.exit_code != 0 and "tune.metric" in str(bad.exception)


def test_tune_renders_as_a_valid_restricted_rayjob_without_secrets(local_env, monkeypatch):
    """The real tune kind through the Kubernetes backend's dry-run: a RayJob whose entrypoint is
    the shared entrypoint (the driver reads spec.json), valid in strict mode (pod templates as
    core PodTemplates, RayJob fields against KubeRay v1.3's API: the k8s tests' validator)."""
    from typer.testing import CliRunner

    import yaml

    from cxrjobs.backends.kubernetes import pss
    from cxrjobs.cli import app
    from test_k8s_render import validate

    monkeypatch.setenv("CXRJOBS_S3_SECRET_KEY", "super-secret-value")
    monkeypatch.setenv("CXRJOBS_S3_ACCESS_KEY", "AKIAXYZ")
    for extra in ([], ["--namespace", "ml", "--cpu", "3", "--memory", "8Gi", "--image-repository", "reg.example.com/cxr/"]):
        res = CliRunner().invoke(app, ["submit", "tune", "--data", "datasets/covid-64", "--trials", "50",
                                       "--replicas", "10", "--name", "covid-pbt", "--backend", "kubernetes",
                                       "--dry-run", *extra])
        assert res.exit_code == 0, (res.output, res.exception)
        assert "super-secret-value" not in res.output and "AKIAXYZ" not in res.output
        [rj] = [o for o in yaml.safe_load_all(res.output) if o]
        validate(rj)
        assert rj["kind"] == "RayJob" and pss.violations(rj) == []
        assert rj["spec"]["entrypoint"] == "python -m cxrjobs.jobs.entrypoint"
        assert rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 10


def test_a_failed_ray_start_leaves_no_process_behind(tmp_path):
    """stop_leftovers ends this process's children started under the Ray temp dir, only those."""
    import subprocess
    import sys

    from cxrjobs.tune.job import stop_leftovers

    temp = tmp_path / "cxr-ray-x"
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--temp-dir={temp}/session"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--temp-dir=/elsewhere"])
    try:
        stop_leftovers(temp)
        assert ours.wait(timeout=10) is not None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_local_search_never_uses_more_cpus_than_the_machine_gives_it(monkeypatch):
    """--cpus above the cores this process may run on would give each trial more torch threads
    than there are cores: it is capped, and the log says so."""
    from cxrjobs.tune.job import local_cpus

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    said = []
    assert local_cpus(None, said.append) == 2 and local_cpus(1, said.append) == 1 and not said
    assert local_cpus(64, said.append) == 2
    assert said == ["--cpus 64: this machine gives the job 2 core(s); using 2"]


def test_space_and_spec_files_read_1e_4_as_a_number(tmp_path):
    """PyYAML (YAML 1.1) read `1e-4` as a string: `loguniform: [1e-4, 1e-2]` was refused and
    `lr: 1e-3` became the string '1e-3' in the trials' configs."""
    from cxrjobs.tune.space import load_space_file

    f = tmp_path / "space.yaml"
    f.write_text("lr: {loguniform: [1e-4, 1e-2]}\nmomentum: 9E-1\noptimizer: ['1e-4']\n")
    space = load_space_file(f, {})
    assert space["lr"] == {"loguniform": [1e-4, 1e-2]} and space["momentum"] == 0.9
    assert space["optimizer"] == ["1e-4"]  # quoted: the user asked for a string
    space["optimizer"] = ["sgd"]
    TuneSpec(job="train", train={"data": "datasets/x"}, space=space)  # valid as a space
    spec = tmp_path / "job.yaml"
    spec.write_text("tune:\n  job: train\n  space: {lr: {loguniform: [1e-5, 1e-1]}}\n  train: {data: datasets/x}\n")
    job = resolve_job("tune", spec, {})
    assert job.tune.space["lr"] == {"loguniform": [1e-5, 1e-1]}


@pytest.mark.parametrize("tune, message", [
    # Every trial trained, and only the export of the best one failed (a pydantic traceback, retried).
    ({"job": "transfer"}, "tune: Value error, a transfer search starts every trial from a pre-trained run: "
                          "pass --init-from RUN"),
    # PBT that can never perturb: accepted, and ran as a plain random search.
    ({"epochs_per_trial": 2, "perturbation_interval": 2}, "perturbation_interval 2 is not below epochs_per_trial 2"),
])
def test_a_search_that_cannot_do_what_it_says_is_refused_at_submit(tune, message):
    with pytest.raises(ConfigError, match=message):
        resolve_job("tune", None, {"tune": {"train": {"data": "d"}, **tune}})
    # The same options that can: a transfer with its starting point, random search without PBT.
    ok = {**tune, "train": {"data": "d", "init_from": "nih1"}} if "job" in tune else {"train": {"data": "d"}, **tune, "algo": "random"}
    resolve_job("tune", None, {"tune": ok})
