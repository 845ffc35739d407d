"""Transfer-learning extension points of the Trainer: where weights come from (a run, a store
key, an s3:// URL or a file), loading them without the head, and freezing layers.

Frozen layers keep requires_grad False (so the optimizer never sees them) and stay in eval mode
even when the Trainer calls model.train(): their BatchNorm running statistics do not move.
"""

from __future__ import annotations

import os
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

from cxrjobs.errors import CxrError
from cxrjobs.models import HEADS, freeze_prefixes, is_head, load_state_checked, under
from cxrjobs.storage import ObjectStore
from cxrjobs.storage.runs import locate_weights


def load_ref(ref: str, store: ObjectStore) -> tuple[dict, str]:
    """The checkpoint or state dict behind `ref` (weights_only), and a description of where."""
    kind, where = locate_weights(ref, store)
    if kind == "file":
        path, cleanup = where, None
    else:
        local = store.local_path(where)
        if local is not None:
            path, cleanup = str(local), None
        else:
            fd, path = tempfile.mkstemp(suffix=".pt")
            os.close(fd)
            cleanup = path
            store.get_file(where, path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors surface as several types
        raise CxrError(f"{ref}: not a loadable weights file ({type(e).__name__}: {e})") from None
    finally:
        if cleanup:
            os.unlink(cleanup)
    if not isinstance(obj, dict):
        raise CxrError(f"{ref}: expected a checkpoint or state dict, found {type(obj).__name__}")
    desc = f"run {ref}" if kind == "run" else f"{store.url}/{where}" if kind == "key" else where
    return obj, desc


def weights_file(ref: str, store: ObjectStore, cache: Path) -> str:
    """A local file for `ref` (torchvision --pretrained): a path as is, a store object fetched."""
    kind, where = locate_weights(ref, store)
    if kind == "file":
        return where
    local = store.local_path(where)
    if local is not None:
        return str(local)
    dest = cache / "weights" / where
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(where, dest)
    return str(dest)


def init_from(model: nn.Module, model_name: str, ref: str, store: ObjectStore, image_size: int | None = None) -> str:
    """Load every weight of `ref` except the head into `model`; returns what was loaded."""
    obj, desc = load_ref(ref, store)
    state = obj.get("model") if isinstance(obj.get("model"), dict) else obj
    arch = obj.get("arch")
    if arch is not None and arch != model_name:
        raise CxrError(f"init_from {desc}: it is a {arch} checkpoint but this run trains {model_name}; "
                       f"use --model {arch} or another run")
    head = lambda k: is_head(model_name, k)
    try:
        load_state_checked(model, state, f"init_from {desc}", skip=head)
    except CxrError as e:
        trained_at = obj.get("image_size")
        if trained_at and image_size and int(trained_at) != image_size:
            # The small CNN's fully connected layers are sized by the image: the shapes then
            # differ, and "another architecture or class count?" pointed the wrong way.
            raise CxrError(f"init_from {desc}: its weights were trained on {trained_at} px images and this "
                           f"dataset is {image_size} px; preprocess the data at {trained_at} px (--size "
                           f"{trained_at}) or start from a run trained at {image_size} px. ({e})") from None
        raise
    return f"initialised from {desc} (all weights but the head {', '.join(HEADS[model_name])})"


def _pinned_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze(model: nn.Module, model_name: str, spec_freeze: str | list[str]) -> list[str]:
    """Freeze parameters under the prefixes of `spec_freeze`; returns the frozen parameter names.

    Modules whose own parameters are all frozen (or, without parameters, that lie under a frozen
    prefix) are pinned to eval mode: model.train() leaves them in eval, so BatchNorm statistics
    and dropout stay as they were."""
    prefixes = freeze_prefixes(model_name, spec_freeze)
    if not prefixes:
        return []
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(under(n, p) for n in names)]
    if unmatched:
        tops = sorted({n.rsplit(".", 2)[0] for n in names})
        raise CxrError(f"freeze: no parameter of {model_name} starts with {unmatched}; its parameter "
                       f"groups are {tops[:20]}{' ...' if len(tops) > 20 else ''}")
    frozen = []
    for n, p in model.named_parameters():
        if any(under(n, pre) for pre in prefixes):
            p.requires_grad_(False)
            frozen.append(n)
    if len(frozen) == len(names):
        raise CxrError(f"freeze={spec_freeze!r} freezes every parameter of {model_name}: nothing "
                       "would train")
    for mname, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        pinned = all(not p.requires_grad for p in own) if own else (
            any(True for _ in m.buffers(recurse=False)) and any(under(mname, pre) for pre in prefixes))
        if pinned and mname:
            m.train = types.MethodType(_pinned_eval, m)
            m.train(False)
    return frozen
