"""CLI start-up: wall time of `cxrjobs --help` and of a Kubernetes dry-run (issue 8's goals:
<= 0.5 s and <= 1 s), each the median of several fresh processes, plus which heavy modules a
dry-run still imports (`python -X importtime -m cxrjobs.cli ...` shows the rest)."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "PIL", "numpy", "kubernetes", "ray")


def row(name: str, value: float, unit: str, goal: str | None = None, ok: bool | None = None, **extra) -> dict:
    return {"group": "cli", "name": name, "value": float(value), "unit": unit, "goal": goal, "ok": ok, **extra}


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CXRJOBS_CONFIG", None)
    return env


def timed(args: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of each run: CPU time (user + sys) is what a loaded machine
    does not inflate."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cxrjobs.cli", *args], check=True, env=_env(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def heavy_imports(args: list[str]) -> list[str]:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "cxrjobs.cli", *args], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    names = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return sorted(m for m in HEAVY if m in names)


def run(quick: bool = False, workdir: Path | None = None) -> list[dict]:
    repeats = 3 if quick else 7
    dry = ["submit", "nih-train", "--dry-run", "--backend", "kubernetes", "--data", "datasets/nih-224",
           "--replicas", "10", "--name", "bench-dry-run"]
    rows = []
    for name, args, goal in (("cxrjobs --help", ["--help"], 0.5),
                             ("submit nih-train --dry-run --backend kubernetes", dry, 1.0)):
        walls, cpus = timed(args, repeats)
        med = statistics.median(walls)
        rows.append(row(f"start: {name}", med, "s", f"<= {goal} s", med <= goal,
                        wall_runs=[round(t, 3) for t in walls], cpu_median=round(statistics.median(cpus), 3),
                        load_average=os.getloadavg()[0], heavy_imports=heavy_imports(args)))
    return rows
