"""The e2e runner itself (tests/e2e/test_kind.py: execute), on a small plan of local commands,
so that its step semantics are tested here even though the kind flow cannot run: order,
background steps and their join, polling, credentials kept out of the output, per-step times,
and teardown after a failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_kind  # noqa: E402
from e2e_plan import Step  # noqa: E402

PY = sys.executable


def _py(code: str) -> tuple[str, ...]:
    return (PY, "-c", code)


def test_runner_semantics(tmp_path, monkeypatch, capsys):
    flag, down = tmp_path / "flag", tmp_path / "down"
    seen: list[str] = []
    monkeypatch.setattr(test_kind, "CHECKS", {
        "poll": lambda out, ctx: _ready(out, seen),
        "finished": lambda out, ctx: seen.append("finished:" + out.strip()),
    })
    monkeypatch.setattr(test_kind, "diagnose", lambda env: seen.append("diagnose"))
    steps = [
        Step("background", _py(f"import time, pathlib; time.sleep(0.5); pathlib.Path({str(flag)!r}).write_text('x'); "
                               "print('done')"), "runs on", background=True),
        Step("poll", _py(f"import pathlib; print('ready' if pathlib.Path({str(flag)!r}).exists() else 'wait')"),
             "until the flag exists", poll=True, every=0.1, timeout=20),
        Step("key", _py("print('c2VjcmV0LXZhbHVl')"), "a credential", secret_env="E2E_TEST_KEY"),
        Step("use-key", _py("import os; assert os.environ['E2E_TEST_KEY'] == 'secret-value'"), "reads it"),
        Step("finished", (), "join", join="background"),
        Step("teardown", _py(f"open({str(down)!r}, 'w')"), "always", always=True),
    ]
    test_kind.execute(steps)
    out = capsys.readouterr().out
    assert seen == ["poll", "finished:done"]
    assert down.exists()
    assert "secret-value" not in out and "c2VjcmV0LXZhbHVl" not in out
    for name in ("background", "poll", "key", "use-key", "finished", "teardown"):
        assert f"=== {name}: " in out, f"no time printed for {name}"


def _ready(out: str, seen: list) -> None:
    assert "ready" in out, "not yet"
    seen.append("poll")


def test_runner_tears_down_after_a_failure(tmp_path, monkeypatch, capsys):
    down, never = tmp_path / "down", tmp_path / "never"
    seen: list[str] = []
    monkeypatch.setattr(test_kind, "CHECKS", {})
    monkeypatch.setattr(test_kind, "diagnose", lambda env: seen.append("diagnose"))
    steps = [
        Step("long", _py("import time; time.sleep(60)"), "killed at teardown", background=True),
        Step("fails", _py("import sys; sys.exit(3)"), "exits 3"),
        Step("skipped", _py(f"open({str(never)!r}, 'w')"), "never runs"),
        Step("teardown", _py(f"open({str(down)!r}, 'w')"), "always", always=True),
    ]
    with pytest.raises(AssertionError, match="step fails exited 3"):
        test_kind.execute(steps)
    assert down.exists() and not never.exists()
    assert seen == ["diagnose"]
