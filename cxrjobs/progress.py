"""Progress bars for long work (rich), silent when disabled or not on a terminal."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

console = Console(stderr=True, soft_wrap=True)


class _Null:
    def advance(self, n: int = 1) -> None: ...


class _Bar:
    def __init__(self, progress: Progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)


@contextlib.contextmanager
def bar(total: int, description: str, enabled: bool = True, in_bytes: bool = False) -> Iterator[_Null | _Bar]:
    """A progress bar over `total` items (or bytes, with `in_bytes`), advanced with .advance(n)."""
    # A pod's log is not a terminal: rich's redraws would fill it with control codes.
    if not enabled or not sys.stderr.isatty():
        yield _Null()
        return
    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    columns = (TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total))
