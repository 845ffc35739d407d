"""The `tune` job kind's driver: `python -m cxrjobs.jobs.entrypoint` runs it from spec.json, on
the local backend (one process that starts its own Ray, on 127.0.0.1 only) or as a KubeRay
RayJob's entrypoint (RAY_ADDRESS set by KubeRay: it joins that cluster)."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cxrjobs.config import load_settings
from cxrjobs.errors import CxrError
from cxrjobs.headline import headline
from cxrjobs.jobs.spec import JobSpec
from cxrjobs.procfs import all_stat_fields
from cxrjobs.storage import ObjectStore

# Ray's unix socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store) must stay under
# 107 bytes: a longer state directory gets a short temp dir, linked from the state directory.
MAX_TEMP_DIR = 36
START_ATTEMPTS = 3


class _TokenAuthNotice(logging.Filter):
    """With RAY_AUTH_MODE unset, a new local Ray uses token authentication (a token kept in
    ~/.ray/auth_token, made on first use), and says so at every start. That default is kept: it
    guards the local Ray against other users of a shared machine. Only the notice is dropped.
    (RAY_AUTH_MODE=token set by us instead would skip the token's creation, and Ray's GCS would
    then fail on a machine without one.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_AUTH_NOTICE = _TokenAuthNotice()


def log(msg: str) -> None:
    print(msg, flush=True)


def loopback_only() -> None:
    """A Ray started here binds its servers to 127.0.0.1 instead of the host's address: Ray's
    single-machine mode (its default on macOS/Windows). Set before Ray starts its processes,
    which inherit the variable."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as rc
    rc.ENABLE_RAY_CLUSTER = False  # if ray was imported before the variable was set


def ray_temp_dir(state_dir: Path) -> tuple[Path, Path | None]:
    """(temp dir to give Ray, short dir to remove at the end or None)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    link = state_dir / "ray"
    if len(str(link)) <= MAX_TEMP_DIR:
        return link, None
    short = Path(tempfile.mkdtemp(prefix="cxr-ray-"))
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    link.symlink_to(short, target_is_directory=True)
    return short, short


def local_cpus(asked: int | None, log=print) -> int:
    """The CPUs a local search uses: --cpus, at most the cores this process may run on (more
    would give each trial more torch threads than there are cores)."""
    have = len(os.sched_getaffinity(0))
    if asked and asked > have:
        log(f"--cpus {asked}: this machine gives the job {have} core(s); using {have}")
    return min(asked, have) if asked else have


def stop_leftovers(temp: Path, grace: float = 5.0) -> None:
    """End the Ray processes this process started under `temp` that a failed ray.init left
    running (ray.shutdown cannot reach a node that never finished starting)."""
    me, mine = os.getpid(), []
    for pid, fields in all_stat_fields().items():
        if int(fields[1]) != me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if str(temp) in cmd:
            mine.append(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in mine):
            for p in mine:
                try:
                    os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.1)


def run_tune(job: JobSpec, store: ObjectStore, hook=None) -> dict:
    spec = job.tune
    settings = load_settings()
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        loopback_only()
        logging.getLogger(RAY_AUTH_LOGGER).addFilter(TOKEN_AUTH_NOTICE)
    import ray

    interrupted = threading.Event()

    def on_term(*_):  # cancel / pod deletion: Tune saves the experiment state and stops
        interrupted.set()
        signal.raise_signal(signal.SIGINT)

    t0 = time.time()
    cleanup = None
    # Trials run in the driver's working directory, not Ray's per-trial one: a relative dataset
    # path or CXRJOBS_STORE (as a local user gives them) means what it meant at submit time. The
    # trainable finds its trial directory through Tune (Trainable.logdir), not the working directory.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    if local:
        cpus = local_cpus(spec.cpus, log)
        temp, cleanup = ray_temp_dir(settings.local_state / job.name)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=str(temp),
                         _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="WARNING")
                break
            except Exception as e:  # Ray gives its raylet 30 s to register: a busy machine can miss it
                ray.shutdown()
                stop_leftovers(temp)
                if "timed out during startup" not in str(e) or attempt == START_ATTEMPTS:
                    raise
                log(f"Ray did not start ({e}); starting it again ({attempt}/{START_ATTEMPTS - 1})")
    else:
        ray.init(log_to_driver=False, logging_level="WARNING")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        cpus = min(cpus, spec.cpus) if spec.cpus else cpus
    # After ray.init, whose core worker installs its own (fatal) SIGTERM handler.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    # The plots (about a second of matplotlib) are drawn while Ray shuts down (about a second,
    # most of it waiting for its processes to exit).
    drawing = ThreadPoolExecutor(1, thread_name_prefix="tune-plots")
    plots = None
    try:
        # Imported while Ray starts its worker processes (Tune's import takes about a second).
        from cxrjobs.tune.export import export, write_plots
        from cxrjobs.tune.runner import RESULTS_FILE, HistoryLog, run_search

        grid = run_search(spec, job.name, settings, cpus=cpus, log=log, hook=hook)
        if interrupted.is_set():
            raise CxrError(f"search {job.name} interrupted; its state is saved: resubmit the same "
                           "spec under the same --name to resume it")
        results = store.get_jsonl(f"runs/{job.name}/{RESULTS_FILE}")
        history = HistoryLog(job.name).load()
        summary = export(grid, spec, job.name, store, history, results, time.time() - t0)
        # No garbage collection until Ray is down: a collection in the drawing thread could free a
        # Ray object (an object ref of the result grid) while the core worker shuts down, and the
        # core worker ends the process when it is reached after its shutdown.
        gc.collect()
        gc.disable()
        plots = drawing.submit(write_plots, spec, history, results, store, job.name)
        best = summary["best"]
        where = f"{store.url}/runs/{job.name}"
        if best is None:  # a search without a single result has no answer: the run fails
            errors = [r.error for r in grid if r.error]
            first = str(errors[0]).strip().splitlines()[-1] if errors else "no trial reported a result"
            raise CxrError(f"search {job.name}: no trial produced a result ({summary['errored']} of "
                           f"{summary['trials']} errored after {spec.max_failures} retries each); first "
                           f"error: {first}; trial table: {where}/trials.csv")
    finally:
        ray.shutdown()
        drawing.shutdown(wait=True)
        gc.enable()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
            (settings.local_state / job.name / "ray").unlink(missing_ok=True)
    plots.result()  # a failed plot fails the job, as any other missing artifact would
    # A resumed search: the wall time is this attempt's; earlier attempts' results are older.
    resumed = " since it resumed" if any(r.get("time", t0) < t0 for r in results) else ""
    log(f"search {job.name} finished: {summary['trials']} trials ({summary['errored']} errored), "
        f"{summary['exploits']} exploits in {summary['wall_seconds']:.0f}s{resumed}; best {spec.metric} "
        f"{best['value']:.4f} on the val split (trial {best['trial']}"
        + (f"; that epoch: {headline(best['val'])}" if best.get("val") else "")
        + f") exported as run {best['run']}; artifacts: {where}")
    return summary
