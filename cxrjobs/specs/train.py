"""The resolved, validated training spec: what every training job kind (nih-train, train,
transfer, tune trials) hands the one training loop. Model names are plain strings here, so this
module imports nothing heavy; cxrjobs.models builds them."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODEL_NAMES = ("smallcnn", "resnext50", "densenet121")
# Named freeze presets; any other value is a list of parameter-name prefixes.
FREEZE_PRESETS = ("none", "conv", "conv+fc1")
# Validation metrics a run can select its best checkpoint by, and whether higher is better.
MONITORS = {"val_loss": "min", "val_auroc": "max", "val_mean_auroc": "max", "val_accuracy": "max",
            "val_balanced_accuracy": "max"}


def known_monitor(name: str, what: str = "monitor") -> str:
    """A validation metric name of MONITORS (a monitor picks best.pt; a search optimises it)."""
    if name not in MONITORS:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(MONITORS)}")
    return name


def dataset_ref(v: str) -> str:
    """A dataset given as `preprocess --out` names it: store://datasets/NAME means the key
    datasets/NAME of the configured store (the form every job takes); a local folder stays as is."""
    if v.startswith("store://"):
        key = v[len("store://"):].strip("/")
        if not key:
            raise ValueError(f"{v!r} names nothing in the store: use store://datasets/NAME")
        return key
    if v.startswith("s3://"):
        raise ValueError(f"{v!r}: datasets are read from the configured store; set CXRJOBS_STORE="
                         "s3://BUCKET[/PREFIX] and give the dataset as datasets/NAME or store://datasets/NAME")
    return v


def available_monitors(objective: str, num_classes: int) -> list[str]:
    """The val_* metrics summarize() reports for this objective and class count."""
    if objective == "multilabel":
        return ["val_loss", "val_mean_auroc"]
    return ["val_loss", "val_accuracy"] + (["val_auroc", "val_balanced_accuracy"] if num_classes == 2 else [])


class Augment(BaseModel):
    """The paper's augmentation, applied on the train split only."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip (paper)")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of a vertical flip (paper)")
    brightness: float = Field(0.0, ge=0, lt=1, description="max relative brightness jitter")
    rotation: float = Field(0.0, ge=0, le=45, description="max rotation in degrees, either way (paper: small)")


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    data: str = Field(description="dataset: a key prefix in the store (datasets/NAME or store://datasets/NAME) or a local folder")
    model: Literal[MODEL_NAMES] = "smallcnn"  # type: ignore[valid-type]
    image_size: int | None = Field(None, ge=16, description="must match the dataset; default: the dataset's")
    objective: Literal["multilabel", "multiclass"] = "multilabel"
    epochs: int = Field(10, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "step"] = "none"
    step_size: int = Field(7, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    batch_size: int = Field(1024, ge=1, description="global batch, split across replicas")
    micro_batch_size: int | None = Field(
        None, ge=1, description="largest forward batch per replica; larger shares accumulate gradients")
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy and torch generators take no negative seed
    deterministic: bool = False
    augment: Augment = Augment()
    pretrained: str | None = Field(None, description="imagenet | PATH | s3://... (torchvision models)")
    # Extension points of the one Trainer (transfer learning, baselines, tune trials).
    init_from: str | None = Field(
        None, description="a run id or checkpoint (store key / path): load its weights, skipping the head")
    freeze: Union[Literal[FREEZE_PRESETS], list[str]] = Field(  # type: ignore[valid-type]
        "none", description="none | conv | conv+fc1, or parameter-name prefixes; frozen layers stay in eval mode")
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: minority oversampling to about 50/50 (one seeded draw split across ranks)")
    monitor: str = Field("val_loss", description=f"validation metric that picks best.pt: {sorted(MONITORS)}")
    # Speed (issue 11). Checkpoints stay fp32 whatever the precision: runs resume across them.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast precision of forward passes: auto = bf16 on GPUs that support it, "
                            "else fp32; fp16 adds a gradient scaler")
    channels_last: bool | None = Field(
        None, description="channels-last memory format; default (None): on for torchvision models on a GPU")
    compile: bool = Field(False, description="torch.compile the training forward/backward (first steps compile)")
    threads: int | None = Field(None, ge=1, description="torch threads per replica; default cores / replicas")
    loader_workers: int = Field(0, ge=0)
    bootstrap: int = Field(200, ge=0, description="patient bootstrap replicates for CIs (0: none)")
    evaluate_test: bool = Field(True, description="score the best checkpoint on the test split at the end")

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, v: str) -> str:
        return known_monitor(v)

    @field_validator("data")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return dataset_ref(v)

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze_text(cls, v):
        # From the command line: a preset name, or comma-separated prefixes.
        if isinstance(v, str) and v not in FREEZE_PRESETS:
            return [p.strip() for p in v.split(",")]
        return v

    @field_validator("freeze")
    @classmethod
    def _freeze_prefixes(cls, v):
        if isinstance(v, list) and (not v or any(not p.strip() for p in v)):
            raise ValueError("a freeze list needs non-empty parameter-name prefixes (e.g. [features.0, features.3])")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.model == "smallcnn" and self.pretrained:
            raise ValueError("pretrained: smallcnn has no ImageNet weights; use init_from (a run) instead")
        return self

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.monitor]
