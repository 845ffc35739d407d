"""`cxrjobs report`: one self-contained HTML page comparing runs."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from cxrjobs.cli.common import out, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def report(runs: List[str] = typer.Argument(..., help="runs to compare (rows of the table)"),
               output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write"),
               as_json: bool = typer.Option(False, "--json", help="print the table as JSON too")):
        """Write one self-contained HTML report (images embedded): the paper's Table 3 over the runs'
        evaluations (test1 / test2 ...), then each run's spec, loss curves, confusion matrices,
        ROC curves and example predictions. Wide CIs (> 0.2) and splits with too few cases are flagged.

        Example: cxrjobs report transfer-20260101-120000-ab12 train-20260101-130000-cd34 -o report.html
        """
        from cxrjobs.report.html import write_report
        from cxrjobs.storage import open_store

        summary = write_report(open_store(), runs, output)
        if as_json:
            print_json(summary)
        else:
            for w in summary["warnings"]:
                out.print(f"warning: {w}")
            out.print(f"report of {len(runs)} run(s), columns {summary['columns']}: {summary['path']} "
                      f"({summary['bytes'] // 1024} KiB)")
