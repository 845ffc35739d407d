"""The resolved, validated training spec: what every job type hands the one training loop."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxrjobs.models import MODELS


class Augment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip (paper)")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of a vertical flip (paper)")
    brightness: float = Field(0.0, ge=0, lt=1, description="max relative brightness jitter")


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="dataset: a key prefix in the store (datasets/NAME) or a local folder")
    model: Literal[MODELS] = "smallcnn"  # type: ignore[valid-type]
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
    seed: int = 0
    deterministic: bool = False
    augment: Augment = Augment()
    pretrained: str | None = Field(None, description="imagenet | PATH | s3://... (torchvision models)")
    threads: int | None = Field(None, ge=1, description="torch threads per replica; default cores / replicas")
    loader_workers: int = Field(0, ge=0)
    bootstrap: int = Field(200, ge=0, description="patient bootstrap replicates for CIs (0: none)")
    evaluate_test: bool = Field(True, description="score the best checkpoint on the test split at the end")

    @model_validator(mode="after")
    def _check(self):
        if self.model == "smallcnn" and self.pretrained:
            raise ValueError("pretrained: smallcnn has no ImageNet weights")
        return self
