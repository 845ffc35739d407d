"""Object store: a local directory (default) or MinIO/S3."""

from __future__ import annotations

import os

from cxrjobs.config import SECRET_ENV, Settings, load_settings
from cxrjobs.errors import ConfigError
from cxrjobs.storage.base import ObjectInfo, ObjectStore, check_key, join_key
from cxrjobs.storage.local import LocalStore

__all__ = ["ObjectInfo", "ObjectStore", "LocalStore", "check_key", "join_key", "open_location",
           "open_store"]

STORE_SCHEME = "store://"


def _s3(url: str, settings: Settings) -> ObjectStore:
    from cxrjobs.storage.s3 import S3Store

    missing = [name for name in SECRET_ENV if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"store {url} needs credentials: set {', '.join(missing)} "
                          "in the environment (on Kubernetes, from a Secret)")
    if not settings.s3_endpoint:
        raise ConfigError(f"{url} is on S3 but no endpoint is set: set CXRJOBS_S3_ENDPOINT "
                          "(host:port of the MinIO/S3 server)")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return S3Store(endpoint=settings.s3_endpoint, bucket=bucket, prefix=prefix,
                   access_key=os.environ[SECRET_ENV[0]], secret_key=os.environ[SECRET_ENV[1]],
                   secure=settings.s3_secure)


def open_store(settings: Settings | None = None) -> ObjectStore:
    settings = settings or load_settings()
    if not settings.is_s3:
        return LocalStore(settings.store)
    return _s3(settings.store, settings)


def open_location(url: str, settings: Settings | None = None) -> tuple[ObjectStore, str]:
    """`store://KEY` -> (the configured store, KEY); `s3://BUCKET/PREFIX` -> (that bucket on the
    configured endpoint, PREFIX). The key must name something: an empty one would be the root."""
    if url.startswith(STORE_SCHEME):
        key = url[len(STORE_SCHEME):]
        if not key.strip("/"):
            raise ConfigError(f"{url!r} names nothing in the store: add a name, e.g. "
                              f"{STORE_SCHEME}datasets/NAME or {STORE_SCHEME}raw/NAME")
        return open_store(settings), check_key(key)
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://"):].partition("/")
        if not bucket or not key.strip("/"):
            raise ConfigError(f"{url!r}: expected s3://BUCKET/PREFIX with a non-empty bucket and prefix")
        return _s3(f"s3://{bucket}", settings or load_settings()), check_key(key)
    raise ConfigError(f"{url!r}: expected {STORE_SCHEME}KEY or s3://BUCKET/PREFIX")
