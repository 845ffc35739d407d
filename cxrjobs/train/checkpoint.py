"""Checkpoints in the object store: written whole and atomically, read with weights_only=True."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile

import torch

from cxrjobs.storage import ObjectStore


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters and buffers: equal digests across ranks mean DDP kept them in sync."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save(store: ObjectStore, key: str, obj: dict) -> None:
    store.put_stream(key, lambda f: torch.save(obj, f))


def load(store: ObjectStore, key: str) -> dict | None:
    local = store.local_path(key)
    if local is not None:
        return torch.load(local, map_location="cpu", weights_only=True) if local.is_file() else None
    if not store.exists(key):
        return None
    fd, tmp = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        store.get_file(key, tmp)
        return torch.load(tmp, map_location="cpu", weights_only=True)
    finally:
        os.unlink(tmp)
