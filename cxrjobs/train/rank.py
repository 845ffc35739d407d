"""A replica's rank and the replica count from its environment. No torch here: preprocessing
replicas use it too, and the preprocess image has no torch."""

from __future__ import annotations

import os

from cxrjobs.errors import ConfigError


def int_env(env, name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ConfigError(f"environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def rank_from_env(env=os.environ) -> tuple[int, int]:
    world = int_env(env, "WORLD_SIZE", 1)
    rank = int_env(env, "RANK") if env.get("RANK") else int_env(env, "JOB_COMPLETION_INDEX", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside WORLD_SIZE={world}")
    return rank, world
