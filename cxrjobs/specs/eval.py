"""What an `evaluate` job asks for: score a finished run on a dataset split (or a whole external
dataset) with the threshold chosen on the run's own validation split."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxrjobs.specs.train import dataset_ref

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class EvalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run: str = Field(min_length=1, description="the trained run to score (its best.pt)")
    data: str = Field(description="dataset: a key prefix in the store (datasets/NAME or store://datasets/NAME) or a local folder")
    split: Literal["test", "val", "all"] = Field(
        "test", description="test | val | all (every image: an external test set such as the paper's test 2)")
    name: str | None = Field(None, pattern=NAME_RE,
                             description="results go to runs/<run>/eval/<name>/ (default: the split, e.g. test)")
    batch_size: int = Field(128, ge=1, description="images per forward pass per replica")
    bootstrap: int = Field(1000, ge=0, description="patient bootstrap replicates for the CIs")
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy and torch generators take no negative seed
    examples: int = Field(16, ge=0, le=64, description="images in the example-prediction grid")
    allow_unfinished: bool = Field(False, description="score a run that has not finished training (its best.pt so far)")

    @field_validator("data")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return dataset_ref(v)

    @property
    def result_name(self) -> str:
        return self.name or self.split
