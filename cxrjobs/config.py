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
            raise ConfigError(f"CXRJOBS_CONFIG points to {p}, which does not exist")
        return p
    for p in (Path("cxrjobs.yaml"), Path("~/.config/cxrjobs/config.yaml").expanduser()):
        if p.is_file():
            return p
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


def _truthy(v: object) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def _endpoint(text: str, secure: object) -> tuple[str, bool]:
    """'host:port', 'http://host:port' or 'https://host:port' -> ('host:port', TLS?). A scheme sets
    TLS; CXRJOBS_S3_SECURE / s3_secure may repeat it but not contradict it."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        rest, scheme = text, None
    elif scheme.lower() not in ("http", "https"):
        raise ConfigError(f"CXRJOBS_S3_ENDPOINT {text!r}: scheme {scheme!r} is not http or https; "
                          "give host:port, http://host:port or https://host:port")
    host = rest.rstrip("/")
    if not host or "/" in host or "?" in host or "@" in host:
        raise ConfigError(f"CXRJOBS_S3_ENDPOINT {text!r}: expected host:port with at most an http:// "
                          "or https:// scheme, no path or credentials (e.g. http://minio:9000)")
    if scheme is None:
        return host, bool(secure)
    tls = scheme.lower() == "https"
    if secure is not None and bool(secure) != tls:
        raise ConfigError(f"CXRJOBS_S3_ENDPOINT {text!r} says {scheme} but CXRJOBS_S3_SECURE (s3_secure) "
                          f"says TLS {'on' if secure else 'off'}; drop one of them or make them agree")
    return host, tls


def _check_store_url(store: str) -> None:
    """A local directory or s3://bucket[/prefix]. Any other scheme was taken for a folder name:
    CXRJOBS_STORE=gs://bucket made a folder 'gs:' in the working directory."""
    scheme, sep, _ = store.partition("://")
    if not sep or scheme == "s3":
        return
    hint = " (s3:// in lower case)" if scheme.lower() == "s3" else ""
    raise ConfigError(f"CXRJOBS_STORE (store) {store!r}: {scheme}:// stores are not supported; use a local "
                      f"directory or s3://BUCKET[/PREFIX]{hint}")


def load_settings() -> Settings:
    values: dict[str, object] = {}
    path = _config_file()
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the settings ({e}); fix the file, or point "
                              "CXRJOBS_CONFIG elsewhere") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        secret = {k for k in data if "key" in k.lower() or "secret" in k.lower()}
        if secret:
            raise ConfigError(
                f"{path}: {sorted(secret)} look like credentials; set {' and '.join(SECRET_ENV)} "
                "in the environment instead (or a Kubernetes Secret)")
        unknown = set(data) - FILE_KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(FILE_KEYS)}")
        for key, value in data.items():
            if key != "s3_secure" and value is not None and not isinstance(value, str):
                raise ConfigError(f"{path}: {key} is {value!r} ({type(value).__name__}); it takes text, "
                                  "a path or URL (quote it if YAML reads it as something else)")
        values.update({k: v for k, v in data.items() if v is not None})
    env_map = {"CXRJOBS_STORE": "store", "CXRJOBS_S3_ENDPOINT": "s3_endpoint",
               "CXRJOBS_S3_SECURE": "s3_secure", "CXRJOBS_CACHE_DIR": "cache_dir",
               "CXRJOBS_STATE_DIR": "state_dir"}
    for env, key in env_map.items():
        if os.environ.get(env):
            values[key] = os.environ[env]
    if "s3_secure" in values:
        values["s3_secure"] = _truthy(values["s3_secure"])
    if values.get("s3_endpoint"):
        values["s3_endpoint"], values["s3_secure"] = _endpoint(str(values["s3_endpoint"]), values.get("s3_secure"))
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_store_url(settings.store)
    if settings.is_s3 and not settings.s3_endpoint:
        raise ConfigError(f"store {settings.store} is on S3 but no endpoint is set: "
                          "set CXRJOBS_S3_ENDPOINT (host:port of the MinIO/S3 server)")
    return settings
