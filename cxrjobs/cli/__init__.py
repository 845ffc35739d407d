"""The `cxrjobs` command. Each module holds the commands of one group; logic lives in the library."""

from __future__ import annotations

import sys

import typer

from cxrjobs.cli import collect, data, pipeline, predict, report, runs, submit
from cxrjobs.errors import CxrError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Train and evaluate chest X-ray classifiers as batch jobs, locally or on Kubernetes.")
app.add_typer(data.app, name="data")
app.add_typer(submit.app, name="submit")
app.add_typer(pipeline.app, name="pipeline")
runs.register(app)
collect.register(app)
predict.register(app)
report.register(app)


def main() -> None:
    try:
        app()
    except CxrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
