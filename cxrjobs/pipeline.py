"""`cxrjobs pipeline paper`: the paper's experiment as a chain of jobs on one backend.

preprocess (NIH, COVID, test 2) -> nih-train (DDP; smallcnn and resnext50) -> transfer methods 1
and 2 -> ResNeXt-50 baselines (scratch; ImageNet weights when a weights file is given) ->
evaluate jobs on test 1 (the COVID test split) and test 2 (every image of the external set) ->
the HTML report comparing the methods.

Every stage is a job submitted through api.submit under a deterministic run name
(<pipeline>-<stage>), so a rerun skips the stages whose outputs are in the store and resubmits an
interrupted one, which resumes from its checkpoint. A rerun with other options under the same
pipeline name stops with an error instead of mixing outputs (api.submit compares the stored spec).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cxrjobs import api
from cxrjobs.backends import get_backend
from cxrjobs.errors import ConfigError, CxrError
from cxrjobs.jobs import presets
from cxrjobs.jobs.resolve import resolve_job
from cxrjobs.jobs.spec import JobSpec
from cxrjobs.storage import ObjectStore, join_key, open_store
from cxrjobs.storage.runs import locate_weights

TEST2_CLASS_MAP = ("covid=1,covid-19=1,covid19=1,positive=1,"
                   "non_covid=0,non-covid=0,normal=0,negative=0")
BINARY_LABELS = ["non-COVID", "COVID-19"]


@dataclass
class PaperConfig:
    """What the paper pipeline runs. None means: small phantom data and small sizes (the demo)."""
    name: str = "paper"
    nih: str | None = None
    covid: str | None = None
    test2: str | None = None
    imagenet: str | None = None      # ResNeXt-50 ImageNet weights (file, s3:// or store key)
    replicas: int = 2
    backend: str = "local"
    out: Path = Path("pipeline-out")
    size: int | None = None          # default: 64 on phantom data, 224 on real data
    nih_epochs: int | None = None
    epochs: int | None = None
    phantom_nih: int = 600
    phantom_covid: int = 240
    threads: int | None = None
    synthetic: bool = False          # set once phantom folders stand in for missing ones

    @property
    def phantom(self) -> bool:
        return self.synthetic or self.nih is None or self.covid is None

    def resolved(self) -> "PaperConfig":
        c = PaperConfig(**self.__dict__)
        small = c.nih is None and c.covid is None
        c.size = (64 if small else 224) if c.size is None else c.size
        c.nih_epochs = (3 if small else 10) if c.nih_epochs is None else c.nih_epochs
        c.epochs = (4 if small else 20) if c.epochs is None else c.epochs
        return c

    def check_inputs(self, store: ObjectStore) -> None:
        """What the stages would find wrong only when they run (on real data: hours in)."""
        for flag, folder in (("--nih", self.nih), ("--covid", self.covid), ("--test2", self.test2)):
            if folder is not None and not Path(folder).is_dir():
                what = "is a file, not a dataset folder" if Path(folder).exists() else "no such folder"
                raise ConfigError(f"{flag} {folder}: {what}")
        if self.imagenet:
            try:
                locate_weights(self.imagenet, store)
            except CxrError as e:
                raise ConfigError(f"--imagenet: {e}") from None


@dataclass
class Stage:
    key: str                     # short stage name; the run is <pipeline>-<key>
    title: str
    job: JobSpec
    output: str                  # store key whose presence means "done"
    role: str = ""               # the method (model runs and their evaluations)
    test_set: str = ""           # evaluate stages: test1 | test2
    after: Callable[[ObjectStore], None] | None = None


@dataclass
class PipelineResult:
    name: str
    stages: list[dict] = field(default_factory=list)
    phantom: bool = False
    seconds: float = 0.0
    sizes: dict = field(default_factory=dict)
    summary_path: str = ""
    report_path: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _run_name(cfg: PaperConfig, key: str) -> str:
    return f"{cfg.name}-{key}"


def _preprocess(cfg: PaperConfig, key: str, source: str, fmt: str, title: str, **spec) -> Stage:
    output = f"datasets/{_run_name(cfg, key)}"
    if cfg.phantom:
        spec["shard_size"] = 64  # several shards, so every replica has a slice to decode
    job = resolve_job("preprocess", None, {
        "name": _run_name(cfg, key), "replicas": cfg.replicas,
        "preprocess": {"output": output, "spec": {"source": str(Path(source).resolve()), "format": fmt,
                                                  "size": cfg.size, **spec}}})
    return Stage(key, title, job, join_key(output, "manifest.json"))


def _train(cfg: PaperConfig, key: str, kind: str, title: str, train: dict, role: str = "",
           method: int | None = None) -> Stage:
    name = _run_name(cfg, key)
    train = {"image_size": cfg.size, "threads": cfg.threads, **train}
    job = resolve_job(kind, None, {"name": name, "replicas": cfg.replicas, "train": train},
                      presets.defaults(kind, method))
    return Stage(key, title, job, join_key("runs", name, "artifacts", "result.json"), role)


def _evaluate(cfg: PaperConfig, model: Stage, data_key: str, split: str, as_name: str) -> Stage:
    run = model.job.name
    job = resolve_job("evaluate", None, {
        "name": _run_name(cfg, f"eval-{model.key}-{as_name}"), "replicas": cfg.replicas,
        "evaluate": {"run": run, "data": f"datasets/{_run_name(cfg, data_key)}", "split": split,
                     "name": as_name}})
    return Stage(f"eval-{model.key}-{as_name}", f"evaluate {model.role} on {as_name} ({split} split)", job,
                 join_key("runs", run, "eval", as_name, "results.json"), model.role, test_set=as_name)


def phantom_data(cfg: PaperConfig, say: Callable[[str], None]) -> PaperConfig:
    """Write phantom NIH / COVID / test-2 folders where no real ones were given."""
    from cxrjobs.data.synth import synth_covid, synth_nih

    cfg = PaperConfig(**cfg.__dict__)
    cfg.synthetic = True
    root = cfg.out / "phantom"
    jobs = []
    if cfg.nih is None:
        cfg.nih = str(root / "nih")
        jobs.append(("NIH", root / "nih", "Data_Entry_2017.csv",
                     lambda p: synth_nih(p, cfg.phantom_nih, size=128, seed=0, workers=2)))
    if cfg.covid is None:
        cfg.covid = str(root / "covid")
        jobs.append(("COVID", root / "covid", "metadata.csv",
                     lambda p: synth_covid(p, cfg.phantom_covid, size=128, seed=1, workers=2)))
    if cfg.test2 is None and cfg.covid == str(root / "covid"):  # only beside phantom COVID data
        cfg.test2 = str(root / "test2")
        jobs.append(("test-2 COVID", root / "test2", "metadata.csv",
                     lambda p: synth_covid(p, cfg.phantom_covid // 2, size=128, seed=2, workers=2)))
    for what, path, marker, make in jobs:
        if (path / marker).is_file():
            say(f"phantom {what} data already in {path}")
        else:
            if path.exists():  # an interrupted generation (its CSV is written last): start it again
                shutil.rmtree(path)
            say(f"no {what} folder given: generating PHANTOM (synthetic) {what} data -> "
                f"{make(path).line()}")
    return cfg


def paper_stages(cfg: PaperConfig) -> list[Stage]:
    """The stages in order, each a fully resolved job (deterministic names)."""
    ds = lambda key: f"datasets/{_run_name(cfg, key)}"
    stages = [
        _preprocess(cfg, "nih-data", cfg.nih, "nih", f"preprocess NIH ({cfg.size} px)"),
        _preprocess(cfg, "covid-data", cfg.covid, "covid", f"preprocess COVID, test 1 ({cfg.size} px)"),
    ]
    if cfg.test2:
        test2_fmt = "covid" if (Path(cfg.test2) / "metadata.csv").is_file() else "imagefolder"
        test2_opts = {} if test2_fmt == "covid" else {"class_map": TEST2_CLASS_MAP, "labels": BINARY_LABELS}
        # Test 2 is an external set: every image is a test image.
        stages.append(_preprocess(cfg, "test2-data", cfg.test2, test2_fmt, f"preprocess test 2 ({cfg.size} px)",
                                  fractions=(0.0, 0.0, 1.0), **test2_opts))
    nih = {"data": ds("nih-data"), "epochs": cfg.nih_epochs, "optimizer": "adam", "lr": 1e-3,
           "batch_size": 64, "bootstrap": 50}
    covid = {"data": ds("covid-data"), "epochs": cfg.epochs, "augment": {"rotation": 10}}
    if cfg.phantom:
        # Few epochs on few images: the paper's SGD (lr 0.001) barely moves in 4 epochs and its
        # validation AUROC swings between epochs; Adam learns the phantom patterns in one or two.
        covid.update(optimizer="adam", lr=1e-3, scheduler="none")
    stages += [
        _train(cfg, "nih-smallcnn", "nih-train", f"NIH pre-training: smallcnn, {cfg.replicas} replicas (DDP)",
               {**nih, "model": "smallcnn"}),
        _train(cfg, "nih-resnext50", "nih-train", f"NIH pre-training: resnext50, {cfg.replicas} replicas (DDP)",
               {**nih, "model": "resnext50", "batch_size": 32, "epochs": max(1, cfg.nih_epochs - 1)}),
        _train(cfg, "method1", "transfer", "transfer method 1: NIH smallcnn, conv frozen, new head",
               {**covid, "init_from": _run_name(cfg, "nih-smallcnn")}, "method 1", method=1),
        _train(cfg, "method2", "transfer", "transfer method 2: NIH resnext50, oversampling, new head",
               {**covid, "init_from": _run_name(cfg, "nih-resnext50")}, "method 2", method=2),
        _train(cfg, "resnext-scratch", "train", "baseline: resnext50 from random init",
               {**covid, "model": "resnext50"}, "ResNeXt-50 scratch"),
    ]
    if cfg.imagenet:
        stages.append(_train(cfg, "resnext-imagenet", "train", "baseline: resnext50 from ImageNet weights",
                             {**covid, "model": "resnext50", "pretrained": cfg.imagenet},
                             "ResNeXt-50 ImageNet"))
    models = [s for s in stages if s.role]  # the trained models, before any evaluate stage
    stages += [_evaluate(cfg, m, "covid-data", "test", "test1") for m in models]
    if cfg.test2:
        stages += [_evaluate(cfg, m, "test2-data", "all", "test2") for m in models]
    return stages


def report_title(cfg: PaperConfig) -> str:
    if not cfg.phantom:
        return (f"cxrjobs paper pipeline '{cfg.name}': {cfg.size} px, {cfg.nih_epochs} NIH / {cfg.epochs} "
                "COVID epochs")
    return (f"cxrjobs paper pipeline '{cfg.name}' on PHANTOM data (synthetic, not X-rays): "
            f"{cfg.phantom_nih} NIH / {cfg.phantom_covid} COVID images at {cfg.size} px, {cfg.nih_epochs} NIH / "
            f"{cfg.epochs} COVID epochs, Adam - smaller than the paper (224 px, full NIH, SGD)")


def _check_same_spec(store: ObjectStore, job: JobSpec) -> None:
    key = join_key("runs", job.name, "spec.json")
    if not store.exists(key):
        return
    old = JobSpec.model_validate_json(store.get_text(key))
    diffs = api.spec_diff(old.model_dump(mode="json"), job.model_dump(mode="json"))
    if diffs:
        raise CxrError(f"stage run {job.name} exists with other options ({store.url}/{key}; {api.describe_diffs(diffs)}); "
                       "rerun with the same options to resume, or pick another --name")


def run_stage(stage: Stage, backend: str, store: ObjectStore, say: Callable[[str], None],
              stream: Callable[[str], None]) -> str:
    """Run one stage to its end; returns "skipped" | "followed" (already running: another
    pipeline's or an earlier one's, not restarted) | "resumed" | "ran"."""
    job = stage.job
    _check_same_spec(store, job)
    if store.exists(stage.output):
        return "skipped"
    be = get_backend(backend)
    try:
        st = be.status(job.name)
    except CxrError:
        st = None
    if st is not None and not st.done:
        say(f"  {job.name} is already {st.state}: following it")
        how = "followed"
    else:
        how = "resumed" if st is not None else "ran"
        api.submit(job, backend, store=store)
    for line in be.logs(job.name, replica=0, follow=True):
        stream(line.rstrip("\n"))
    st = be.wait(job.name)
    if st.state != "Succeeded" or not store.exists(stage.output):
        raise CxrError(f"stage {stage.key} (run {job.name}) ended {st.state}"
                       f"{': ' + st.message if st.message else ''}; see `cxrjobs logs {job.name} "
                       f"--backend {backend}`. Rerun the pipeline to resume: finished stages are skipped")
    return how


def run_pipeline(cfg: PaperConfig, say: Callable[[str], None] = print,
                 stream: Callable[[str], None] = print, store: ObjectStore | None = None) -> PipelineResult:
    t0 = time.perf_counter()
    cfg = cfg.resolved()
    store = store or open_store()
    cfg.check_inputs(store)
    data_cfg = phantom_data(cfg, say) if cfg.phantom else cfg
    stages = paper_stages(data_cfg)
    for stage in stages:  # every stage before the first runs: a changed option found at stage 6 came after hours
        _check_same_spec(store, stage.job)
    result = PipelineResult(cfg.name, phantom=cfg.phantom, sizes={
        "image_size": cfg.size, "nih_epochs": cfg.nih_epochs, "covid_epochs": cfg.epochs,
        "replicas": cfg.replicas, "phantom_nih_images": cfg.phantom_nih if cfg.nih is None else None,
        "phantom_covid_images": cfg.phantom_covid if cfg.covid is None else None})
    for i, stage in enumerate(stages, 1):
        say(f"[{i}/{len(stages)}] {stage.title} (run {stage.job.name})")
        t = time.perf_counter()
        try:
            how = run_stage(stage, cfg.backend, store, say, lambda line: stream(f"    {line}"))
        except KeyboardInterrupt:  # the stage is a detached run: it does not stop with us
            say(f"stopped following the pipeline; stage run {stage.job.name} may go on in the background "
                f"(`cxrjobs status {stage.job.name}`; `cxrjobs cancel {stage.job.name}` stops it). Rerun the "
                "same pipeline command to go on from there")
            raise
        secs = time.perf_counter() - t
        say(f"[{i}/{len(stages)}] {stage.key}: {'already done, skipped' if how == 'skipped' else how + f' in {secs:.0f}s'}")
        entry = {"stage": stage.key, "run": stage.job.name, "kind": stage.job.kind, "status": how,
                 "seconds": round(secs, 1), "role": stage.role, "test_set": stage.test_set}
        if stage.job.kind == "evaluate":
            res = json.loads(store.get_text(stage.output))
            entry["result"] = {k: res.get(k) for k in ("dataset", "split", "n_images", "n_patients",
                                                         "threshold", "auroc", "auroc_ci", "balanced_accuracy",
                                                         "sensitivity", "specificity")}
        if stage.job.kind not in ("preprocess", "evaluate"):
            entry["result"] = json.loads(store.get_text(stage.output))
        result.stages.append(entry)
    from cxrjobs.report.html import write_report
    n = len(stages) + 1
    report = cfg.out / "report.html"
    models = [s.job.name for s in stages if s.role and s.job.kind != "evaluate"]
    say(f"[{n}/{n}] report of {len(models)} runs -> {report}")
    rep = write_report(store, models, report, report_title(cfg))
    result.report_path = rep["path"]
    result.seconds = time.perf_counter() - t0
    key = join_key("pipelines", cfg.name, "summary.json")
    store.put_text(key, json.dumps(result.to_dict(), indent=1, default=str))
    result.summary_path = f"{store.url}/{key}"
    return result


def summary_lines(result: PipelineResult) -> list[str]:
    """The methods side by side on test 1, and where everything is."""
    lines = []
    if result.phantom:
        s = result.sizes
        lines.append(f"PHANTOM data (synthetic images, not X-rays): {s['phantom_nih_images']} NIH / "
                     f"{s['phantom_covid_images']} COVID images at {s['image_size']} px, "
                     f"{s['nih_epochs']} NIH / {s['covid_epochs']} COVID epochs - far smaller than the paper's "
                     "224 px and full NIH; the numbers show the pipeline works, not the paper's results")
    lines.append(f"{'method':<20} {'test set':<8} {'AUROC [95% CI]':<22} {'bal. acc.':<9} {'sens.':<6} "
                 f"{'spec.':<6} images/patients")
    for st in result.stages:
        r = st.get("result") or {}
        if st["kind"] != "evaluate" or r.get("auroc") is None:
            continue
        ci = f" [{r['auroc_ci'][0]:.2f}, {r['auroc_ci'][1]:.2f}]" if r.get("auroc_ci") else ""
        lines.append(f"{st['role']:<20} {st['test_set']:<8} {r['auroc']:.3f}{ci:<16} "
                     f"{_num(r.get('balanced_accuracy')):<9} {_num(r.get('sensitivity')):<6} "
                     f"{_num(r.get('specificity')):<6} {r['n_images']}/{r['n_patients']}")
    ran = sum(s["status"] != "skipped" for s in result.stages)
    lines.append(f"pipeline {result.name}: {len(result.stages)} stages ({ran} run, "
                 f"{len(result.stages) - ran} already done) in {result.seconds:.0f}s; summary: {result.summary_path}")
    lines.append(f"report: {result.report_path}")
    return lines


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
