"""`cxrjobs collect RUN -o DIR`: a run's artifacts from the store to a local folder."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrjobs.cli.common import out, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def collect(run: str = typer.Argument(..., help="run id"),
                out_dir: Path = typer.Option(..., "-o", "--out", help="local folder to fill"),
                checkpoints: bool = typer.Option(False, "--checkpoints", help="also the model checkpoints (large)"),
                workers: int = typer.Option(8, help="parallel downloads"),
                as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
        """Download a run's artifacts (metrics, results, evaluation results and plots, reports,
        logs; checkpoints with --checkpoints) from the store, verified by sha256, with a
        SHA256SUMS file. A rerun skips what is already there.

        Example: cxrjobs collect nih-train-20260101-120000-ab12 -o results/nih --checkpoints
        """
        from cxrjobs import api
        res = api.collect_run(run, str(out_dir), checkpoints=checkpoints, workers=workers,
                              progress=not as_json)
        if as_json:
            print_json(res)
            return
        ckpt = f"; {res['checkpoints_skipped']} checkpoint files left in the store (add --checkpoints)" \
            if res["checkpoints_skipped"] else ""
        out.print(f"collected {res['files']} files of run {run}: {res['summary']}{ckpt}; "
                  f"checksums in {res['checksums']} -> {res['dest']}")
