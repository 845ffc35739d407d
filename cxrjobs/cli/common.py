"""Shared CLI helpers: output as JSON or rich tables, and pydantic errors as field messages."""

from __future__ import annotations

import json

from pydantic import ValidationError
from rich.console import Console

from cxrjobs.errors import ConfigError

out = Console(soft_wrap=True)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


def validation_error(e: ValidationError, source: str) -> ConfigError:
    lines = [f"invalid {source}:"]
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(spec)"
        lines.append(f"  {field}: {err['msg']}")
    return ConfigError("\n".join(lines))
