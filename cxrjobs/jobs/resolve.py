"""One validated JobSpec from a YAML spec file and command-line flags (flags win)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml
from pydantic import ValidationError

from cxrjobs import yamlload
from cxrjobs.errors import ConfigError
from cxrjobs.jobs.registry import KINDS
from cxrjobs.jobs.spec import JobSpec, check_run_name, new_run_id


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


def read_spec(kind: str, spec_file: Path) -> dict:
    """The mapping in a YAML spec file, or a ConfigError naming the file and the problem."""
    try:
        raw = Path(spec_file).read_bytes()
    except OSError as e:
        raise ConfigError(f"{spec_file}: cannot read spec ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{spec_file}: not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}); "
                          "save the spec as UTF-8") from None
    try:
        doc = yamlload.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{spec_file}: cannot read spec ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{spec_file}: expected a mapping (replicas:, train: ...)")
    if doc.get("kind", kind) != kind:
        raise ConfigError(f"{spec_file}: kind {doc['kind']!r} does not match `submit {kind}`")
    return doc


def preprocess_defaults(merged: dict) -> dict:
    """The output of a preprocess job that neither the spec nor --output sets."""
    spec = merged.get("preprocess", {}).get("spec", {})
    return {"preprocess": {"output": f"datasets/{spec.get('format') or 'nih'}-{spec.get('size') or 224}"}}


def resolve_job(kind: str, spec_file: Path | None, overrides: dict, defaults: dict | None = None,
                fill: Callable[[dict], dict] | None = None,
                flags: dict[str, str] | None = None) -> JobSpec:
    """defaults (a preset, cxrjobs.jobs.presets) < the spec file < the flags given in `overrides`
    (None = not given). `fill(merged)` then supplies what none of them set (a default that
    depends on other values); `flags` names the option behind a field ("train.data": "--data")
    for "required" errors, by default --<last part of the field>."""
    doc = read_spec(kind, spec_file) if spec_file is not None else {}
    merged = _merge(_merge(defaults or {}, doc), _drop_none(overrides))
    if fill is not None:
        merged = _merge(fill(merged), merged)
    merged["kind"] = kind
    merged.setdefault("name", new_run_id(kind))
    where = f" in {spec_file}" if spec_file else ""
    try:
        check_run_name(merged["name"])
    except ValueError as e:
        raise ConfigError(f"invalid {kind} spec{where}:\n  name: {e}") from None
    if kind in KINDS:  # an absent payload section: let its own required fields be named
        merged.setdefault(KINDS[kind].payload, {})
    try:
        return JobSpec.model_validate(merged)
    except ValidationError as e:
        lines = [f"invalid {kind} spec{where}:"]
        for err in e.errors():
            loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
            field = ".".join(loc) or "(spec)"
            msg = err["msg"]
            if err["type"] == "missing" and loc:
                flag = (flags or {}).get(field, "--" + loc[-1].replace("_", "-"))
                msg = f"required: pass {flag}" + (f" or set {field} in the spec file" if spec_file
                                                  else " (or give it in a spec file, -f)")
            lines.append(f"  {field}: {msg}")
        raise ConfigError("\n".join(lines)) from None
