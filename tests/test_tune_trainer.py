"""The training loop's hooks that Tune relies on: hyper-parameters re-applied after a restore
(PBT explore after exploit) and the epoch callback."""

from __future__ import annotations

import pytest
import torch

from cxrjobs.train import checkpoint
from cxrjobs.train.distributed import DistContext
from cxrjobs.train.loop import Run, StopTraining, Trainer
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
    seen = []
    t = Trainer(new, run, SOLO, on_epoch_end=lambda tr, rec: seen.append(
        (rec["epoch"], rec["lr"], tr.opt.param_groups[0]["momentum"], tr.sched.gamma, tr.sched.step_size)), **QUIET)
    t._resume()
    g = t.opt.param_groups[0]
    # Weights and optimizer state (momentum buffers) are the donor's; the values are the spec's.
    for k, v in t.model.state_dict().items():
        torch.testing.assert_close(v, donor["model"][k])
    assert t.opt.state and all("momentum_buffer" in s for s in t.opt.state.values())
    # The new schedule from its start: lr 0.2 decayed once by the new gamma (3 epochs // step 3).
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.2 * 0.25, 0.5, 1e-4)
    assert (t.sched.gamma, t.sched.step_size, t.sched.last_epoch) == (0.25, 3, 3)
    t.start_epoch, t.history = 0, []  # fit() restores again from the same checkpoint
    t.fit()
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


def test_epoch_callback_sees_the_written_checkpoint_and_can_stop(phantom_covid_32, local_env):
    run = Run(local_env, "cb")
    calls = []

    def on_epoch_end(trainer, record):
        ckpt = checkpoint.load(local_env, run.key("checkpoints/latest.pt"))
        calls.append((record["epoch"], ckpt["epoch"], record is trainer.history[-1]))
        if record["epoch"] == 2:
            raise StopTraining("enough")

    result = Trainer(_spec(phantom_covid_32, epochs=5), run, SOLO, on_epoch_end=on_epoch_end, **QUIET).fit()
    assert calls == [(1, 1, True), (2, 2, True)]
    assert result["epochs"] == 2
    assert local_env.exists(run.key("artifacts/result.json"))
