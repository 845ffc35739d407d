"""`cxrjobs pipeline paper` on tiny phantom data with the real local backend (every stage a
job of OS processes): a rerun skips finished stages and resumes an interrupted one."""

from __future__ import annotations

import json

import pytest

from cxrjobs.errors import CxrError
from cxrjobs.pipeline import PaperConfig, paper_stages, run_pipeline
from cxrjobs.storage import join_key

pytestmark = pytest.mark.slow


def tiny(tmp_path, **kw) -> PaperConfig:
    opts = dict(name="tiny", replicas=1, out=tmp_path / "out", size=32, nih_epochs=2, epochs=1,
                phantom_nih=80, phantom_covid=60, threads=1)
    return PaperConfig(**{**opts, **kw})


@pytest.mark.timeout(2400)  # 14 jobs, each its own processes: ~3 minutes on an idle 2-core machine
def test_rerun_skips_finished_stages_and_resumes_an_interrupted_one(local_env, tmp_path):
    said = []
    first = run_pipeline(tiny(tmp_path), say=said.append, stream=lambda m: None)
    keys = [s["stage"] for s in first.stages]
    assert keys[:5] == ["nih-data", "covid-data", "test2-data", "nih-smallcnn", "nih-resnext50"]
    assert {"method1", "method2", "resnext-scratch"} <= set(keys)
    assert all(s["status"] == "ran" for s in first.stages)
    assert any("PHANTOM" in m for m in said)  # it says the data is synthetic
    assert any(m.startswith("[4/") and "tiny-nih-smallcnn" in m for m in said)  # progress names the stage
    m1 = next(s for s in first.stages if s["stage"] == "method1")
    assert m1["result"]["test"]["split"] == "test" and "auroc" in m1["result"]["test"]
    ev = {(s["role"], s["test_set"]): s["result"] for s in first.stages if s["kind"] == "evaluate"}
    assert set(ev) == {(r, t) for r in ("method 1", "method 2", "ResNeXt-50 scratch") for t in ("test1", "test2")}
    assert ev[("method 1", "test1")]["split"] == "test" and ev[("method 1", "test2")]["split"] == "all"
    html = open(first.report_path).read()
    assert "PHANTOM" in html and "tiny-method2" in html and "tiny-resnext-scratch" in html

    # An interrupted stage: its result is gone but its checkpoint is there.
    store = local_env
    store.delete(join_key("runs", "tiny-method1", "artifacts", "result.json"))
    said.clear()
    logs = []
    second = run_pipeline(tiny(tmp_path), say=said.append, stream=logs.append)
    status = {s["stage"]: s["status"] for s in second.stages}
    assert status.pop("method1") == "resumed"
    assert set(status.values()) == {"skipped"}, status
    assert any("resumed from checkpoint: 1 of 1 epochs done" in line for line in logs)
    assert any("already done, skipped" in m for m in said)
    summary = json.loads(store.get_text(join_key("pipelines", "tiny", "summary.json")))
    assert summary["stages"][0]["status"] == "skipped"

    # Other options under the same pipeline name: an error, never mixed outputs.
    # ... refused before any stage runs, naming the option (it was found when its stage came).
    said.clear()
    with pytest.raises(CxrError, match=r"stage run tiny-nih-smallcnn exists with other options .*"
                                       r"train\.epochs: 2 then, 3 now"):
        run_pipeline(tiny(tmp_path, nih_epochs=3), say=said.append, stream=lambda m: None)
    assert not any(m.startswith("[1/") for m in said), said


def test_stage_names_are_deterministic_and_real_data_has_no_phantom_test2(tmp_path):
    cfg = PaperConfig(name="p", nih=str(tmp_path), covid=str(tmp_path), imagenet="w.pth").resolved()
    a, b = paper_stages(cfg), paper_stages(cfg)
    assert [s.job.name for s in a] == [s.job.name for s in b]
    assert [s.key for s in a] == ["nih-data", "covid-data", "nih-smallcnn", "nih-resnext50", "method1",
                                  "method2", "resnext-scratch", "resnext-imagenet"] + [
        f"eval-{m}-test1" for m in ("method1", "method2", "resnext-scratch", "resnext-imagenet")]
    m2 = next(s for s in a if s.key == "method2").job.train
    assert (m2.model, m2.sampler, m2.init_from, m2.image_size) == ("resnext50", "balanced", "p-nih-resnext50", 224)
    m1 = next(s for s in a if s.key == "method1").job.train
    assert (m1.freeze, m1.scheduler, m1.step_size, m1.batch_size) == ("conv", "step", 7, 32)


def test_help_states_the_defaults_the_pipeline_uses():
    """`pipeline paper --help` said 6 COVID epochs on phantom data; the pipeline ran 4."""
    from typer.testing import CliRunner

    from cxrjobs.cli import app

    text = " ".join(CliRunner().invoke(app, ["pipeline", "paper", "--help"], terminal_width=300,
                                       env={"COLUMNS": "300"}).output.split())
    phantom = PaperConfig().resolved()
    real = PaperConfig(nih="n", covid="c").resolved()
    assert f"default {phantom.size} on phantom data, {real.size} on real data" in text
    assert f"NIH pre-training epochs (default {phantom.nih_epochs} phantom / {real.nih_epochs} real)" in text
    assert f"COVID training epochs (default {phantom.epochs} phantom / {real.epochs} real)" in text


@pytest.mark.parametrize("flag, value, message", [
    ("test2", "/nonexistent", "--test2 /nonexistent: no such folder"),
    ("covid", "FILE", "is a file, not a dataset folder"),
    ("imagenet", "/nonexistent.pth", "--imagenet: weights '/nonexistent.pth' not found"),
])
def test_given_inputs_are_checked_before_the_first_stage(local_env, tmp_path, flag, value, message):
    """A missing --test2 was found after two preprocessing stages, a missing --imagenet after both
    NIH pre-trainings: on real data, hours in."""
    if value == "FILE":
        value = str(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("x")
    said = []
    with pytest.raises(CxrError, match=message):
        run_pipeline(tiny(tmp_path, **{flag: value}), say=said.append, stream=lambda m: None)
    assert said == [] and not (tmp_path / "out").exists()  # nothing ran, no phantom data was written


@pytest.mark.parametrize("flag", ["--epochs", "--nih-epochs", "--replicas", "--size"])
def test_a_zero_count_is_refused_not_taken_as_the_default(flag):
    """`--epochs 0` ran the whole pipeline with the default 4 epochs."""
    from typer.testing import CliRunner

    from cxrjobs.cli import app

    res = CliRunner().invoke(app, ["pipeline", "paper", flag, "0"])
    assert res.exit_code == 2 and flag in res.output and "greater than or equal to" in res.output, res.output


def test_ctrl_c_says_which_stage_run_goes_on(local_env, tmp_path, monkeypatch):
    """Ctrl-C on `pipeline paper` exited 130 without a word while the stage's detached run kept
    training in the background."""
    import cxrjobs.pipeline as pipeline

    for d in ("nih", "covid", "test2"):
        (tmp_path / d).mkdir()

    def interrupted(stage, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_stage", interrupted)
    said = []
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tiny(tmp_path, nih=str(tmp_path / "nih"), covid=str(tmp_path / "covid"),
                          test2=str(tmp_path / "test2")), say=said.append, stream=lambda m: None)
    assert "stage run tiny-nih-data may go on in the background" in said[-1]
    assert "`cxrjobs cancel tiny-nih-data` stops it" in said[-1] and "Rerun the same pipeline command" in said[-1]


def test_a_stage_already_running_is_followed_not_resumed(local_env, tmp_path, monkeypatch):
    """A pipeline started while another ran its stages called them "resumed"; it followed them."""
    import cxrjobs.pipeline as pipeline
    from cxrjobs.backends.base import JobStatus
    from cxrjobs.backends.states import RunState

    stage = paper_stages(tiny(tmp_path, nih="/data/nih", covid="/data/covid"))[0]

    class Running:  # a backend on which the stage's run is already under way
        def status(self, run):
            return JobStatus(run, RunState.RUNNING, "local")

        def logs(self, run, replica=0, follow=False):
            return iter(["epoch 1/1"])

        def wait(self, run):
            local_env.put_text(stage.output, "{}")
            return JobStatus(run, RunState.SUCCEEDED, "local")

    monkeypatch.setattr(pipeline, "get_backend", lambda name: Running())
    said = []
    assert pipeline.run_stage(stage, "local", local_env, said.append, lambda m: None) == "followed"
    assert said == [f"  {stage.job.name} is already Running: following it"]
