"""Mixed precision, channels-last and compile in the one Trainer (CPU: bf16 autocast is real on
CPU, so these run the same code path a GPU runs, with torch.autocast("cpu"))."""

from __future__ import annotations

import copy

import pytest
import torch

from cxrjobs.models import build_model
from cxrjobs.specs.train import TrainSpec
from cxrjobs.storage import join_key
from cxrjobs.train import checkpoint
from cxrjobs.train.distributed import DistContext
from cxrjobs.train.loop import Run, Trainer
from cxrjobs.train.precision import Precision, resolve_channels_last, resolve_precision

SOLO = DistContext(0, 1, torch.device("cpu"), None)
QUIET = dict(log=lambda m: None)


def spec(data, **kw):
    base = dict(data=str(data), objective="multiclass", batch_size=16, optimizer="adam", lr=1e-3,
                bootstrap=0, evaluate_test=False)
    return TrainSpec(**{**base, **kw})


def test_bf16_autocast_on_cpu_trains_and_keeps_fp32_weights(phantom_covid_32, local_env):
    t = Trainer(spec(phantom_covid_32, precision="bf16", epochs=3), Run(local_env, "bf16"), SOLO, **QUIET)
    assert t.amp.name == "bf16" and t.amp.scaler is None
    seen = []
    t.model.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    t.fit()
    assert seen and set(seen) == {torch.bfloat16}  # the forward really ran under bf16 autocast
    losses = [h["train"]["loss"] for h in t.history]
    assert losses[-1] < losses[0] * 0.97, losses
    saved = checkpoint.load(local_env, join_key("runs", "bf16", "checkpoints/latest.pt"))
    assert all(v.dtype == torch.float32 for v in saved["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("first,then", [("bf16", "fp32"), ("fp32", "bf16")])
def test_checkpoint_resumes_across_precisions(phantom_covid_32, local_env, first, then):
    run = Run(local_env, f"{first}-{then}")
    a = Trainer(spec(phantom_covid_32, precision=first, epochs=1), run, SOLO, **QUIET)
    a.fit()
    weights = {k: v.clone() for k, v in a.model.state_dict().items()}
    logs = []
    b = Trainer(spec(phantom_covid_32, precision=then, epochs=2), run, SOLO, log=logs.append)
    b._resume()
    assert b.start_epoch == 1 and b.amp.name == then
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, weights[k]), k  # loaded exactly, fp32 in and out
    b.start_epoch = 0  # fit() resumes again itself
    b.fit()
    assert len(b.history) == 2 and b.history[-1]["train"]["loss"] < b.history[0]["train"]["loss"] * 1.05
    assert any("resumed from checkpoint: 1 of 2" in m for m in logs)


def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed(phantom_covid_32, local_env):
    t = Trainer(spec(phantom_covid_32, precision="fp16", epochs=1), Run(local_env, "fp16"), SOLO, **QUIET)
    assert t.amp.scaler is not None
    before = [p.detach().clone() for p in t.model.parameters()]
    x, y = t.data["train"].__getitems__(list(range(16)))
    for _ in range(3):
        t.step(x, y, torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
    t.fit()
    saved = checkpoint.load(local_env, join_key("runs", "fp16", "checkpoints/latest.pt"))
    assert saved["grad_scaler"]["scale"] > 0
    fp32 = Trainer(spec(phantom_covid_32, precision="fp32", epochs=1), Run(local_env, "fp16"), SOLO, **QUIET)
    fp32._resume()  # an fp32 run ignores the scaler state
    assert fp32.start_epoch == 1 and fp32.amp.state_dict() == {}


@pytest.mark.parametrize("name", ["smallcnn", "resnext50"])
def test_channels_last_gives_the_same_outputs(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 64).eval()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in cl.parameters())  # really channels-last
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_channels_last_training_step_matches_contiguous(phantom_covid_32, local_env):
    weights = []
    for cl in (False, True):
        torch.manual_seed(0)
        t = Trainer(spec(phantom_covid_32, channels_last=cl, optimizer="sgd", lr=0.1,
                         augment={"hflip": 0, "vflip": 0}), Run(local_env, f"cl-{cl}"), SOLO, **QUIET)
        assert t.channels_last is cl
        x, y = t.data["train"].__getitems__(list(range(16)))
        t.step(x, y, torch.Generator().manual_seed(0))
        weights.append([p.detach().contiguous() for p in t.model.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_auto_choices(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    for capability, expected in (((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert resolve_precision("auto", gpu) == expected
    assert resolve_channels_last(None, "resnext50", gpu) and resolve_channels_last(None, "densenet121", gpu)
    assert not resolve_channels_last(None, "smallcnn", gpu) and not resolve_channels_last(None, "resnext50", cpu)
    assert resolve_channels_last(True, "smallcnn", cpu) and not resolve_channels_last(False, "resnext50", gpu)
    assert Precision("auto", cpu).autocast().__class__.__name__ == "nullcontext"


def test_spec_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        TrainSpec(data="x", precision="int8")


# ----------------------------------------------------------------------------- one replica per GPU

@pytest.mark.parametrize("gpus,local_world,local_rank,device,backend", [
    (0, 2, 1, "cpu", "gloo"),        # no GPU: CPU replicas over gloo
    (2, 2, 1, "cuda:1", "nccl"),     # one replica per GPU: nccl
    (8, 2, 0, "cuda:0", "nccl"),
    (1, 1, 0, "cuda:0", "nccl"),     # a pod with one GPU (LOCAL_WORLD_SIZE unset = 1)
    (2, 4, 3, "cuda:1", "gloo"),     # more replicas than GPUs share them over gloo
])
def test_backend_choice_per_host(gpus, local_world, local_rank, device, backend):
    from cxrjobs.train.distributed import choose_device

    env = {"LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(local_world)}
    got = choose_device(local_rank, env, gpus=gpus)
    assert (str(got[0]), got[1]) == (device, backend)
    assert choose_device(local_rank, {**env, "CXRJOBS_DIST_BACKEND": "gloo"}, gpus=gpus)[1] == "gloo"


def test_local_replicas_on_a_two_gpu_host_get_one_gpu_each_over_nccl():
    """Feeds choose_device what the local backend sets for each replica process."""
    from cxrjobs.backends.base import local_index_env
    from cxrjobs.train.distributed import choose_device

    got = [choose_device(i, local_index_env(i, 2), gpus=2) for i in range(2)]
    assert [(str(d), b) for d, b in got] == [("cuda:0", "nccl"), ("cuda:1", "nccl")]
