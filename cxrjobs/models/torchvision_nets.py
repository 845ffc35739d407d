"""torchvision ResNeXt-50 (32x4d) and DenseNet-121 with a 1-channel input and N outputs."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from cxrjobs.errors import CxrError

_FIRST_CONV = {"resnext50": "conv1", "densenet121": "features.conv0"}
_HEAD = {"resnext50": "fc", "densenet121": "classifier"}
_CTOR = {"resnext50": torchvision.models.resnext50_32x4d, "densenet121": torchvision.models.densenet121}
_WEIGHTS = {"resnext50": "ResNeXt50_32X4D_Weights", "densenet121": "DenseNet121_Weights"}


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    weights = getattr(torchvision.models, _WEIGHTS[name]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:
        raise CxrError(
            f"could not download ImageNet weights for {name} ({type(e).__name__}: {e}). "
            f"Without network access, download {weights.url} elsewhere and pass the file: "
            f"--pretrained /path/to/file.pth (or an object key s3://...)") from None


def _gray_first_conv(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    w = state.get(key)
    if w is not None and w.dim() == 4 and w.shape[1] == 3:
        # Summing RGB filters gives the same response to a gray image replicated to 3 channels.
        state = dict(state)
        state[key] = w.sum(dim=1, keepdim=True)
    return state


def build_torchvision(name: str, num_classes: int, pretrained: str | None) -> nn.Module:
    model = _CTOR[name](weights=None)
    conv_path = _FIRST_CONV[name]
    parent = model.get_submodule(conv_path.rpartition(".")[0]) if "." in conv_path else model
    old = model.get_submodule(conv_path)
    setattr(parent, conv_path.rpartition(".")[2],
            nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False))
    if pretrained:
        from cxrjobs.models import load_state_checked, load_weights_file
        state = _imagenet_state(name) if pretrained == "imagenet" else load_weights_file(pretrained)
        state = _gray_first_conv(state, conv_path + ".weight")
        head = _HEAD[name] + "."
        # The ImageNet head has 1000 outputs: load everything but the head.
        load_state_checked(model, state, pretrained, skip=lambda k: k.startswith(head))
    head_layer = model.get_submodule(_HEAD[name])
    setattr(model, _HEAD[name], nn.Linear(head_layer.in_features, num_classes))
    return model
