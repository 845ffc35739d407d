"""Processes as Linux's /proc shows them (no psutil): read by the local backend, the Tune
driver, the benchmarks and the tests; and the worker pools' signal set-up. Light: standard
library only."""

from __future__ import annotations

import os
import signal


def ignore_sigint() -> None:
    """A worker pool's initializer: Ctrl-C reaches the whole process group, and a worker that
    dies of it prints a traceback and can leave Pool.terminate() waiting for ever. The parent
    alone handles it (and terminates the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [0] state, [1] parent pid, [2] process
    group, [11] user and [12] system CPU time in clock ticks, [19] start time in ticks since boot.
    None when the process is gone."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None


def all_stat_fields() -> dict[int, list[str]]:
    """stat_fields of every process now running."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None:
                out[int(entry.name)] = fields
    return out


def descendants(root: int, procs: dict[int, list[str]] | None = None) -> set[int]:
    """Every process below `root` (children, their children, ...), from `procs` or /proc now."""
    parents = {pid: int(f[1]) for pid, f in (procs if procs is not None else all_stat_fields()).items()}
    found, frontier = set(), {root}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found
