"""A hyper-parameter search (`tune` job kind): the inner training job and how to search over it.

The search space is plain data here (cxrjobs.tune.space turns it into Ray Tune domains), so this
module imports nothing heavy. A space maps a TrainSpec hyper-parameter to one of:
  [a, b, ...]                 a choice (PBT explores by shifting to a neighbour or resampling)
  {loguniform: [lo, hi]}      a float, log-uniform
  {uniform: [lo, hi]}         a float, uniform
  {randint: [lo, hi]}         an integer, lo..hi inclusive
  a plain value               fixed for every trial
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrjobs.specs.train import MONITORS, TrainSpec, known_monitor

# The hyper-parameters the Trainer re-applies after a restore (so PBT can change them mid-run).
TUNABLE = ("optimizer", "lr", "momentum", "weight_decay", "step_size", "gamma")
DISTRIBUTIONS = ("loguniform", "uniform", "randint")
INNER_JOBS = ("train", "transfer", "nih-train")


def default_space(epochs_per_trial: int) -> dict[str, Any]:
    """The paper's search: optimizer, learning rate, StepLR step size and gamma, momentum."""
    return {"optimizer": ["sgd", "adam"],
            "lr": {"loguniform": [1e-4, 1e-1]},
            "step_size": {"randint": [1, max(1, epochs_per_trial)]},
            "gamma": {"uniform": [0.1, 0.9]},
            "momentum": {"uniform": [0.5, 0.99]}}


def check_space(space: dict[str, Any], train: TrainSpec) -> dict[str, Any]:
    """Every entry names a tunable field, has a known shape, and every value it can take is valid
    for a TrainSpec (so no trial fails on a bad sample). Returns the space unchanged."""
    if not isinstance(space, dict) or not space:
        raise ValueError("space: expected a mapping of hyper-parameter -> choices/distribution")
    for key, dist in space.items():
        where = f"space.{key}"
        if key not in TUNABLE:
            raise ValueError(f"{where}: not a tunable hyper-parameter; tunable: {list(TUNABLE)}")
        if isinstance(dist, list):
            if not dist:
                raise ValueError(f"{where}: an empty choice list")
            values = dist
        elif isinstance(dist, dict):
            if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ValueError(f"{where}: expected one of {{{', '.join(DISTRIBUTIONS)}: [lo, hi]}}, "
                                 f"a list of choices or a fixed value; got {dist!r}")
            kind, bounds = next(iter(dist.items()))
            if (not isinstance(bounds, list) or len(bounds) != 2
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                    or not bounds[0] < bounds[1] + (kind == "randint")):
                raise ValueError(f"{where}: {kind} needs [lo, hi] numbers with lo < hi; got {bounds!r}")
            if kind == "randint" and not all(float(b).is_integer() for b in bounds):
                raise ValueError(f"{where}: randint bounds must be integers; got {bounds!r}")
            if kind == "loguniform" and bounds[0] <= 0:
                raise ValueError(f"{where}: loguniform needs lo > 0; got {bounds!r}")
            values = bounds
        else:
            values = [dist]
        for v in values:
            try:
                TrainSpec.model_validate({**train.model_dump(), key: v})
            except ValidationError as e:
                raise ValueError(f"{where}: value {v!r} is not a valid {key}: "
                                 f"{e.errors()[0]['msg']}") from None
    return space


class TuneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    job: Literal[INNER_JOBS] = Field("train", description="the training job kind each trial runs")  # type: ignore[valid-type]
    train: TrainSpec = Field(description="the inner job's spec; the space's values replace its fields")
    trials: int = Field(8, ge=1, le=10000, description="trials (PBT: the population size)")
    algo: Literal["pbt", "asha", "random"] = "pbt"
    epochs_per_trial: int = Field(5, ge=1)
    perturbation_interval: int = Field(1, ge=1, description="PBT: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: bottom fraction that clones the top")
    resample_probability: float = Field(0.25, ge=0, le=1, description="PBT: chance to resample instead of perturb")
    synch: bool = Field(False, description="PBT: every trial waits at each perturbation point, then all "
                                           "exploit/explore together (default: each trial on its own)")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once (default: cpus, at most trials)")
    cpus: int | None = Field(None, ge=1, description="CPUs Ray may use (default: the machine's / the cluster's)")
    metric: str = Field("val_loss", description=f"what the search optimises: {sorted(MONITORS)}")
    mode: Literal["min", "max"] | None = Field(None, description="default: the metric's natural direction")
    max_failures: int = Field(2, ge=0, description="retries of a failed trial, from its last checkpoint")
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy and torch generators take no negative seed
    space: dict[str, Any] | None = Field(None, description="default: the paper's space (see default_space)")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        return known_monitor(v, "metric")

    @model_validator(mode="after")
    def _resolve(self):
        # Resolved once at submit time and stored in spec.json: a rerun searches the same space.
        # What the inner job's own spec refuses, refused at submit: else every trial trains and
        # only the export of the best trial fails.
        if self.job == "transfer" and not self.train.init_from:
            raise ValueError("a transfer search starts every trial from a pre-trained run: pass "
                             "--init-from RUN (train.init_from)")
        if self.algo == "pbt" and self.perturbation_interval >= self.epochs_per_trial:
            raise ValueError(f"perturbation_interval {self.perturbation_interval} is not below "
                             f"epochs_per_trial {self.epochs_per_trial}: PBT would never exploit or "
                             "explore; lower --perturbation-interval or raise --epochs-per-trial")
        if self.mode is None:
            self.mode = MONITORS[self.metric]  # type: ignore[assignment]
        if self.space is None:
            self.space = default_space(self.epochs_per_trial)
        check_space(self.space, self.train)
        if self.train.epochs != self.epochs_per_trial:
            self.train = self.train.model_copy(update={"epochs": self.epochs_per_trial})
        return self

    @property
    def uses_step_schedule(self) -> bool:
        return any(k in self.space for k in ("step_size", "gamma"))  # type: ignore[operator]

    def trial_train_spec(self, config: dict[str, Any], **overrides) -> TrainSpec:
        """The TrainSpec one trial runs: the inner spec with the trial's sampled values."""
        update = dict(config)
        if self.uses_step_schedule:
            update["scheduler"] = "step"
        update["monitor"] = self.metric
        update.update(overrides)
        return TrainSpec.model_validate({**self.train.model_dump(), **update})
