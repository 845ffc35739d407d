"""Real Ray Tune searches over the one training loop on a tiny phantom COVID set (32 px), with a
real local Ray (127.0.0.1 only) and the local store: PBT exploit/explore, export of the best
trial, retry of a failed trial, and an interrupted search resumed through the local backend."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from cxrjobs.jobs.spec import JobSpec
from cxrjobs.procfs import descendants
from cxrjobs.storage import join_key

pytestmark = pytest.mark.slow

TRAIN = dict(objective="multiclass", batch_size=32, bootstrap=0)


@pytest.fixture
def ray_env(local_env, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return local_env


def _job(name, data, **tune):
    return JobSpec(kind="tune", name=name, tune={"job": "train", "train": {"data": str(data), **TRAIN}, **tune})


def _listening(pids: set[int]) -> set[str]:
    """Addresses that these processes' TCP sockets listen on (from /proc: no psutil here)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    addrs = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    raw = bytes.fromhex(cols[1].split(":")[0])
                    # /proc prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    import ipaddress
                    ip = ipaddress.ip_address(words)
                    addrs.add(str(ip.ipv4_mapped or ip) if width == 32 else str(ip))
    return addrs


class ListenWatch:
    """Polls the listening sockets of this process's descendants (the local Ray) while it runs."""

    def __init__(self):
        import threading
        self.seen, self.stop = set(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.seen |= _listening(descendants(os.getpid()) | {os.getpid()})
            self.stop.wait(0.5)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _rows(store, run):
    text = store.get_text(join_key("runs", run, "results.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_pbt_exploit_copies_the_donors_checkpoint_and_applies_explored_values(phantom_covid_32, ray_env, tmp_path):
    from cxrjobs.tune.job import run_tune

    space = {"optimizer": ["sgd", "adam"], "lr": {"loguniform": [1e-4, 0.3]},
             "momentum": {"uniform": [0.5, 0.95]}, "step_size": {"randint": [1, 3]},
             "gamma": {"uniform": [0.2, 0.9]}}
    job = _job("pbt", phantom_covid_32, trials=4, algo="pbt", epochs_per_trial=4, perturbation_interval=1,
               quantile_fraction=0.5, cpus=4, seed=1, space=space,
               # Synchronous PBT: exploits happen however slowly the trials start on a busy machine.
               synch=True)
    ray_env.put_text(join_key("runs", "pbt", "spec.json"), job.model_dump_json())
    tune_logger, seen_warnings = logging.getLogger("ray.tune.logger.logger"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen_warnings.append(record.getMessage())
    tune_logger.addHandler(handler)
    try:
        with ListenWatch() as watch:
            summary = run_tune(job, ray_env)
    finally:
        tune_logger.removeHandler(handler)
    # Tune's benign warning about a cloned trial's missing progress file is not shown.
    assert not [m for m in seen_warnings if m.startswith("Remote file not found")], seen_warnings
    # Ray's GCS, raylet, workers and agents listened on loopback only.
    assert len(watch.seen) >= 1 and watch.seen <= {"127.0.0.1"}, watch.seen

    history = [json.loads(x) for x in ray_env.get_text("runs/pbt/pbt_history.jsonl").splitlines()]
    rows = _rows(ray_env, "pbt")
    assert history and summary["exploits"] == len(history)
    checked = 0
    for h in history:
        assert h["trial"] != h["donor"] and h["donor_epoch"] < 4
        # The donor reported these weights at that epoch ...
        donor = [r for r in rows if r["trial"] == h["donor"] and r["epoch"] == h["donor_epoch"]]
        assert donor and donor[-1]["weights"] == h["donor_weights"]
        # ... and the clone's next epoch started from exactly that checkpoint,
        after = [r for r in rows if r["trial"] == h["trial"] and r.get("restored_digest") == h["donor_weights"]
                 and r["time"] >= h["time"]]
        assert after, f"no epoch of {h['trial']} started from {h['donor']}'s checkpoint"
        r, new = after[0], h["new_config"]
        if any(o is not h and o["trial"] == h["trial"] and h["time"] < o["time"] <= r["time"] for o in history):
            continue  # cloned again before it ran (synchronous PBT): the later exploit's values apply
        checked += 1
        assert r["epoch"] == h["donor_epoch"] + 1 and r["restored_epoch"] == h["donor_epoch"]
        assert r["config"] == {**r["config"], **new}
        # with the explored values in the optimizer and scheduler it really trained with.
        assert (r["optimizer"], r["step_size"]) == (new["optimizer"], new["step_size"])
        assert r["gamma"] == pytest.approx(new["gamma"])
        assert r["lr"] == pytest.approx(new["lr"] * new["gamma"] ** (h["donor_epoch"] // new["step_size"]))
        if new["optimizer"] == "sgd":
            assert r["momentum"] == pytest.approx(new["momentum"])
    assert checked >= 1
    # Every checkpoint of a trial got its own directory: a restarted trial re-used Ray's
    # numbering, overwrote a checkpoint its manager still listed, and num_to_keep deleted it.
    # (An epoch whose trial is exploited at once is not saved: the donor's checkpoint replaces it.)
    for trial in {r["trial"] for r in rows}:
        mine = [r for r in rows if r["trial"] == trial]
        names = [r["checkpoint_dir_name"] for r in mine if "checkpoint_dir_name" in r]
        assert "checkpoint_dir_name" in mine[-1] and len(names) == len(set(names)), (trial, names)
    # Explored values stay inside the space (0.95 * 1.2 is no momentum).
    assert all(0.5 <= h["new_config"]["momentum"] <= 0.95 and 1e-4 <= h["new_config"]["lr"] <= 0.3
               for h in history)

    # The trial table, the plots, the status and the best trial exported as a normal run.
    table = json.loads(ray_env.get_text("runs/pbt/trials.json"))
    assert len(table) == 4 and all(t["status"] == "TERMINATED" and t["epochs"] == 4 for t in table)
    assert sum(t["exploits"] for t in table) == len(history)
    assert ray_env.get_text("runs/pbt/trials.csv").count("\n") == 5
    for png in ("metric_vs_time.png", "lineage.png"):
        assert ray_env.get_bytes(f"runs/pbt/plots/{png}")[:4] == b"\x89PNG"
    status = json.loads(ray_env.get_text("runs/pbt/tune_status.json"))
    assert status["finished"] and status["trials"]["terminated"] == 4
    best = summary["best"]
    assert best["value"] == min(t["lineage_best"] for t in table)
    _evaluate_exported(ray_env, best)
    _report_shows_the_search(ray_env, best, table, history, tmp_path)


def test_asynchronous_pbt_clones_without_new_processes_or_older_checkpoints(phantom_covid_32, ray_env):
    """Asynchronous PBT with a slot per trial: an exploited trial goes on in its own process
    (reset_config + load_checkpoint, no new process), both trials keep training side by side, and
    an exploit never clones a donor's checkpoint older than the trial's own epoch (the trial waits
    for the donor to report that epoch instead of training it again)."""
    from cxrjobs.tune.job import run_tune

    # 10 epochs: one trial's process can start a few seconds after the other's, and with 5 the
    # first could finish every epoch before the second reported one (no exploit: 2 runs in 6).
    epochs = 10
    job = _job("apbt", phantom_covid_32, trials=2, algo="pbt", epochs_per_trial=epochs, perturbation_interval=1,
               quantile_fraction=0.5, cpus=2, seed=3)
    ray_env.put_text(join_key("runs", "apbt", "spec.json"), job.model_dump_json())
    summary = run_tune(job, ray_env)
    history = [json.loads(x) for x in ray_env.get_text("runs/apbt/pbt_history.jsonl").splitlines()]
    rows = _rows(ray_env, "apbt")
    assert history and summary["exploits"] == len(history)
    for h in history:
        assert h["donor_epoch"] >= h["trial_epoch"], h
    for trial in {r["trial"] for r in rows}:
        mine = [r for r in rows if r["trial"] == trial]
        assert len({r["pid"] for r in mine}) == 1, [(r["epoch"], r["pid"]) for r in mine]
        assert mine[-1]["epoch"] == epochs
    assert {t["status"] for t in json.loads(ray_env.get_text("runs/apbt/trials.json"))} == {"TERMINATED"}


def _report_shows_the_search(store, best, table, history, tmp_path):
    """`cxrjobs report SEARCH BEST` shows the search (summary, one table row per trial, both plots,
    the exploits) beside the exported best run's evaluation; in a real browser where one exists."""
    from cxrjobs.report.html import write_report

    out = tmp_path / "tune-report.html"
    summary = write_report(store, ["pbt", best["run"]], out)
    assert [r["run"] for r in summary["rows"]] == ["pbt", best["run"]]
    assert summary["rows"][0]["search"] == {"trials": 4, "exploits": len(history), "best": best}
    assert "test" in summary["rows"][1] and "search" not in summary["rows"][1]
    html = out.read_text()
    assert f"exported as run <code>{best['run']}</code>" in html and "tune: pbt, 4 trials x 4 epochs" in html
    assert html.count('<tr class="trial-row') == 4 and html.count("&#9733;") == 1
    assert all(f"<th>{k}</th>" in html for k in ("optimizer", "lr", "momentum", "step_size", "gamma"))
    for t in table:
        assert f">{t['trial']}" in html
    assert f"PBT exploits ({len(history)}" in html

    from test_report import CHROMIUM, probe
    if CHROMIUM is None:
        return  # the page's content is checked above; test_report.py checks rendering and says why it skips
    seen, console = probe(out, tmp_path)
    assert console == [], console
    assert sorted(t.rstrip(" \u2605") for t in seen["trials"]) == sorted(t["trial"] for t in table)
    # search: metric-vs-time + lineage; best run: loss curves + confusion matrix, ROC, examples
    assert len(seen["imgs"]) == 2 + 4, seen["imgs"]
    assert all(i["complete"] and i["w"] > 100 for i in seen["imgs"]), seen["imgs"]


def _evaluate_exported(store, best):
    """The exported run is a normal train run: its spec, best.pt and metrics work as for any run."""
    from cxrjobs.jobs.entrypoint import load_job
    from cxrjobs.train import checkpoint
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import Run, Trainer

    run = best["run"]
    job = load_job(store, run)
    assert job.kind == "train" and job.train.data.endswith("ds32")
    metrics = [json.loads(x) for x in store.get_text(f"runs/{run}/metrics.jsonl").splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert min(m["val"]["loss"] for m in metrics) == pytest.approx(best["value"])
    # The checkpoints record the run's spec, not the trial's local variant of it (its cached copy
    # of the dataset, its share of the cores): they were exported by plain copying.
    for name in ("latest.pt", "best.pt"):
        recorded = json.loads(checkpoint.load(store, f"runs/{run}/checkpoints/{name}")["spec"])
        assert (recorded["data"], recorded["threads"]) == (job.train.data, job.train.threads), name
    ckpt = checkpoint.load(store, f"runs/{run}/checkpoints/best.pt")
    t = Trainer(job.train, Run(store, run), DistContext(0, 1, torch.device("cpu"), None), log=lambda m: None)
    t.model.load_state_dict(ckpt["model"])
    val = t.evaluate("val")
    assert val["images"] > 0 and val["loss"] == pytest.approx(best["value"], rel=1e-4)
    # ... and the evaluate job scores it like any training run.
    from cxrjobs.eval.job import evaluate
    from cxrjobs.specs.eval import EvalSpec
    res = evaluate(EvalSpec(run=run, data=job.train.data, split="test", bootstrap=20, examples=4), store,
                   log=lambda m: None)
    assert res["n_images"] > 0 and store.exists(f"runs/{run}/eval/test/results.json")


def test_pbt_with_more_trials_than_slots_finishes(phantom_covid_32, ray_env):
    """Three trials taking turns on one slot (asynchronous PBT, an exploit every epoch): a trial
    set back to its donor's epoch by an exploit used to be picked again before the donor, clone
    the same checkpoint again, and so on for ever (a user's search of 3 x 30 epochs had reported
    387 epochs when it was cancelled)."""
    from cxrjobs import api
    from cxrjobs.backends import get_backend

    epochs = 12
    job = _job("turns", phantom_covid_32, trials=3, algo="pbt", epochs_per_trial=epochs, perturbation_interval=1,
               cpus=1, max_concurrent=1, seed=0)
    be = get_backend("local")
    api.submit(job, "local")
    try:
        final = be.wait("turns", timeout=300)
    finally:
        if not be.status("turns").done:
            be.cancel("turns")
    rows = _rows(ray_env, "turns")
    assert final.state == "Succeeded", "".join(be.logs("turns"))[-3000:]
    history = [json.loads(x) for x in ray_env.get_text("runs/turns/pbt_history.jsonl").splitlines()]
    assert history, "no exploit: the test checks nothing"
    # Every epoch an exploit sets a trial back is trained again, once per exploit, no more.
    assert len(rows) <= 3 * epochs + sum(h["trial_epoch"] - h["donor_epoch"] for h in history)
    clones = [(h["trial"], h["trial_epoch"], h["donor"], h["donor_epoch"]) for h in history]
    assert len(clones) == len(set(clones)), "the same exploit repeated"
    for trial in {r["trial"] for r in rows}:
        assert max(r["epoch"] for r in rows if r["trial"] == trial) == epochs


def test_a_failing_trial_is_retried_from_its_checkpoint(phantom_covid_32, ray_env, tmp_path):
    from cxrjobs.tune.job import run_tune

    marks = str(tmp_path / "marks")
    os.makedirs(marks)

    def fail_once_in_epoch_3(trainable):
        import os as _os
        mark = _os.path.join(marks, trainable.trial_id)
        if trainable.trainer.epoch == 2 and not _os.path.exists(mark):
            open(mark, "w").close()
            raise RuntimeError("injected failure in epoch 3")

    job = _job("retry", phantom_covid_32, trials=2, algo="random", epochs_per_trial=3, cpus=2,
               max_failures=1)
    ray_env.put_text(join_key("runs", "retry", "spec.json"), job.model_dump_json())
    summary = run_tune(job, ray_env, hook=fail_once_in_epoch_3)
    assert summary["errored"] == 0 and len(os.listdir(marks)) == 2
    rows = _rows(ray_env, "retry")
    for trial in {r["trial"] for r in rows}:
        mine = [r for r in rows if r["trial"] == trial]
        # Epochs 1 and 2 ran once; the retry resumed epoch 2's checkpoint instead of starting over.
        assert [r["epoch"] for r in mine] == [1, 2, 3]
        assert mine[2]["restored_epoch"] == 2 and mine[2]["restored_digest"] == mine[1]["weights"]


def test_relative_dataset_paths_and_a_search_without_any_result(phantom_covid_32, ray_env, tmp_path):
    """A relative dataset path means the submitter's directory (Ray would otherwise run each trial
    in its own directory, where it names nothing), and a search in which every trial failed is a
    failed run with the first error, not a success without an answer."""
    from cxrjobs.errors import CxrError
    from cxrjobs.tune.job import run_tune

    assert os.getcwd() == str(tmp_path)  # local_env runs the test in tmp_path
    os.symlink(phantom_covid_32, tmp_path / "ds32")
    job = _job("rel", "ds32", trials=2, algo="random", epochs_per_trial=1, cpus=2, max_failures=0)
    ray_env.put_text(join_key("runs", "rel", "spec.json"), job.model_dump_json())
    summary = run_tune(job, ray_env)
    assert summary["errored"] == 0 and summary["best"]["run"] == "rel-best"

    job = _job("none", "no-such-dataset", trials=2, algo="random", epochs_per_trial=1, cpus=2, max_failures=0)
    ray_env.put_text(join_key("runs", "none", "spec.json"), job.model_dump_json())
    with pytest.raises(CxrError, match=r"no trial produced a result \(2 of 2 errored.*no-such-dataset"):
        run_tune(job, ray_env)
    assert json.loads(ray_env.get_text("runs/none/trials.json"))[0]["status"] == "ERROR"


def test_interrupted_search_resumes_without_rerunning_finished_trials(phantom_covid_32, ray_env, tmp_path,
                                                                    monkeypatch):
    """Also: with RAY_AUTH_MODE unset, as a user has it, the local Ray uses token authentication
    (its token under HOME) and says nothing about it."""
    from cxrjobs import api
    from cxrjobs.backends import get_backend

    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))  # where Ray keeps its token (~/.ray/auth_token)

    # Trials long enough (sequential, 40 epochs of about 40 ms each) that the cancel lands while
    # one is running.
    epochs = 40
    job = _job("resume", phantom_covid_32, trials=3, algo="random", epochs_per_trial=epochs, cpus=1,
               max_concurrent=1)
    be = get_backend("local")
    api.submit(job, "local")
    status_key = "runs/resume/tune_status.json"
    deadline = time.monotonic() + 400
    while True:  # until one trial has finished and the next one is running
        assert time.monotonic() < deadline, "the search did not finish a trial in time"
        assert not be.status("resume").done, be.status("resume")
        if ray_env.exists(status_key):
            st = json.loads(ray_env.get_text(status_key))
            if st["trials"].get("terminated", 0) >= 1:
                break
        time.sleep(0.5)
    pid = be.status("resume").extra["pids"][0]
    ray_procs = descendants(pid)
    assert be.cancel("resume").state == "Cancelled"
    deadline = time.monotonic() + 30
    while ray_procs & descendants(1) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_procs & descendants(1), "Ray processes left after cancel"
    # It said every trial "terminated" and the search "finished" after a cancel.
    st = json.loads(ray_env.get_text(status_key))
    assert not st["finished"] and 1 <= st["trials"].get("terminated", 0) < 3, st
    assert st["trials"].get("stopped before its last epoch", 0) + st["trials"].get("pending", 0) >= 1, st
    line = subprocess.run([sys.executable, "-m", "cxrjobs.cli", "status", "resume"], capture_output=True,
                          text=True, env=os.environ).stdout
    assert "resume: Cancelled" in line and "; trials when it stopped: 3 (" in line, line
    before = _rows(ray_env, "resume")
    # Finished: its last epoch's checkpoint was registered before the cancel. A last epoch reported
    # but not yet checkpointed is the cut trial's: it resumes from the epoch before.
    finished = {r["trial"] for r in before if r["epoch"] == epochs and r.get("checkpoint_dir_name")}
    assert finished and len(finished) < 3

    api.submit(job, "local")  # the same spec under the same name resumes
    final = be.wait("resume", timeout=600)
    log = "".join(be.logs("resume"))
    assert final.state == "Succeeded", log[-3000:]
    assert "resuming the search" in log
    assert re.search(r"search resume finished: .* in \d+s since it resumed;", log), log[-2000:]
    assert (tmp_path / ".ray" / "auth_token").is_file() and "Token authentication" not in log
    rows = _rows(ray_env, "resume")
    assert rows[:len(before)] == before
    for trial in {r["trial"] for r in rows}:
        done = [r["epoch"] for r in rows if r["trial"] == trial]
        ran = [r["epoch"] for r in before if r["trial"] == trial]
        after = done[len(ran):]
        # The trial cut by the cancel resumes from its last persisted checkpoint: at most the epochs
        # after it run again, none is skipped, and it ends at the last epoch.
        assert done[:len(ran)] == ran == list(range(1, len(ran) + 1)), (trial, done)
        if after:
            assert after == list(range(after[0], epochs + 1)) and 1 <= after[0] <= len(ran) + 1, (trial, done)
        assert done[-1] == epochs, (trial, done)
    for trial in finished:  # finished trials were not run again
        assert [r for r in rows if r["trial"] == trial] == [r for r in before if r["trial"] == trial]
    summary = json.loads(ray_env.get_text("runs/resume/artifacts/result.json"))
    assert summary["trials"] == 3 and summary["best"]["run"] == "resume-best"


def test_the_experiment_lives_in_the_s3_store(phantom_covid_32, s3_env, monkeypatch, tmp_path):
    """storage_path is the S3 store (pyarrow S3 filesystem on the store's endpoint): trials
    checkpoint there, the export reads from there, and a restart finds the experiment there."""
    from ray import tune

    from cxrjobs.config import load_settings
    from cxrjobs.tune.job import run_tune
    from cxrjobs.tune.runner import storage_for

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CXRJOBS_STATE_DIR", str(tmp_path / "state"))
    job = _job("s3t", phantom_covid_32, trials=2, algo="random", epochs_per_trial=2, cpus=2)
    s3_env.put_text("runs/s3t/spec.json", job.model_dump_json())
    summary = run_tune(job, s3_env)
    keys = [o.key for o in s3_env.list("runs/s3t/ray/")]
    assert any(k.endswith("tuner.pkl") for k in keys) and any("/checkpoint_" in k for k in keys)
    assert any(os.path.basename(k).startswith("experiment_state") for k in keys)
    path, fs = storage_for(load_settings(), "s3t")
    assert path.startswith(s3_env.bucket + "/") and tune.Tuner.can_restore(f"{path}/ray", storage_filesystem=fs)
    best = summary["best"]["run"]
    assert s3_env.exists(f"runs/{best}/checkpoints/best.pt") and s3_env.exists(f"runs/{best}/spec.json")
    assert len(_rows(s3_env, "s3t")) == 4
