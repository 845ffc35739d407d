"""`cxrjobs demo`: the end-to-end example `make demo` runs."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrjobs.cli.common import out


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(out_dir: Path = typer.Option(Path("demo-out"), "--out", help="where phantom data goes"),
             replicas: int = typer.Option(2), epochs: int = typer.Option(8)):
        """Phantom NIH data, a preprocessing job and DDP training on the local backend.

        Example: cxrjobs demo --out demo-out
        """
        from cxrjobs.demo import run_demo
        from cxrjobs.headline import headline

        st = run_demo(out_dir, replicas=replicas, epochs=epochs)
        test = st.get("result", {}).get("test")
        summary = f"test {headline(test)}" if test else st["state"]
        out.print(f"demo {st['state']}: run {st['run']}, {summary}; artifacts: {st['artifacts']}")
