"""Object store: a local directory (default) or MinIO/S3."""

from __future__ import annotations

import os

from cxrjobs.config import SECRET_ENV, Settings, load_settings
from cxrjobs.errors import ConfigError
from cxrjobs.storage.base import ObjectInfo, ObjectStore, check_key, join_key
from cxrjobs.storage.local import LocalStore

__all__ = ["ObjectInfo", "ObjectStore", "LocalStore", "check_key", "join_key", "open_store"]


def open_store(settings: Settings | None = None) -> ObjectStore:
    settings = settings or load_settings()
    if not settings.is_s3:
        return LocalStore(settings.store)
    from cxrjobs.storage.s3 import S3Store

    missing = [name for name in SECRET_ENV if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"store {settings.store} needs credentials: set {', '.join(missing)} "
                          "in the environment (on Kubernetes, from a Secret)")
    bucket, _, prefix = settings.store[len("s3://"):].partition("/")
    return S3Store(endpoint=settings.s3_endpoint or "", bucket=bucket, prefix=prefix,
                   access_key=os.environ[SECRET_ENV[0]], secret_key=os.environ[SECRET_ENV[1]],
                   secure=settings.s3_secure)
