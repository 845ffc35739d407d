"""What a preprocessing run produces: every option here changes the output (plan.json stores it,
and a rerun into the same output must match it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PreprocessSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    source: str
    format: Literal["nih", "covid", "imagefolder"]
    size: int = Field(224, ge=16, le=4096)
    fit: Literal["pad", "crop"] = "pad"
    shard_size: int | None = Field(None, ge=1)
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    strict: bool = False
    csv: str | None = None
    views: list[str] | None = None           # covid: frontal views kept
    class_map: str | None = None             # imagefolder: 'covid=1,non_covid=0'
    labels: list[str] | None = None          # imagefolder: class names in order
    patient_regex: str | None = None         # imagefolder: patient id from the file name

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v):
        if abs(sum(v) - 1) > 1e-6 or min(v) < 0:
            raise ValueError("train/val/test fractions must be >= 0 and sum to 1")
        return v

    def resolved_shard_size(self) -> int:
        # ~64 MiB per shard: few files to list and upload, small enough to rewrite on resume.
        return self.shard_size or min(4096, max(32, (64 << 20) // (self.size * self.size)))
