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
