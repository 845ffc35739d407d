"""The training loop in-process (world size 1): learning, accumulation, resume bookkeeping."""

from __future__ import annotations

import json

import pytest
import torch

from cxrjobs.storage import join_key
from cxrjobs.train.distributed import DistContext
from cxrjobs.train.loop import Run, Trainer, default_threads
from cxrjobs.specs.train import TrainSpec

SOLO = DistContext(0, 1, torch.device("cpu"), None)


def test_trained_model_beats_trivial_baseline_on_test_split(phantom_nih_64, local_env):
    spec = TrainSpec(data=str(phantom_nih_64), epochs=10, batch_size=32, optimizer="adam", lr=1e-3,
                     bootstrap=200)
    result = Trainer(spec, Run(local_env, "learn"), SOLO, log=lambda m: None).fit()
    test = result["test"]
    assert test["split"] == "test" and test["images"] > 50 and test["patients"] > 10
    # A constant predictor scores 0.5; the lower CI bound must clear it.
    assert test["mean_auroc"]["value"] > 0.65, test["mean_auroc"]
    assert test["mean_auroc"]["ci"][0] > 0.5
    saved = json.loads(local_env.get_text(join_key("runs", "learn", "artifacts/result.json")))
    assert saved["test"]["mean_auroc"] == test["mean_auroc"]


def test_gradient_accumulation_equals_one_big_batch(phantom_nih_64, local_env):
    x, y = None, None
    weights = []
    for micro in (None, 8):
        spec = TrainSpec(data=str(phantom_nih_64), batch_size=32, micro_batch_size=micro,
                         optimizer="sgd", lr=0.1, momentum=0.0, augment={"hflip": 0, "vflip": 0})
        t = Trainer(spec, Run(local_env, f"acc-{micro}"), SOLO, log=lambda m: None)
        if x is None:
            x, y = t.data["train"].__getitems__(list(range(32)))
        t.step(x, y, torch.Generator().manual_seed(0))
        weights.append([p.detach().clone() for p in t.model.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_multiclass_objective_reports_accuracy(phantom_nih_64, local_env):
    spec = TrainSpec(data=str(phantom_nih_64), epochs=1, batch_size=64, objective="multiclass",
                     bootstrap=20)
    t = Trainer(spec, Run(local_env, "mc"), SOLO, log=lambda m: None)
    assert t.data["train"].num_classes == 15
    result = t.fit()
    assert "accuracy" in result["test"] and 0 <= result["test"]["accuracy"]["value"] <= 1


def test_finished_run_is_not_retrained(phantom_nih_64, local_env):
    spec = TrainSpec(data=str(phantom_nih_64), epochs=2, batch_size=64, bootstrap=0)
    Trainer(spec, Run(local_env, "again"), SOLO, log=lambda m: None).fit()
    logs = []
    t = Trainer(spec, Run(local_env, "again"), SOLO, log=logs.append)
    steps = []
    t.step = lambda *a: steps.append(1) or 0.0
    t.fit()
    assert not steps and any("2 of 2 epochs done" in m for m in logs)


def test_a_run_never_resumes_on_a_changed_dataset(phantom_nih_64, local_env, tmp_path):
    """A run cancelled at epoch 3, its dataset preprocessed again with another --seed (other
    patients in test), resumed on the new split: its test score then counted patients it had
    trained on. The checkpoint records the dataset's index.csv digest; a resume compares."""
    import shutil

    from cxrjobs.errors import CxrError

    data = tmp_path / "ds"
    shutil.copytree(phantom_nih_64, data)
    spec = TrainSpec(data=str(data), epochs=2, batch_size=64, bootstrap=0)
    t = Trainer(spec, Run(local_env, "moved"), SOLO, log=lambda m: None)
    t.begin()
    t.train_epoch()  # one of two epochs, then "cancelled"
    index = (data / "index.csv").read_text().splitlines()
    header, rows = index[0], index[1:]
    split = header.split(",").index("split")
    swapped = [",".join(f if i != split else {"train": "test", "test": "train"}.get(f, f)
                        for i, f in enumerate(r.split(","))) for r in rows]
    (data / "index.csv").write_text("\n".join([header, *swapped]) + "\n")
    with pytest.raises(CxrError, match=r"run moved trained its first 1 epoch\(s\) on another version of dataset"):
        Trainer(spec, Run(local_env, "moved"), SOLO, log=lambda m: None).begin()
    (data / "index.csv").write_text("\n".join(index) + "\n")  # the dataset it started on: resumes
    logs = []
    Trainer(spec, Run(local_env, "moved"), SOLO, log=logs.append).begin()
    assert any("1 of 2 epochs done" in m for m in logs)


def test_a_batch_larger_than_the_training_split_is_noted(phantom_nih_64, local_env):
    """--batch-size 100000 on a few hundred images was logged as 'global batch 100000' alone."""
    logs = []
    spec = TrainSpec(data=str(phantom_nih_64), epochs=1, batch_size=100000, micro_batch_size=64, bootstrap=0)
    t = Trainer(spec, Run(local_env, "huge"), SOLO, log=logs.append).begin()
    n = len(t.data["train"])
    assert any(f"is larger than the {n} training images: each epoch is one step" in m for m in logs), logs
    logs.clear()
    Trainer(TrainSpec(data=str(phantom_nih_64), epochs=1, batch_size=8, bootstrap=0), Run(local_env, "small"), SOLO,
            log=logs.append).begin()
    assert not any("is larger than" in m for m in logs)


def test_image_size_mismatch_is_a_clear_error(phantom_nih_64, local_env):
    from cxrjobs.errors import CxrError
    with pytest.raises(CxrError, match="preprocessed at 64"):
        Trainer(TrainSpec(data=str(phantom_nih_64), image_size=224), Run(local_env, "x"), SOLO)


def test_threads_default_to_cores_per_replica():
    import os
    cores = len(os.sched_getaffinity(0))
    assert default_threads(1) == cores and default_threads(cores * 4) == 1


def test_batchnorm_models_never_train_on_a_batch_of_one(phantom_nih_64, local_env):
    """resnext50 (BatchNorm) on a training split one image longer than a multiple of the batch:
    torch raises 'Expected more than 1 value per channel when training' on a batch of one (a
    user's run failed, then restarted three times). The epoch's last batch of one is skipped, and
    a micro-batch of one is merged into the micro-batch before it."""
    from cxrjobs.data.shards import ShardDataset

    n = len(ShardDataset(phantom_nih_64, "train"))
    spec = TrainSpec(data=str(phantom_nih_64), model="resnext50", epochs=1, batch_size=n - 1,
                     micro_batch_size=n - 2, bootstrap=0)
    logs = []
    t = Trainer(spec, Run(local_env, "bn"), SOLO, log=logs.append).begin()
    assert t.needs_pairs and (n - 1) % (n - 2) == 1  # batches [n-1, 1]; micro-batches [n-2, 1]
    record = t.train_epoch()
    assert record["train"]["images_seen"] == n - 1
    assert any("skipped a training batch of 1 image" in m for m in logs), logs


def test_init_from_weights_of_another_image_size_says_so(phantom_covid_32, phantom_nih_64, local_env):
    """The small CNN's fully connected layers are sized by the image: 64 px weights into a 32 px
    run failed with 'does not fit this model (another architecture or class count?)'."""
    from cxrjobs.errors import CxrError

    Trainer(TrainSpec(data=str(phantom_covid_32), objective="multiclass", epochs=1, bootstrap=0),
            Run(local_env, "at32"), SOLO, log=lambda m: None).fit()
    with pytest.raises(CxrError, match=r"init_from run at32: its weights were trained on 32 px images and this "
                                       r"dataset is 64 px; preprocess the data at 32 px \(--size 32\)"):
        Trainer(TrainSpec(data=str(phantom_nih_64), init_from="at32", epochs=1), Run(local_env, "to64"), SOLO,
                log=lambda m: None)
