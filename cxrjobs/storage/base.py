"""The object store interface: every dataset, checkpoint and artifact goes through it.

Keys are '/'-separated relative paths (like S3 keys). Two implementations: a local directory
(`LocalStore`, the embedded default) and MinIO/S3 (`S3Store`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator

from cxrjobs.errors import StoreError

CHUNK = 1 << 20


def check_key(key: str) -> str:
    """Normalise a key and reject ones that could escape the store (absolute, '..', empty)."""
    if not isinstance(key, str) or not key.strip("/"):
        raise StoreError(f"invalid object key {key!r}: it must be a non-empty relative path")
    if key.startswith("/") or "\\" in key:
        raise StoreError(f"invalid object key {key!r}: absolute paths are not allowed")
    parts = PurePosixPath(key).parts
    if any(p in ("..", ".") for p in parts):
        raise StoreError(f"invalid object key {key!r}: '..' and '.' segments are not allowed")
    return "/".join(parts)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# Below this much free space a failed write is taken to be a full disk: numpy and torch do not
# always surface ENOSPC (np.save: "N requested and M written"; torch.save: "unexpected pos").
_NEARLY_FULL = 1 << 20


def disk_full_error(exc: BaseException, path: str | Path, partial: str | Path | None = None) -> StoreError | None:
    """A StoreError naming `path` and the free space when `exc` came from a full file system
    (call it before removing `partial`, the half-written temp file); None for other errors."""
    enospc = False
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            enospc = True
        e = e.__cause__ or e.__context__
    where = Path(path).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free_now = shutil.disk_usage(where).free
    except OSError:
        return None
    if not enospc and free_now >= _NEARLY_FULL:
        return None
    written = 0
    if partial is not None:
        try:
            written = os.path.getsize(partial)
            os.unlink(partial)
        except OSError:
            pass
    usage = shutil.disk_usage(where)
    return StoreError(
        f"no space left on the device while writing {path}: its file system ({where}) has "
        f"{human_bytes(usage.free)} free of {human_bytes(usage.total)} after removing the partial file "
        f"({human_bytes(written)} written). Free some space there, or write somewhere with room "
        "(another --out, CXRJOBS_STORE, CXRJOBS_CACHE_DIR or TMPDIR).")


def join_key(*parts: str) -> str:
    return check_key("/".join(p.strip("/") for p in parts if p and p.strip("/")))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # None when the store does not know it without reading the object


class ObjectStore(ABC):
    """A flat key -> bytes store. Writes of whole objects are atomic: a reader sees the old
    object or the new one, never a part."""

    url: str

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> ObjectInfo: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download to `path` atomically (temp file + rename). Missing key -> StoreError."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """None when the key does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects under `prefix` (recursively), sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def create(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist yet; True when this call made it. Used to claim
        an output (preprocessing's plan.json) between concurrent writers. Here a check then a
        write (two writers can both see it missing); LocalStore makes it atomic."""
        if self.exists(key):
            return False
        self.put_bytes(key, data)
        return True

    def checksum(self, key: str) -> str | None:
        """The object's sha256, or None when it is missing or the store does not know it."""
        info = self.stat(key)
        return info.sha256 if info else None

    def put_stream(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """Publish what `write(fileobj)` writes (np.save, torch.save) under `key`, atomically,
        without holding it all in memory: via a temp file, then put_file."""
        fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=".part-")
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
            except Exception as e:
                full = disk_full_error(e, tmp, partial=tmp)
                if full is not None:
                    raise full from None
                raise
            self.put_file(key, tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def nothing_under(self, prefix: str) -> StoreError:
        """The error for a read that found nothing under `prefix`. A store that can tell why (an
        S3 bucket that does not exist) says so instead of only "nothing under"."""
        return StoreError(f"nothing under {prefix!r} in store {self.url}")

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def local_path(self, key: str) -> Path | None:
        """The object's path on this machine when the store is a local directory, else None.
        Lets jobs memory-map datasets in place instead of copying them."""
        return None

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def put_text(self, key: str, text: str) -> ObjectInfo:
        return self.put_bytes(key, text.encode("utf-8"))

    def get_jsonl(self, key: str) -> list[dict]:
        """A JSON-lines object (metrics.jsonl, Tune's results and history) as a list; [] when
        there is none yet."""
        if not self.exists(key):
            return []
        return [json.loads(line) for line in self.get_text(key).splitlines() if line.strip()]
