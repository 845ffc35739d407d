"""`cxrjobs predict`: label images with a trained run, answering `unknown` for non-X-rays."""

from __future__ import annotations

from typing import List

import typer
from rich.table import Table

from cxrjobs.cli.common import out, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(inputs: List[str] = typer.Argument(..., help="image files (PNG/JPEG) or folders"),
                model: str = typer.Option(..., "--model", help="the trained run (uses its best.pt)"),
                batch_size: int = typer.Option(64, min=1, help="images per forward pass"),
                allow_unfinished: bool = typer.Option(
                    False, "--allow-unfinished", help="use a run that has not finished training (its best.pt so far)"),
                as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
        """Label chest X-ray images with a trained run: per image the label, its probability and an
        `ood` flag with its score (label `unknown` when the image does not look like the run's
        training X-rays). Preprocessing (size, pad/crop, normalisation) comes from the checkpoint.
        An undecodable file gets its own error entry; the exit code is 2 (bad input) only if no
        image could be scored.

        Example: cxrjobs predict --model transfer-20260101-120000-ab12 scans/ photo.jpg --json
        """
        from cxrjobs.eval.predict import predict_paths
        from cxrjobs.storage import open_store

        res = predict_paths(open_store(), model, inputs, batch_size, log=lambda m: None if as_json else out.print(m),
                            allow_unfinished=allow_unfinished)
        if as_json:
            print_json(res)
        else:
            t = Table()
            t.add_column("file", overflow="fold")  # the one thing a user must read whole: never cut
            for name in ("label", "probability", "ood", "ood score", "note"):
                t.add_column(name)
            for r in res["results"]:
                if "error" in r:
                    t.add_row(r["file"], "-", "-", "-", "-", f"error: {r['error']}")
                else:
                    note = r.get("ood_reason") or (f"model said {r['model_label']}" if "model_label" in r else "")
                    t.add_row(r["file"], r["label"], f"{r['probability']:.3f}", "yes" if r["ood"] else "no",
                              f"{r['ood_score']:.2f}", note)
            out.print(t)
            out.print(f"{res['scored']} of {res['images']} images scored with run {res['run']} "
                      f"({res['errors']} errors, {res['ood_flagged']} flagged as not like its training X-rays) "
                      f"in {res['seconds']:.2f}s")
        if res["scored"] == 0:  # nothing scorable was given: bad input, like the CLI's other refusals
            raise typer.Exit(2)
