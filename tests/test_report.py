"""`cxrjobs report` in a real headless browser (Debian's chromium): the page loads without console
messages, the comparison table has one row per run, every embedded image decodes, and a
screenshot is not blank. `make test` installs chromium with apt when it is missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrjobs.cli import app
from cxrjobs.errors import CxrError
from eval_helpers import phantom_covid, train_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(`make test` installs it: apt-get install -y chromium)")

# Appended to a copy of the report: after the load event, writes what the browser saw into the DOM.
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}));
  const rows = [...document.querySelectorAll("#comparison tbody tr.method-row")].map(r => r.dataset.run);
  const p = document.createElement("pre"); p.id = "probe";
  const trials = [...document.querySelectorAll("table.trials tbody tr")].map(r => r.cells[0].textContent.trim());
  p.textContent = JSON.stringify({imgs, rows, trials, warning: !!document.getElementById("warnings")});
  document.body.appendChild(p);
});</script>"""


def chromium(args: list[str], page, tmp_path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def probe(html_path, tmp_path) -> tuple[dict, list[str]]:
    page = tmp_path / ("probe-" + html_path.name)
    page.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    r = chromium(["--dump-dom"], page, tmp_path)
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"probe did not run; stderr: {r.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")), console_lines(r.stderr)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two 1-epoch runs on tiny phantom data, each evaluated as test1 (test split) and test2 (all)."""
    from cxrjobs.eval.job import evaluate
    from cxrjobs.specs.eval import EvalSpec
    from cxrjobs.storage import LocalStore

    root = tmp_path_factory.mktemp("report")
    data = phantom_covid(root / "phantom", count=160)
    store = LocalStore(root / "store")
    for run, seed in (("method-a", 0), ("method-b", 1)):
        train_run(store, run, data, epochs=1, seed=seed)
        evaluate(EvalSpec(run=run, data=str(data), split="test", name="test1", bootstrap=200), store, log=lambda m: None)
        evaluate(EvalSpec(run=run, data=str(data), split="all", name="test2", bootstrap=200), store, log=lambda m: None)
    return root


@needs_chromium
def test_browser_control_page_detects_problems(tmp_path):
    """The checks below can fail: a console error and a broken image are seen."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img alt="broken" src="data:image/png;base64,iVBORw0KGgo=">'
                    '<script>console.error("deliberate")</script></body></html>')
    seen, console = probe(page, tmp_path)
    assert seen["imgs"][0]["w"] == 0 and any("deliberate" in ln for ln in console)


@needs_chromium
def test_report_renders_in_chromium(two_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRJOBS_STORE", str(two_runs / "store"))
    monkeypatch.delenv("CXRJOBS_CONFIG", raising=False)
    out = tmp_path / "report.html"
    r = CliRunner().invoke(app, ["report", "method-a", "method-b", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["columns"] == ["test1", "test2"] and [x["run"] for x in summary["rows"]] == ["method-a", "method-b"]
    html = out.read_text()
    assert 'src="http' not in html and "<link" not in html, "the report must be self-contained"
    # Tiny phantom test sets: the CIs are wide and the page says so.
    assert summary["warnings"] and "wider than 0.2" in html

    seen, console = probe(out, tmp_path)
    assert console == [], console
    assert seen["rows"] == ["method-a", "method-b"]
    assert seen["warning"]
    # Per run: loss curves + (confusion matrix, ROC, examples) for test1 and test2.
    assert len(seen["imgs"]) == 2 * (1 + 2 * 3), seen["imgs"]
    assert all(i["complete"] and i["w"] > 100 and i["h"] > 100 for i in seen["imgs"]), seen["imgs"]

    # The unmodified page loads without console output, and its screenshot is not blank.
    shot = tmp_path / "report.png"
    r = chromium(["--window-size=1280,1600", f"--screenshot={shot}", "--hide-scrollbars"], out, tmp_path)
    assert console_lines(r.stderr) == [], r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (1600, 1280)
    gray = px.mean(axis=2)
    assert gray.std() > 20 and (gray < 128).mean() > 0.01, "screenshot looks blank"
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 200  # text, table, plots: many colours
    shutil.copy(shot, two_runs / "report-screenshot.png")  # kept for a look by hand


def test_report_of_unknown_run_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRJOBS_STORE", str(tmp_path / "store"))
    r = CliRunner().invoke(app, ["report", "nope", "-o", str(tmp_path / "r.html")])
    assert r.exit_code != 0 and "run nope: nothing at" in str(r.exception)


def test_report_of_a_job_that_is_no_model_names_the_run_to_report(two_runs, tmp_path):
    """`report evaluate-<id>` (the id `submit evaluate` prints) wrote an empty report, exit 0; a
    run named twice made two rows and every warning twice."""
    from cxrjobs.report.html import build_report
    from cxrjobs.storage import LocalStore

    shutil.copytree(two_runs / "store" / "runs" / "method-a", tmp_path / "runs" / "tiny")
    store = LocalStore(tmp_path)
    store.put_text("runs/evaluate-1/spec.json", json.dumps({"kind": "evaluate", "name": "evaluate-1",
                                                            "evaluate": {"run": "tiny"}}))
    store.put_text("runs/preprocess-1/spec.json", json.dumps({"kind": "preprocess", "name": "preprocess-1"}))
    with pytest.raises(CxrError, match="evaluate-1 is an evaluate job, not a model: report the run it scored, tiny"):
        build_report(store, ["tiny", "evaluate-1"])
    with pytest.raises(CxrError, match="preprocess-1 is a preprocessing job, not a model"):
        build_report(store, ["preprocess-1"])
    _, summary = build_report(store, ["tiny", "tiny"])
    assert summary["runs"] == ["tiny"] and len(summary["rows"]) == 1


def test_report_shows_each_finding_and_flags_an_unfinished_run(two_runs, tmp_path):
    """A multi-label evaluation showed only its mean AUROC; a run scored with --allow-unfinished
    (19 of 300 epochs) was listed like a finished one."""
    from cxrjobs.report.html import build_report
    from cxrjobs.storage import LocalStore

    shutil.copytree(two_runs / "store" / "runs" / "method-a", tmp_path / "runs" / "ml")
    store = LocalStore(tmp_path)
    key = "runs/ml/eval/test1/results.json"
    res = json.loads(store.get_text(key))
    res.update({"auroc": {"Atelectasis": {"value": 0.71, "ci": [0.6, 0.8]}, "Hernia": {"value": None, "ci": None}},
                "mean_auroc": {"value": 0.71, "ci": [0.6, 0.8], "classes": 1, "replicates": 200}})
    store.put_text(key, json.dumps(res))
    html, summary = build_report(store, ["ml"])
    assert "<td class=\"method\">Atelectasis</td><td>0.710 [0.600, 0.800]</td>" in html
    assert "Hernia</td><td>n/a (no positive or no negative patient)" in html
    assert not any("has not finished" in w for w in summary["warnings"])
    spec = json.loads(store.get_text("runs/ml/spec.json"))
    spec["train"]["epochs"] = 300
    store.put_text("runs/ml/spec.json", json.dumps(spec))
    store.delete("runs/ml/artifacts/result.json")
    html, summary = build_report(store, ["ml"])
    assert "ml: training has not finished (1 of 300 epochs recorded)" in " ".join(summary["warnings"])


def test_report_help_has_an_example():
    r = CliRunner().invoke(app, ["report", "--help"])
    assert r.exit_code == 0 and "Example: cxrjobs report" in r.output


def test_few_cases_are_flagged_in_the_table_and_the_warnings(two_runs, tmp_path):
    """A split with 1 positive patient showed 'sensitivity 0.000 [0.000, 0.000]' unmarked: only
    CIs wider than 0.2 got the warning sign."""
    from cxrjobs.report.html import build_report
    from cxrjobs.storage import LocalStore

    shutil.copytree(two_runs / "store" / "runs" / "method-a", tmp_path / "runs" / "tiny")
    store = LocalStore(tmp_path)
    key = "runs/tiny/eval/test1/results.json"
    res = json.loads(store.get_text(key))
    res.update({"few_cases": "1 positive and 2 negative patients, under 10", "sensitivity_ci": [0.0, 0.0]})
    store.put_text(key, json.dumps(res))
    html, summary = build_report(store, ["tiny"])
    assert any(w.startswith("tiny on test1: few cases (1 positive and 2 negative patients, under 10;")
               for w in summary["warnings"]), summary["warnings"]
    sens = summary["rows"][0]["test1"]["sensitivity"]
    assert not sens["wide"] and sens["few"]  # narrow, and still flagged
    assert html.count("&#9888;") >= 5  # the five metric cells of test1, whatever their width


def test_a_healthy_split_with_narrow_cis_is_not_flagged(two_runs, tmp_path):
    """The control of the test above: the same evaluation, narrow CIs and enough cases: no warning
    box, no warning sign; only few_cases turns them on."""
    from cxrjobs.report.html import METRICS, build_report
    from cxrjobs.storage import LocalStore

    shutil.copytree(two_runs / "store" / "runs" / "method-a", tmp_path / "runs" / "ok")
    shutil.rmtree(tmp_path / "runs" / "ok" / "eval" / "test2")  # one evaluation: test1
    store = LocalStore(tmp_path)
    key = "runs/ok/eval/test1/results.json"
    res = json.loads(store.get_text(key))
    res.update({"few_cases": None, **{f"{m}_ci": [0.70, 0.75] for m, _ in METRICS}})
    store.put_text(key, json.dumps(res))
    html, summary = build_report(store, ["ok"])
    assert summary["warnings"] == [] and 'id="warnings"' not in html and "&#9888;" not in html
    res["few_cases"] = "1 positive and 2 negative patients, under 10"
    store.put_text(key, json.dumps(res))
    html, summary = build_report(store, ["ok"])
    assert len(summary["warnings"]) == 1 and html.count("&#9888;") == len(METRICS)
    assert "fewer than 10 positive or negative patients" in html  # the rule, in the warning box
