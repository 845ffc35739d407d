"""Where a raw dataset's files are: a local folder, or a prefix in the object store.

The readers (nih, covid, imagefolder) list and read through a `Files`, so one preprocessing path
serves both: `cxrjobs submit preprocess store://raw/NAME` (uploaded with `cxrjobs data upload DIR
--name raw/NAME`) or `s3://BUCKET/PREFIX`. Every replica lists the objects and reads the small
metadata files; it then downloads only the images of its own shards and decodes them from bytes
(no full local copy).

A file is named by a *locator*: its absolute path for a local folder, `<base>/<relative path>`
for a store prefix. Locators are what index.csv (`source`) and rejects.csv (`path`) record.
"""

from __future__ import annotations

import fnmatch
import io
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import pandas as pd

from cxrjobs.data.decode import DecodeError
from cxrjobs.errors import CxrError, DataError
from cxrjobs.specs.preprocess import is_remote
from cxrjobs.storage.local import walk_dirs


class Files(ABC):
    base: str          # the dataset root as the user named it (folder path or store URL)
    in_workers = True  # decoding processes may open locators themselves (else bytes are fetched)

    @abstractmethod
    def walk(self) -> list[str]:
        """Relative '/'-separated paths of every file at any depth, sorted."""

    @abstractmethod
    def locate(self, rel: str) -> str: ...

    @abstractmethod
    def isfile(self, locator: str) -> bool: ...

    @abstractmethod
    def read_bytes(self, locator: str) -> bytes: ...

    def top_dirs(self) -> list[str]:
        return sorted({rel.split("/", 1)[0] for rel in self.walk() if "/" in rel})

    def glob_top(self, pattern: str) -> list[str]:
        """Locators of the top-level files matching `pattern`."""
        return [self.locate(r) for r in self.walk() if "/" not in r and fnmatch.fnmatch(r, pattern)]

    def read_csv(self, locator: str, **kw) -> pd.DataFrame:
        compression = "gzip" if locator.endswith(".gz") else None
        try:
            return pd.read_csv(io.BytesIO(self.read_bytes(locator)), compression=compression, **kw)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, EOFError) as e:
            raise DataError(f"{locator}: cannot be read as CSV ({e})") from None

    def fetch(self, locators: Iterable[str], threads: int = 8) -> Iterator[bytes | DecodeError]:
        """Each locator's bytes, in order, read ahead by `threads`; a DecodeError says why one
        could not be read (it becomes a reject like an undecodable file)."""
        def get(loc: str) -> bytes | DecodeError:
            try:
                return self.read_bytes(loc)
            except (CxrError, OSError) as e:
                return DecodeError(f"cannot read: {e}")

        window = max(1, threads) * 4
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            pending = []
            for loc in locators:
                pending.append(pool.submit(get, loc))
                if len(pending) >= window:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()


class LocalFiles(Files):
    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DataError(f"{root}: {'a file, not a dataset folder' if os.path.exists(root) else 'dataset folder not found'}")
        try:
            root.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{printable(root)}: the dataset folder's path is not valid UTF-8; "
                            "rename it (or a folder above it)") from None
        self.root = self.base = root
        self._walk: list[str] | None = None

    def walk(self) -> list[str]:
        if self._walk is None:
            found = []
            for dirpath, files in walk_dirs(self.root):  # symlinked folders are followed
                rel_dir = os.path.relpath(dirpath, self.root)
                for name in files:
                    found.append(name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}")
            self._walk = sorted(found)
        return self._walk

    def top_dirs(self) -> list[str]:
        return sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))

    def locate(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def isfile(self, locator: str) -> bool:
        return os.path.isfile(locator)

    def read_bytes(self, locator: str) -> bytes:
        with open(locator, "rb") as f:
            return f.read()

    def read_csv(self, locator: str, **kw) -> pd.DataFrame:
        if not os.path.isfile(locator):
            raise DataError(f"{locator}: file not found")
        return super().read_csv(locator, **kw)


class StoreFiles(Files):
    """The objects under `prefix` of a store; listed once (a plan must see one fixed set)."""

    in_workers = False  # a store client is not shared with forked processes: fetch here, decode there

    def __init__(self, url: str, store=None, prefix: str | None = None):
        from cxrjobs.storage import join_key, open_location

        if store is None:
            store, prefix = open_location(url)
        self.store, self.prefix, self.base = store, prefix or "", url.rstrip("/")
        self._objects = {o.key[len(self.prefix) + 1:] if self.prefix else o.key: o.size
                         for o in store.list(self.prefix)}
        self._objects.pop("", None)
        if not self._objects:
            raise DataError(f"{url}: nothing there (store {store.url}, prefix {prefix!r}); upload the raw "
                            "dataset folder first: `cxrjobs data upload DIR --name raw/NAME`, then "
                            "preprocess store://raw/NAME")
        self._join = join_key

    def walk(self) -> list[str]:
        return sorted(self._objects)

    def locate(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def _rel(self, locator: str) -> str | None:
        head = self.base + "/"
        if locator.startswith(head):
            return locator[len(head):]
        return None

    def isfile(self, locator: str) -> bool:
        return self._rel(locator) in self._objects

    def read_bytes(self, locator: str) -> bytes:
        rel = self._rel(locator)
        if rel is None:
            raise DataError(f"{locator}: not inside {self.base}; for a store dataset give paths "
                            "relative to it (e.g. --csv metadata.csv)")
        return self.store.get_bytes(self._join(self.prefix, rel))


def open_files(source: str) -> Files:
    return StoreFiles(source) if is_remote(source) else LocalFiles(source)


def as_files(root: str | Files) -> Files:
    return root if isinstance(root, Files) else LocalFiles(root)


def locate_csv(files: Files, csv: str | None, default: str) -> str:
    """The label CSV's locator: --csv as given (a local path, or a name inside a store dataset),
    else `default` at the dataset root."""
    if csv is None:
        return files.locate(default)
    if isinstance(files, StoreFiles) and not csv.startswith(files.base + "/"):
        return files.locate(csv.lstrip("/"))
    return csv


def utf8_ok(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(path: str) -> str:
    """A path whose name is not valid UTF-8 (Python holds those bytes as surrogates), with the
    bad bytes written as \\xNN, so it can go into a UTF-8 CSV or a message."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
