"""Object store on a local directory (the embedded default)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from cxrjobs.errors import StoreError
from cxrjobs.storage.base import ObjectInfo, ObjectStore, check_key, disk_full_error, sha256_file


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Readers see the old file or the new one, never a part: temp file beside it + rename.
    Every local write of the store (shards, checkpoints, metrics) goes through here, so a full
    disk is reported once, here, with the path and the free space."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        full = disk_full_error(e, path)
        if full is not None:
            raise full from None
        if isinstance(e, (NotADirectoryError, FileExistsError)):
            raise StoreError(f"cannot write {path}: a part of that path is a file, not a folder; "
                             "choose another location") from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = disk_full_error(e, path, partial=tmp) if isinstance(e, Exception) else None
        Path(tmp).unlink(missing_ok=True)
        if full is not None:
            raise full from None
        raise


def walk_dirs(root: str | Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) under root, top-down in sorted order, following symlinked folders
    (a raw dataset's images_NNN may live on another disk); a link back up the tree is entered once."""
    seen = set()
    for dirpath, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield dirpath, names


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as source:
        atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20))


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a folder: a store (or --out) must be a "
                             "folder; choose a new path or remove the file")

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        dst = self._path(key)
        src = Path(path)
        if src.resolve() != dst.resolve():
            atomic_copy(src, dst)
        return ObjectInfo(check_key(key), dst.stat().st_size, None)

    def put_stream(self, key: str, write) -> None:
        atomic_write(self._path(key), write)  # beside the target: publishing is a rename, not a copy

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        dst = self._path(key)
        atomic_write_bytes(dst, data)
        return ObjectInfo(check_key(key), len(data), None)

    def create(self, key: str, data: bytes) -> bool:
        # A complete temp file hard-linked to the name: link() fails if the name exists, so of
        # two writers exactly one wins, and no reader sees a partial file.
        dst = self._path(key)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        atomic_write_bytes(tmp, data)
        try:
            os.link(tmp, dst)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def get_file(self, key: str, path: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"no object {key!r} in store {self.url}")
        atomic_copy(src, Path(path))

    def get_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"no object {key!r} in store {self.url}")
        return src.read_bytes()

    def stat(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        if not p.is_file():
            return None
        return ObjectInfo(check_key(key), p.stat().st_size, None)

    def sha256(self, key: str) -> str:
        return sha256_file(self._path(key))

    def checksum(self, key: str) -> str | None:
        p = self._path(key)
        return sha256_file(p) if p.is_file() else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if base.is_file():
            yield ObjectInfo(check_key(prefix), base.stat().st_size, None)
            return
        if not base.is_dir():
            return
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # an in-flight atomic write
                p = Path(dirpath) / name
                found.append(ObjectInfo(p.relative_to(self.root).as_posix(), p.stat().st_size, None))
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        return self._path(key) if key.strip("/") else self.root
