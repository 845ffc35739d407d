"""Trainer extension points in-process (world size 1): init_from, freeze, a new head, the
balanced sampler, monitor, the checkpoint's input recipe, best.pt required, rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxrjobs.errors import CxrError
from cxrjobs.specs.train import TrainSpec
from cxrjobs.storage import join_key
from cxrjobs.train import checkpoint
from cxrjobs.train.distributed import DistContext
from cxrjobs.train.loop import Run, Trainer

SOLO = DistContext(0, 1, torch.device("cpu"), None)
QUIET = dict(bootstrap=0, evaluate_test=False)


@pytest.fixture(scope="module")
def phantom_covid_64(tmp_path_factory):
    """A preprocessed phantom COVID dataset (binary, 64 px, ~90 images)."""
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.data.synth import synth_covid
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.storage import LocalStore

    root = tmp_path_factory.mktemp("covid")
    synth_covid(root / "raw", 90, size=96, seed=2, special=False)
    preprocess(PreprocessSpec(source=str(root / "raw"), format="covid", size=64),
               LocalStore(root / "ds"), "", show_progress=False)
    return root / "ds"


def best(store, run):
    return checkpoint.load(store, join_key("runs", run, "checkpoints/best.pt"))


def test_init_from_replaces_head_and_copies_body(phantom_nih_64, phantom_covid_64, local_env):
    src = Trainer(TrainSpec(data=str(phantom_nih_64), epochs=1, batch_size=64, **QUIET),
                  Run(local_env, "src"), SOLO, log=lambda m: None)
    src.fit()
    source = best(local_env, "src")["model"]
    assert source["classifier.5.weight"].shape == (14, 60)
    logs = []
    t = Trainer(TrainSpec(data=str(phantom_covid_64), objective="multiclass", init_from="src", **QUIET),
                Run(local_env, "dst"), SOLO, log=logs.append)
    own = t.model.state_dict()
    assert own["classifier.5.weight"].shape == (2, 60)  # a new head sized by the new dataset
    for k, v in source.items():
        if not k.startswith("classifier.5."):
            assert torch.equal(own[k], v), k
    assert any("initialised from run src" in m for m in logs)
    # A checkpoint of another architecture is a clear error, not a silent partial load.
    with pytest.raises(CxrError, match="smallcnn checkpoint but this run trains resnext50"):
        Trainer(TrainSpec(data=str(phantom_covid_64), model="resnext50", objective="multiclass",
                          init_from="src", **QUIET), Run(local_env, "bad"), SOLO)
    with pytest.raises(CxrError, match="not found"):
        Trainer(TrainSpec(data=str(phantom_covid_64), init_from="no-such-run", **QUIET),
                Run(local_env, "bad2"), SOLO)


def test_init_from_a_file_path(phantom_covid_64, local_env, tmp_path):
    from cxrjobs.models import build_model
    state = build_model("smallcnn", 5, 64).state_dict()
    torch.save(state, tmp_path / "w.pt")
    t = Trainer(TrainSpec(data=str(phantom_covid_64), objective="multiclass",
                          init_from=str(tmp_path / "w.pt"), **QUIET), Run(local_env, "f"), SOLO)
    assert torch.equal(t.model.state_dict()["features.0.weight"], state["features.0.weight"])


def test_freeze_conv_keeps_weights_and_batchnorm_statistics(phantom_covid_64, local_env):
    spec = TrainSpec(data=str(phantom_covid_64), model="resnext50", objective="multiclass", freeze="conv",
                     epochs=1, batch_size=16, lr=0.05, threads=2, **QUIET)
    t = Trainer(spec, Run(local_env, "frz"), SOLO, log=lambda m: None)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    trainable = {id(p) for g in t.opt.param_groups for p in g["params"]}
    assert trainable == {id(t.model.fc.weight), id(t.model.fc.bias)}  # frozen params not in the optimizer
    t.model.train()  # what the loop does after each evaluation: frozen BatchNorm stays in eval
    assert not t.model.bn1.training and not t.model.layer4[0].bn1.training and t.model.fc.training
    t.fit()
    after = t.model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.startswith("fc.") for k in moved), moved
    assert "bn1.running_mean" not in moved and "layer1.0.bn1.num_batches_tracked" not in moved


def test_freeze_prefix_list_and_conv_fc1_on_smallcnn(phantom_covid_64, local_env):
    for freeze, kept in ((["features.0"], ("features.0.",)),
                         ("conv+fc1", ("features.", "classifier.1."))):
        spec = TrainSpec(data=str(phantom_covid_64), objective="multiclass", freeze=freeze, epochs=1,
                         batch_size=16, lr=0.05, **QUIET)
        t = Trainer(spec, Run(local_env, f"frz-{len(kept)}"), SOLO, log=lambda m: None)
        before = {k: v.clone() for k, v in t.model.state_dict().items()}
        t.fit()
        after = t.model.state_dict()
        for k in before:
            assert torch.equal(before[k], after[k]) == k.startswith(kept), (freeze, k)
    with pytest.raises(CxrError, match="no parameter of smallcnn starts with"):
        Trainer(TrainSpec(data=str(phantom_covid_64), freeze=["layer9"], **QUIET), Run(local_env, "x"), SOLO)
    with pytest.raises(CxrError, match="does not apply to resnext50"):
        Trainer(TrainSpec(data=str(phantom_covid_64), model="resnext50", freeze="conv+fc1", **QUIET),
                Run(local_env, "y"), SOLO)


def test_checkpoint_records_input_recipe_and_monitor(phantom_covid_64, local_env):
    spec = TrainSpec(data=str(phantom_covid_64), objective="multiclass", monitor="val_auroc", epochs=3,
                     batch_size=16, optimizer="adam", lr=1e-3, bootstrap=0)
    result = Trainer(spec, Run(local_env, "mon"), SOLO, log=lambda m: None).fit()
    ck = best(local_env, "mon")
    assert ck["arch"] == "smallcnn" and ck["objective"] == "multiclass" and ck["image_size"] == 64
    assert ck["class_names"] == ["non-COVID", "COVID-19"] and ck["fit"] == "pad"
    assert ck["normalization"] == {"mean": 0.449, "std": 0.226}
    aurocs = [h["val"]["auroc"]["value"] for h in __import__("json").loads(ck["history"])]
    assert ck["monitor"] == "val_auroc" and ck["best_monitor"] == max(a for a in aurocs if a is not None)
    assert result["best_monitor"] == ck["best_monitor"] and "balanced_accuracy" in result["test"]
    with pytest.raises(CxrError, match="monitor val_mean_auroc is not reported"):
        Trainer(TrainSpec(data=str(phantom_covid_64), objective="multiclass", monitor="val_mean_auroc"),
                Run(local_env, "m2"), SOLO)


def test_no_improving_epoch_fails_clearly_instead_of_scoring(phantom_covid_64, local_env):
    # An absurd learning rate: weights overflow in the first step, every validation loss is NaN.
    spec = TrainSpec(data=str(phantom_covid_64), objective="multiclass", epochs=2, batch_size=16,
                     lr=1e30, momentum=0.0, bootstrap=0)
    t = Trainer(spec, Run(local_env, "nan"), SOLO, log=lambda m: None)
    with pytest.raises(CxrError, match="no epoch improved val_loss .*test split was not looked at"):
        t.fit()
    assert all(math.isnan(h["val"]["loss"]) for h in t.history)
    assert not local_env.exists(join_key("runs", "nan", "artifacts/result.json"))


def test_rotation_only_on_the_training_batch(phantom_covid_64, local_env):
    from cxrjobs.data.transforms import prepare
    from cxrjobs.specs.train import Augment

    x = torch.zeros((4, 1, 32, 32), dtype=torch.uint8)
    x[:, :, 14:18, 2:30] = 255  # a horizontal bar
    rot = Augment(hflip=0, vflip=0, rotation=45)
    out = prepare(x, rot, torch.Generator().manual_seed(0))
    plain = prepare(x, Augment(hflip=0, vflip=0), torch.Generator().manual_seed(0))
    assert not torch.allclose(out, plain)
    # A 90-degree turn of a square image is exact (up to interpolation at the centre grid).
    from cxrjobs.data.transforms import rotate
    turned = rotate(x.float(), torch.full((4,), math.pi / 2))
    torch.testing.assert_close(turned, torch.rot90(x.float(), 1, dims=(-2, -1)), atol=1e-3, rtol=0)
    # Validation does not rotate: the same weights score val identically with and without it.
    runs = [Trainer(TrainSpec(data=str(phantom_covid_64), objective="multiclass", augment={"rotation": r},
                              **QUIET), Run(local_env, f"r{r}"), SOLO) for r in (0, 30)]
    a, b = (t.evaluate("val") for t in runs)
    assert a["loss"] == b["loss"]
    # ... while the training step does: the same batch gives different gradients.
    xs, ys = runs[0].data["train"].__getitems__(list(range(8)))
    for t in runs:
        t.step(xs, ys, torch.Generator().manual_seed(1))
    w0, w1 = (t.model.features[0].weight for t in runs)
    assert not torch.equal(w0, w1)


def test_balanced_sampler_trains_on_both_classes_evenly(phantom_covid_64, local_env):
    spec = TrainSpec(data=str(phantom_covid_64), objective="multiclass", sampler="balanced", epochs=1,
                     batch_size=16, **QUIET)
    t = Trainer(spec, Run(local_env, "bal"), SOLO, log=lambda m: None)
    sampler = t._sampler(t.data["train"])
    y = t.data["train"].targets.numpy()
    drawn = y[np.asarray(list(sampler))]
    assert 0.35 < drawn.mean() < 0.65, (y.mean(), drawn.mean())


def test_pretrained_weights_from_a_store_key_or_s3_url(phantom_covid_64, local_env):
    """The baselines' ImageNet start, with a saved random ImageNet-shaped state dict (no downloads
    here): RGB first conv and 1000-class head, as torchvision ships them."""
    import io

    import torchvision

    ref = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    buf = io.BytesIO()
    torch.save(ref, buf)
    local_env.put_bytes("weights/rx50.pth", buf.getvalue())
    for where in ("weights/rx50.pth", f"s3://bucket/weights/rx50.pth"):
        if where.startswith("s3://"):
            with pytest.raises(CxrError, match="outside the configured store"):
                Trainer(TrainSpec(data=str(phantom_covid_64), model="resnext50", pretrained=where, **QUIET),
                        Run(local_env, "pre"), SOLO)
            continue
        t = Trainer(TrainSpec(data=str(phantom_covid_64), model="resnext50", objective="multiclass",
                              pretrained=where, **QUIET), Run(local_env, "pre"), SOLO)
        own = t.model.state_dict()
        assert torch.equal(own["layer3.2.conv2.weight"], ref["layer3.2.conv2.weight"])
        assert torch.equal(own["conv1.weight"], ref["conv1.weight"].sum(dim=1, keepdim=True))
        assert own["fc.weight"].shape == (2, 2048)
