"""The search space as Ray Tune domains (initial samples) and PBT mutations, from the plain-data
space of a TuneSpec (cxrjobs.specs.tune: the paper's default, overridable from a YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cxrjobs import yamlload
from cxrjobs.errors import ConfigError


def load_space_file(path: str | Path, base: dict[str, Any]) -> dict[str, Any]:
    """A YAML space file's entries replace the same keys of `base` (the default space); keys it
    does not name keep their default. Give a fixed value to stop searching a hyper-parameter."""
    try:
        doc = yamlload.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the search space ({e})") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{path}: expected a mapping like `lr: {{loguniform: [1.0e-4, 0.1]}}`")
    return {**base, **doc}


def param_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune domains each trial's first config is sampled from."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, list):
            out[key] = tune.choice(dist)
        elif isinstance(dist, dict):
            kind, (lo, hi) = next(iter(dist.items()))
            out[key] = {"loguniform": lambda: tune.loguniform(lo, hi),
                        "uniform": lambda: tune.uniform(lo, hi),
                        "randint": lambda: tune.randint(int(lo), int(hi) + 1)}[kind]()
        else:
            out[key] = dist
    return out


def mutations(space: dict[str, Any]) -> dict[str, Any]:
    """PBT's hyperparam_mutations: choices as lists (explore shifts to a neighbour or resamples),
    distributions as domains (explore multiplies by 0.8 / 1.2 or resamples); fixed values stay."""
    domains = param_space(space)
    return {k: (space[k] if isinstance(space[k], list) else domains[k])
            for k in space if isinstance(space[k], (list, dict))}


def clamp(space: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Keep explored values inside the space's bounds (0.95 * 1.2 is no momentum)."""
    for key, dist in space.items():
        if isinstance(dist, dict) and key in config:
            kind, (lo, hi) = next(iter(dist.items()))
            v = min(max(config[key], lo), hi)
            config[key] = int(round(v)) if kind == "randint" else float(v)
    return config
