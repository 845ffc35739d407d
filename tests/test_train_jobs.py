"""The train and transfer job kinds: presets under flags, one shared set of training flags."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cxrjobs.cli import app
from cxrjobs.errors import ConfigError
from cxrjobs.jobs import presets
from cxrjobs.jobs.resolve import resolve_job


def test_transfer_method_presets_and_flags_override_them(local_env):
    m1 = resolve_job("transfer", None, {"train": {"data": "d", "init_from": "nih"}}, presets.defaults("transfer", 1)).train
    assert (m1.model, m1.freeze, m1.optimizer, m1.scheduler, m1.step_size, m1.gamma, m1.batch_size) == \
        ("smallcnn", "conv", "sgd", "step", 7, 0.1, 32)
    assert m1.objective == "multiclass" and m1.init_from == "nih"
    m2 = resolve_job("transfer", None, {"train": {"data": "d", "init_from": "nih", "freeze": "layer1,layer2",
                                                  "augment": {"rotation": 5}}},
                     presets.defaults("transfer", 2)).train
    # image_size is the dataset's: a preset that pinned 224 refused a 64 px dataset with "drop
    # --image-size" to a user who had given none.
    assert (m2.model, m2.sampler, m2.image_size, m2.monitor) == ("resnext50", "balanced", None, "val_loss")
    assert m2.freeze == ["layer1", "layer2"] and m2.augment.rotation == 5 and m2.augment.hflip == 0.5
    with pytest.raises(ConfigError, match="choose one of \\[1, 2\\]"):
        presets.defaults("transfer", 3)
    with pytest.raises(ConfigError, match="pass --from RUN"):
        resolve_job("transfer", None, {"train": {"data": "d"}}, presets.defaults("transfer", 1))


def test_cli_train_and_transfer_share_the_training_flags(local_env):
    from cxrjobs.cli import submit

    for cmd in ("nih-train", "train", "transfer"):
        res = CliRunner().invoke(app, ["submit", cmd, "--help"])
        assert res.exit_code == 0 and "Example: cxrjobs submit" in res.output
        for flag in ("--init-from", "--freeze", "--sampler", "--monitor", "--rotation", "--replicas"):
            assert flag in res.output, (cmd, flag)
    assert len(submit.TRAIN_FLAGS) > 20  # one definition, used by the three commands
    res = CliRunner().invoke(app, ["submit", "transfer", "--method", "1", "--from", "nih-run", "--data", "d",
                                   "--lr", "0.05", "--freeze", "conv+fc1", "--dry-run", "--json", "--name", "t1"])
    assert res.exit_code == 0, res.output
    spec = json.loads(res.output)["objects"][0]["env"]
    assert spec["CXRJOBS_RUN_ID"] == "t1"
    # Errors name the field (main() turns them into exit code 2).
    res = CliRunner().invoke(app, ["submit", "transfer", "--method", "1", "--data", "d", "--dry-run"])
    assert isinstance(res.exception, ConfigError) and "pass --from RUN" in str(res.exception)
    # Two starting points: --init-from was dropped without a word.
    res = CliRunner().invoke(app, ["submit", "transfer", "--method", "1", "--from", "nih-run", "--init-from",
                                   "other-run", "--data", "d", "--dry-run"])
    assert isinstance(res.exception, ConfigError) and "--from nih-run and --init-from other-run" in str(res.exception)
    res = CliRunner().invoke(app, ["submit", "train", "--data", "d", "--monitor", "val_nope", "--dry-run"])
    assert isinstance(res.exception, ConfigError) and "train.monitor" in str(res.exception)



@pytest.mark.parametrize("args", [
    ["submit", "train", "--data", "datasets/x", "--seed", "-1", "--dry-run"],
    ["submit", "tune", "--job", "train", "--data", "datasets/x", "--seed", "-1", "--dry-run"],
    ["data", "synth", "covid", "--out", "x", "--count", "10", "--seed", "-1"],
    ["data", "preprocess", "src", "--format", "covid", "--size", "32", "--out", "o", "--seed", "-1"],
])
def test_a_negative_seed_is_refused_before_anything_runs(args, local_env):
    """numpy's and torch's generators refuse negative seeds: the replica used to crash with a
    traceback, three times (restarts)."""
    from cxrjobs.errors import CxrError

    res = CliRunner().invoke(app, args)
    text = res.output + (str(res.exception) if isinstance(res.exception, CxrError) else "")
    assert res.exit_code == 2 or isinstance(res.exception, CxrError), text  # main() exits 2 on a CxrError
    assert "seed" in text and "greater than or equal to 0" in text


def test_kubernetes_options_on_the_local_backend_are_refused(local_env):
    """`submit train --cpu 3` on the local backend ignored --cpu without a word."""
    res = CliRunner().invoke(app, ["submit", "train", "--data", "d", "--cpu", "3", "--gpus", "1", "--dry-run"])
    assert isinstance(res.exception, ConfigError)
    assert "--cpu, --gpus: Kubernetes options" in str(res.exception) and "--backend kubernetes" in str(res.exception)
    ok = CliRunner().invoke(app, ["submit", "train", "--data", "d", "--namespace", "ml", "--dry-run"])
    assert ok.exit_code == 0, ok.output  # --namespace (also CXRJOBS_NAMESPACE) names where runs are looked up


def test_the_local_backend_refuses_more_replicas_than_one_machine_takes(local_env):
    """`--replicas 1024` was accepted (and shown by --dry-run) on a 2-core machine: 24 replicas
    already took 7 GB."""
    import os

    from cxrjobs.backends.local import LocalBackend

    most = LocalBackend.most_replicas()
    assert most == max(16, 4 * len(os.sched_getaffinity(0)))
    res = CliRunner().invoke(app, ["submit", "train", "--data", "d", "--replicas", str(most + 1), "--dry-run"])
    assert isinstance(res.exception, ConfigError), res.output
    assert f"--replicas {most + 1}: the local backend runs each replica as a process" in str(res.exception)
    assert f"at most {most}" in str(res.exception) and "--backend kubernetes" in str(res.exception)
    ok = CliRunner().invoke(app, ["submit", "train", "--data", "d", "--replicas", "1024", "--backend", "kubernetes",
                                  "--dry-run"])
    assert ok.exit_code == 0, ok.output
