"""`cxrjobs runs | status | logs | cancel`."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Column, Table

from cxrjobs.backends import get_backend
from cxrjobs.cli.common import out, print_json
from cxrjobs.cli.kube import build_options, namespace_option
from cxrjobs.headline import headline

BACKEND = typer.Option("local", help="backend the run was submitted to: local | kubernetes")
NAMESPACE = namespace_option()


def _kube(backend: str, namespace: str):
    return build_options({"namespace": namespace}) if backend == "kubernetes" else None


def _backend(backend: str, namespace: str):
    return get_backend(backend, _kube(backend, namespace))


def register(app: typer.Typer) -> None:
    def _brief(message: str, most: int = 100) -> str:
        """A message's first line, cut at `most` characters: a long error wrapped into some 25
        lines of the table. `status RUN` prints it whole."""
        first = (message or "").strip().split("\n", 1)[0]
        if len(first) <= most and first == (message or "").strip():
            return first
        return f"{first[:most].rstrip()}... (see status)"

    @app.command()
    def runs(backend: str = BACKEND, namespace: str = NAMESPACE, as_json: bool = typer.Option(False, "--json")):
        """List runs and their states.

        Example: cxrjobs runs --backend kubernetes --namespace cxr
        """
        items = [s.to_dict() for s in _backend(backend, namespace).list()]
        if as_json:
            print_json(items)
            return
        if not items:
            where = f" in namespace {namespace}" if backend == "kubernetes" else ""
            print(f"no runs yet on the {backend} backend{where}: `cxrjobs submit --help` lists the jobs, "
                  "`make demo` runs the paper pipeline")
            return
        # The run id is what a user copies from here: never truncated or wrapped, whatever the
        # terminal width. Short columns keep their width too; only the message wraps.
        cols = [Column(name, no_wrap=True, overflow="ignore",
                       min_width=max([len(name)] + [len(str(s[key])) for s in items]))
                for name, key in (("run", "run"), ("kind", "kind"), ("state", "state"),
                                  ("replicas", "replicas"), ("restarts", "restarts"))]
        message = Column("message", overflow="fold", ratio=1, min_width=20)
        t = Table(*cols, message, box=None, padding=(0, 1), pad_edge=False)
        for s in items:
            t.add_row(s["run"], s["kind"], s["state"], str(s["replicas"]), str(s["restarts"]),
                      _brief(s["message"]))
        # Wider than the terminal only when the fixed columns alone do not fit (it soft-wraps).
        need = sum(c.min_width + 2 for c in cols) + message.min_width
        (out if need <= out.width else Console(width=need, soft_wrap=True)).print(t)

    @app.command()
    def status(run: str, backend: str = BACKEND, namespace: str = NAMESPACE,
               as_json: bool = typer.Option(False, "--json")):
        """State (Pending/Running/Restarting/Succeeded/Failed/Cancelled), epoch and last metrics.

        Example: cxrjobs status nih-train-20260101-120000-ab12 --json
        """
        from cxrjobs import api
        st = api.run_status(run, backend, _kube(backend, namespace))
        if as_json:
            print_json(st)
            return
        line = f"{st['run']}: {st['state']}"
        if "epoch" in st:
            line += f", epoch {st['epoch']}, val_loss {st['last_metrics']['val']['loss']:.4f}, " \
                    f"{headline(st['last_metrics']['val'])}"
        if "tune" in st:
            tn = st["tune"]
            counts = ", ".join(f"{v} {k}" for k, v in tn["trials"].items() if k != "total")
            best = tn.get("best")
            # Written by the search as it runs: a search that stopped without ending holds its last counts.
            when = " when it stopped" if st["state"] in ("Failed", "Cancelled") and not tn.get("finished") else ""
            line += f"; trials{when}: {tn['trials']['total']} ({counts or 'none started'})"
            if best:
                line += f"; best so far {tn['metric']} {best['value']:.4f} (val split, trial {best['trial']}, epoch {best['epoch']})"
        if st.get("result", {}).get("best", {}) and "tune" in st:
            line += f"; best run exported as {st['result']['best']['run']}"
        if st.get("result", {}).get("test"):
            best = st["result"].get("best_epoch") or st.get("best_epoch")
            line += f"; test of best.pt{f' (epoch {best})' if best else ''}: {headline(st['result']['test'])}"
        if st.get("evaluation"):
            from cxrjobs.eval.job import summary_line
            line += f"; {summary_line(st['evaluation'])}"
        if st["message"]:
            line += f" ({st['message']})"
        out.print(line + f"\nartifacts: {st['artifacts']}")

    @app.command()
    def logs(run: str, replica: Optional[int] = typer.Option(None, help="one replica (default all)"),
             follow: bool = typer.Option(False, "-f", "--follow"), backend: str = BACKEND,
             namespace: str = NAMESPACE):
        """Print (or follow) replica logs.

        Example: cxrjobs logs RUN --replica 0 -f
        """
        for line in _backend(backend, namespace).logs(run, replica, follow):
            print(line, end="", flush=True)

    @app.command()
    def cancel(run: str, backend: str = BACKEND, namespace: str = NAMESPACE):
        """Stop every replica of a run (on Kubernetes: delete its Job or RayJob, pods first).

        Example: cxrjobs cancel RUN
        """
        st = _backend(backend, namespace).cancel(run)
        out.print(f"{run}: {st.state}")
