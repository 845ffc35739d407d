"""What a preprocessing run produces: every option here changes the output (plan.json stores it,
and a rerun into the same output must match it), except `strict`, which only decides whether a
bad file stops the run."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A raw dataset is a local folder, or a prefix in the object store: `store://raw/NAME` (in the
# configured store, where `cxrjobs data upload DIR --name raw/NAME` puts it) or `s3://BUCKET/PREFIX`.
REMOTE_SCHEMES = ("store://", "s3://")

# Options that do not change what is written (compared by nothing when resuming).
NOT_OUTPUT = frozenset({"strict"})


def is_remote(source: str) -> bool:
    return source.startswith(REMOTE_SCHEMES)


def normalize_source(source: str) -> str:
    """An absolute path for a local folder (replicas run elsewhere); a store URL unchanged."""
    return source if is_remote(source) else os.path.abspath(os.path.expanduser(source))


class PreprocessSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    source: str
    format: Literal["nih", "covid", "imagefolder"]
    size: int = Field(224, ge=16, le=4096)
    fit: Literal["pad", "crop"] = "pad"
    shard_size: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy and torch generators take no negative seed
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

    @field_validator("source")
    @classmethod
    def _source(cls, v: str):
        for scheme in REMOTE_SCHEMES:
            if v.startswith(scheme) and not v[len(scheme):].strip("/"):
                raise ValueError(f"{v!r} names no dataset: use {scheme}raw/NAME"
                                 if scheme == "store://" else f"{v!r} names no bucket: use s3://BUCKET/PREFIX")
        return v

    @field_validator("patient_regex")
    @classmethod
    def _patient_regex(cls, v: str | None):
        if v is None:
            return v
        try:
            pattern = re.compile(v)
        except re.error as e:
            raise ValueError(f"{v!r} is not a valid regular expression ({e}); "
                             r"e.g. '^(\d+)_' takes the digits before the first '_'") from None
        if pattern.groups < 1:
            raise ValueError(f"{v!r} has no group: put the patient id in parentheses, "
                             r"e.g. '^(\d+)_' (group 1 is the patient id)")
        return v

    @model_validator(mode="after")
    def _options_of_the_format(self):
        # An option another format takes was ignored without a word.
        only = {"views": ("covid",), "class_map": ("imagefolder",), "labels": ("imagefolder",),
                "patient_regex": ("imagefolder",)}
        for name, formats in only.items():
            if getattr(self, name) is not None and self.format not in formats:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) is only for --format {' or '.join(formats)}, "
                                 f"not {self.format}: leave it out")
        return self

    def output_options(self) -> dict:
        """The options a rerun into the same output must repeat exactly."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in NOT_OUTPUT}

    def resolved_shard_size(self) -> int:
        # ~64 MiB per shard: few files to list and upload, small enough to rewrite on resume.
        return self.shard_size or min(4096, max(32, (64 << 20) // (self.size * self.size)))
