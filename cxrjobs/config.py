"""Where runs and datasets live, from environment variables or a config file.

Precedence: environment (CXRJOBS_*) > config file > defaults. The config file is YAML, found at
$CXRJOBS_CONFIG, else ./cxrjobs.yaml, else ~/.config/cxrjobs/config.yaml, with keys `store`,
`s3_endpoint` (host:port, or http(s)://host:port whose scheme sets TLS), `s3_secure`, `cache_dir`,
`state_dir`. Credentials are read from the environment only (CXRJOBS_S3_ACCESS_KEY /
CXRJOBS_S3_SECRET_KEY; on Kubernetes a Secret), never from flags or the config file, so they cannot
end up in shell history, logs or manifests.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from cxrjobs.errors import ConfigError

DEFAULT_STORE = "./.cxrjobs"
FILE_KEYS = {"store", "s3_endpoint", "s3_secure", "cache_dir", "state_dir"}
SECRET_ENV = ("CXRJOBS_S3_ACCESS_KEY", "CXRJOBS_S3_SECRET_KEY")


def _config_file() -> Path | None:
    explicit = os.environ.get("CXRJOBS_CONFIG")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            what = "a folder, not a file" if p.is_dir() else "a path that does not exist"
            raise ConfigError(f"CXRJOBS_CONFIG={explicit}: {what}; point it to a YAML settings file, "
                              "or unset it")
        return p
    for p in (Path("cxrjobs.yaml"), Path("~/.config/cxrjobs/config.yaml").expanduser()):
        if p.is_file():
            return p.absolute()  # the message then says which cxrjobs.yaml, wherever it runs
    return None


@dataclass(frozen=True)
class Settings:
    store: str = DEFAULT_STORE
    s3_endpoint: str | None = None
    s3_secure: bool = False
    cache_dir: str | None = None
    state_dir: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.store.startswith("s3://")

    @property
    def local_cache(self) -> Path:
        """Where S3 objects are cached for jobs (memory-mapped shards need a local file)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "cxrjobs"

    @property
    def local_state(self) -> Path:
        """Local backend bookkeeping (process ids, replica logs): always on this machine."""
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        if self.is_s3:
            return Path("./.cxrjobs").resolve() / "local-jobs"
        return Path(self.store).expanduser().resolve() / "local-jobs"

    def job_env(self) -> dict[str, str]:
        """The non-secret settings a job replica needs to reach the same store."""
        env = {"CXRJOBS_STORE": self.store if self.is_s3 else str(Path(self.store).expanduser().resolve())}
        if self.s3_endpoint:
            env["CXRJOBS_S3_ENDPOINT"] = self.s3_endpoint
            env["CXRJOBS_S3_SECURE"] = "1" if self.s3_secure else "0"
        if self.cache_dir:
            env["CXRJOBS_CACHE_DIR"] = self.cache_dir
        return env


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# A URL scheme as RFC 3986 spells it, followed by "//": what sets a store URL apart from a local
# path that merely holds a colon (./runs:2026).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _flag(value: object, where: str) -> bool:
    """s3_secure / CXRJOBS_S3_SECURE: a YAML boolean or 1/0, true/false, yes/no, on/off. Anything
    else used to read as False, so a typo ("ture") silently turned TLS off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{where}: {value!r} is not a yes/no setting; use true or false (1/0, yes/no, on/off)")


def _endpoint(text: str, secure: bool | None, where: str, secure_where: str) -> tuple[str, bool]:
    """'host:port', 'http://host:port' or 'https://host:port' -> ('host:port', TLS?). A scheme sets
    TLS; CXRJOBS_S3_SECURE / s3_secure may repeat it but not contradict it. `where` and
    `secure_where` say where each value was set (variable, or file and key) for the messages."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        rest, scheme = text, None
    elif scheme.lower() not in ("http", "https"):
        raise ConfigError(f"{where}: scheme {scheme!r} is not http or https; "
                          "give host:port, http://host:port or https://host:port")
    host = rest.rstrip("/")
    if not host or "/" in host or "?" in host or "@" in host:
        raise ConfigError(f"{where}: expected host:port with at most an http:// "
                          "or https:// scheme, no path or credentials (e.g. http://minio:9000)")
    if scheme is None:
        return host, bool(secure)
    tls = scheme.lower() == "https"
    if secure is not None and secure != tls:
        raise ConfigError(f"{where} says {scheme} but {secure_where} says TLS {'on' if secure else 'off'}; "
                          "drop one of them or make them agree")
    return host, tls


def _check_store_url(store: str, where: str) -> None:
    """A local directory or s3://BUCKET[/PREFIX]. Any other scheme was taken for a folder name:
    CXRJOBS_STORE=gs://bucket made a folder 'gs:' in the working directory."""
    m = _URL.match(store)
    if m is None:
        return  # a local path, colons and all
    scheme = m.group(1)
    if scheme == "s3":
        if not store[len("s3://"):].partition("/")[0]:
            raise ConfigError(f"{where}: no bucket in this S3 URL; use s3://BUCKET/PREFIX")
        return
    # S3:// is refused rather than accepted: everything downstream (job env, s3:// sources,
    # --out) compares the lower-case spelling, so one normalised here would still differ there.
    hint = (f"did you mean s3://{store[len(m.group(0)):]} (lower case)?" if scheme.lower() == "s3"
            else "use a local directory or s3://BUCKET/PREFIX")
    raise ConfigError(f"{where}: unsupported store URL; {hint}")


def _read_file(path: Path) -> dict[str, object]:
    """The settings in a config file, each checked for its type; errors name the file and key."""
    redo = "fix the file, or point CXRJOBS_CONFIG to another one"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{path}: cannot read the settings ({why}); {redo}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # PyYAML's own text spans several lines and names "<unicode string>"; say where instead.
        parts = []
        for what, mark in ((getattr(e, "context", None), getattr(e, "context_mark", None)),
                           (getattr(e, "problem", None), getattr(e, "problem_mark", None))):
            if what:
                parts.append(f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what)
        raise ConfigError(f"{path}: cannot read the settings, it is not valid YAML: "
                          f"{': '.join(parts) or e}; {redo}") from None
    if data is None:
        return {}  # an empty file (or only comments) sets nothing
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (one `key: value` a line, e.g. "
                          f"`store: s3://BUCKET/PREFIX`), got a {type(data).__name__}; {redo}")
    names = {str(k): v for k, v in data.items()}  # `1: x` is a (typo'd) key too, not a crash
    secret = {k for k in names if "key" in k.lower() or "secret" in k.lower()}
    if secret:
        raise ConfigError(
            f"{path}: {sorted(secret)} look like credentials; set {' and '.join(SECRET_ENV)} "
            "in the environment instead (or a Kubernetes Secret)")
    unknown = set(names) - FILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(FILE_KEYS)}")
    for key, value in names.items():
        if value is None or key == "s3_secure":  # s3_secure is checked by _flag
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} is {value!r} ({type(value).__name__}); it takes text, "
                              "a path or URL (quote it if YAML reads it as something else)")
        if not value.strip():
            # An empty store or cache_dir would be the working directory: not what anyone meant.
            raise ConfigError(f"{path}: {key} is empty; give a value, or remove the line for the default")
    return {k: v for k, v in names.items() if v is not None}


ENV_KEYS = {"CXRJOBS_STORE": "store", "CXRJOBS_S3_ENDPOINT": "s3_endpoint",
            "CXRJOBS_S3_SECURE": "s3_secure", "CXRJOBS_CACHE_DIR": "cache_dir",
            "CXRJOBS_STATE_DIR": "state_dir"}


def load_settings() -> Settings:
    values: dict[str, object] = {}
    where: dict[str, str] = {}  # key -> where its value came from, as the messages show it
    path = _config_file()
    if path is not None:
        for key, value in _read_file(path).items():
            values[key], where[key] = value, f"{path}: {key}: {value}"
    for env, key in ENV_KEYS.items():
        if os.environ.get(env):
            values[key], where[key] = os.environ[env], f"{env}={os.environ[env]}"
    secure_where = where.get("s3_secure", "CXRJOBS_S3_SECURE (s3_secure)")
    if "s3_secure" in values:
        values["s3_secure"] = _flag(values["s3_secure"], secure_where)
    if values.get("s3_endpoint"):
        secure = values.get("s3_secure")
        values["s3_endpoint"], values["s3_secure"] = _endpoint(
            str(values["s3_endpoint"]), secure if isinstance(secure, bool) else None,
            where["s3_endpoint"], secure_where)
    settings = Settings(**values)  # type: ignore[arg-type]
    store_where = where.get("store", f"store {settings.store}")
    _check_store_url(settings.store, store_where)
    if settings.is_s3 and not settings.s3_endpoint:
        raise ConfigError(f"{store_where}: the store is on S3 but no endpoint is set: set "
                          "CXRJOBS_S3_ENDPOINT (host:port of the MinIO/S3 server), or s3_endpoint in the "
                          "config file")
    return settings
