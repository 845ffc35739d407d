"""`make bench`: every benchmark, printed as a table and written to benchmarks/results/*.json.

Usage: python benchmarks/run.py [--quick] [--only data|train|cli|predict|covid|images|tune]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
# --only GROUP -> the benchmark module whose run(quick, workdir) returns its rows, in run order.
GROUPS = {"data": "bench_data", "train": "bench_train", "cli": "bench_cli", "predict": "bench_predict",
          "covid": "covid_real", "images": "bench_images", "tune": "bench_tune"}
sys.path.insert(0, str(HERE))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    ap.add_argument("--only", choices=list(GROUPS))
    ap.add_argument("--workdir", type=Path, default=HERE / "results" / "work")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.time()
    for group, module in GROUPS.items():
        if args.only in (None, group):
            rows += importlib.import_module(module).run(quick=args.quick, workdir=args.workdir)

    table = Table("group", "benchmark", "value", "goal", "ok", title="cxrjobs benchmarks")
    for r in rows:
        ok = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[r.get("ok")]
        table.add_row(r["group"], r["name"], f"{r['value']:,.2f} {r['unit']}", r.get("goal") or "", ok)
    Console().print(table)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "seconds": time.time() - started, "quick": args.quick,
           "machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "cuda": torch.cuda.is_available()},
           "rows": rows}
    out = HERE / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=1))
    (HERE / "results" / "latest.json").write_text(json.dumps(doc, indent=1))
    print(f"{len(rows)} results, {sum(r.get('ok') is False for r in rows)} goals missed; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
