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


def _one_line_summaries(group: typer.Typer) -> None:
    """A command list shows each command's first paragraph with its docstring's line breaks;
    give each command that paragraph as one line, which the list then wraps to the terminal."""
    for cmd in group.registered_commands:
        doc = cmd.help or (cmd.callback.__doc__ if cmd.callback else None)
        if cmd.short_help is None and doc:
            cmd.short_help = " ".join(doc.strip().split("\n\n")[0].split())
    for sub in group.registered_groups:
        _one_line_summaries(sub.typer_instance)


_one_line_summaries(app)


def main() -> None:
    try:
        app()
    except CxrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
