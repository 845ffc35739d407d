"""What Tune relies on in the training loop: hyper-parameters re-applied after a restore (PBT
explore after exploit) and the loop driven one epoch at a time (begin / train_epoch)."""

from __future__ import annotations

import json

import pytest
import torch

from cxrjobs.train import checkpoint
from cxrjobs.train.distributed import DistContext
from cxrjobs.train.loop import Run, Trainer
from cxrjobs.specs.train import TrainSpec

SOLO = DistContext(0, 1, torch.device("cpu"), None)
QUIET = dict(log=lambda m: None)


def _spec(data, **kw):
    base = dict(data=str(data), objective="multiclass", batch_size=32, bootstrap=0, evaluate_test=False,
                scheduler="step", step_size=2, gamma=0.5, optimizer="sgd", lr=0.05, momentum=0.9)
    return TrainSpec(**{**base, **kw})


def test_restore_applies_the_specs_new_hyper_parameters(phantom_covid_32, local_env):
    run = Run(local_env, "hp")
    Trainer(_spec(phantom_covid_32, epochs=3), run, SOLO, **QUIET).fit()
    donor = checkpoint.load(local_env, run.key("checkpoints/latest.pt"))
    assert donor["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.025)  # one decay after epoch 2

    new = _spec(phantom_covid_32, epochs=5, lr=0.2, momentum=0.5, gamma=0.25, step_size=3, weight_decay=1e-4)
    t = Trainer(new, run, SOLO, **QUIET)
    t._resume()
    g = t.opt.param_groups[0]
    # Weights and optimizer state (momentum buffers) are the donor's; the values are the spec's.
    for k, v in t.model.state_dict().items():
        torch.testing.assert_close(v, donor["model"][k])
    assert t.opt.state and all("momentum_buffer" in s for s in t.opt.state.values())
    # The new schedule from its start: lr 0.2 decayed once by the new gamma (3 epochs // step 3).
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.2 * 0.25, 0.5, 1e-4)
    assert (t.sched.gamma, t.sched.step_size, t.sched.last_epoch) == (0.25, 3, 3)
    t.begin()  # resumes again from the same checkpoint
    seen = []
    while t.epoch < new.epochs:
        rec = t.train_epoch()
        seen.append((rec["epoch"], rec["lr"], t.opt.param_groups[0]["momentum"], t.sched.gamma, t.sched.step_size))
    # Epoch 4 runs at lr 0.2 * 0.25^(3 // 3) = 0.05, epoch 5 too; momentum and gamma are the new ones.
    assert [(e, round(lr, 9), m, ga, st) for e, lr, m, ga, st in seen] == [
        (4, 0.05, 0.5, 0.25, 3), (5, 0.05, 0.5, 0.25, 3)]
    assert t.opt.param_groups[0]["lr"] == pytest.approx(0.05)  # no decay until epoch 6


def test_unchanged_spec_restores_the_lr_bit_for_bit(phantom_covid_32, local_env):
    run = Run(local_env, "same")
    spec = _spec(phantom_covid_32, epochs=3, gamma=0.3)
    Trainer(spec, run, SOLO, **QUIET).fit()
    saved = checkpoint.load(local_env, run.key("checkpoints/latest.pt"))
    t = Trainer(spec.model_copy(update={"epochs": 4}), run, SOLO, **QUIET)
    t._resume()
    assert t.opt.param_groups[0]["lr"] == saved["optimizer"]["param_groups"][0]["lr"]
    assert t.sched.state_dict() == saved["scheduler"]


def test_switching_optimizer_type_keeps_weights_and_starts_fresh_state(phantom_covid_32, local_env):
    run = Run(local_env, "switch")
    Trainer(_spec(phantom_covid_32, epochs=2), run, SOLO, **QUIET).fit()
    donor = checkpoint.load(local_env, run.key("checkpoints/latest.pt"))
    logs = []
    t = Trainer(_spec(phantom_covid_32, epochs=3, optimizer="adam", lr=1e-3), run, SOLO, log=logs.append)
    t._resume()
    assert isinstance(t.opt, torch.optim.Adam) and not t.opt.state
    assert t.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)  # 2 epochs // step 2 -> one decay
    assert t.opt.param_groups[0]["betas"] == (0.9, 0.999)
    for k, v in t.model.state_dict().items():
        torch.testing.assert_close(v, donor["model"][k])
    assert any("optimizer changed from sgd to adam" in m for m in logs)
    t.start_epoch, t.history = 0, []
    assert t.fit()["epochs"] == 3
    after = checkpoint.load(local_env, run.key("checkpoints/latest.pt"))
    assert "betas" in after["optimizer"]["param_groups"][0] and after["epoch"] == 3


def test_the_loop_one_epoch_at_a_time(phantom_covid_32, local_env):
    """begin() then train_epoch(): each epoch's checkpoint is written before it returns (Tune
    copies it as the trial's checkpoint), and a begin() on a new Trainer resumes from it."""
    run = Run(local_env, "steps")
    spec = _spec(phantom_covid_32, epochs=5)
    t = Trainer(spec, run, SOLO, **QUIET).begin()
    for n in (1, 2):
        rec = t.train_epoch()
        ckpt = checkpoint.load(local_env, run.key("checkpoints/latest.pt"))
        assert (rec["epoch"], ckpt["epoch"], t.epoch) == (n, n, n) and rec is t.history[-1]
        assert json.loads(ckpt["history"])[-1] == json.loads(json.dumps(rec))
    again = Trainer(spec, run, SOLO, **QUIET).begin()
    assert again.epoch == 2 and [h["epoch"] for h in again.history] == [1, 2]
    for k, v in again.model.state_dict().items():
        torch.testing.assert_close(v, t.model.state_dict()[k])
    assert again.train_epoch()["epoch"] == 3
