"""Mixed precision and memory format for the one training loop.

`precision` picks the autocast dtype of forward passes: bf16 keeps fp32's exponent range, so it
needs no loss scaling; fp16 does, through a GradScaler. The weights, optimizer state and so the
checkpoints stay fp32 under every precision (autocast casts per operation; it never converts the
parameters), so a checkpoint written under bf16 resumes under fp32 and the reverse. The loss is
computed in fp32 from fp32 logits.

"auto" is bf16 on a GPU that computes it natively (compute capability >= 8: A100, H100, ...)
and fp32 everywhere else, the CPU included (bf16 on a CPU without AMX is slower than fp32;
ask for it explicitly).
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torchvision nets are conv/BN stacks that cuDNN runs fastest in NHWC under bf16/fp16.
CHANNELS_LAST_MODELS = ("resnext50", "densenet121")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "bf16"
    return "fp32"


def resolve_channels_last(channels_last: bool | None, model: str, device: torch.device) -> bool:
    if channels_last is not None:
        return channels_last
    return device.type == "cuda" and model in CHANNELS_LAST_MODELS


class Precision:
    """autocast() around forward passes; backward()/step() go through a GradScaler under fp16."""

    def __init__(self, precision: str, device: torch.device):
        self.name = resolve_precision(precision, device)
        self.device_type = device.type
        self.dtype = DTYPES.get(self.name)
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)  # skipped when the scaled gradients overflowed
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict | None) -> None:
        """A checkpoint from another precision has no (or an unusable) scaler state: keep ours."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
