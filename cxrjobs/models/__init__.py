"""Model registry: the paper's small CNN and torchvision ResNeXt-50 / DenseNet-121."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from cxrjobs.errors import CxrError

from cxrjobs.specs.train import MODEL_NAMES as MODELS


def build_model(name: str, num_classes: int, image_size: int, pretrained: str | None = None) -> nn.Module:
    if name == "smallcnn":
        from cxrjobs.models.smallcnn import SmallCNN
        if pretrained:
            raise CxrError("smallcnn has no ImageNet weights; use --init-from CHECKPOINT to start "
                           "from an earlier run instead")
        return SmallCNN(num_classes, image_size)
    if name in ("resnext50", "densenet121"):
        from cxrjobs.models.torchvision_nets import build_torchvision
        return build_torchvision(name, num_classes, pretrained)
    raise CxrError(f"unknown model {name!r}; choose one of {list(MODELS)}")


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                       skip: Callable[[str], bool] = lambda k: False) -> None:
    """load_state_dict with an error that lists every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not skip(k)]
    unexpected = [k for k in state if k not in own and not skip(k)]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and not skip(k) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit this model (another architecture or class count?)"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) +
                             (" ..." if len(items) > 12 else ""))
        raise CxrError("\n".join(lines))
    model.load_state_dict({k: v for k, v in state.items() if not skip(k)}, strict=False)


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """Weights from a checkpoint or plain state dict, never unpickling arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CxrError(f"weights file {path} not found") from None
    except Exception as e:  # pickle errors surface as several types
        raise CxrError(f"{path}: not a loadable weights file ({e})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CxrError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


# -- heads and freeze presets: what transfer learning replaces and keeps -----------------------
# The head is the last classifier layer: init_from skips it, so a new head of the right size
# (num_classes of the new dataset) is trained from scratch.
HEADS = {"smallcnn": ("classifier.5",), "resnext50": ("fc",), "densenet121": ("classifier",)}
# Named freeze presets as parameter-name prefixes. "conv" is every convolutional stage (for the
# torchvision nets: the whole body, BatchNorm included); "conv+fc1" also the first fully connected
# layer, which only smallcnn has.
_FREEZE = {
    "smallcnn": {"conv": ("features",), "conv+fc1": ("features", "classifier.1")},
    "resnext50": {"conv": ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")},
    "densenet121": {"conv": ("features",)},
}


def under(name: str, prefix: str) -> bool:
    """Whether parameter/module `name` lies under `prefix` on a dotted boundary."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def is_head(model_name: str, key: str) -> bool:
    return any(under(key, h) for h in HEADS[model_name])


def freeze_prefixes(model_name: str, freeze: str | list[str]) -> tuple[str, ...]:
    if isinstance(freeze, list):
        return tuple(freeze)
    if freeze == "none":
        return ()
    presets = _FREEZE[model_name]
    if freeze not in presets:
        raise CxrError(f"freeze={freeze!r} does not apply to {model_name} (it has {sorted(presets)}); "
                       "pass parameter-name prefixes instead, e.g. freeze: [layer1, layer2]")
    return presets[freeze]
