"""One validated JobSpec from a YAML spec file and command-line flags (flags win)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from cxrjobs.errors import ConfigError
from cxrjobs.jobs.spec import JobSpec, new_run_id


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif v is not None and v != {}:
            out[k] = v
    return out


def _drop_none(d: dict) -> dict:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def resolve_job(kind: str, spec_file: Path | None, overrides: dict, defaults: dict | None = None) -> JobSpec:
    """defaults (a preset, cxrjobs.jobs.presets) < the spec file < the flags in `overrides`."""
    doc: dict = {}
    if spec_file is not None:
        try:
            doc = yaml.safe_load(Path(spec_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{spec_file}: cannot read spec ({e})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{spec_file}: expected a mapping (replicas:, train: ...)")
        if doc.get("kind", kind) != kind:
            raise ConfigError(f"{spec_file}: kind {doc['kind']!r} does not match `submit {kind}`")
    merged = _merge(_merge(defaults or {}, doc), _drop_none(overrides))
    merged["kind"] = kind
    merged.setdefault("name", new_run_id(kind))
    try:
        return JobSpec.model_validate(merged)
    except ValidationError as e:
        lines = [f"invalid {kind} spec{f' in {spec_file}' if spec_file else ''}:"]
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(spec)"
            lines.append(f"  {field}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
