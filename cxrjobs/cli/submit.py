"""`cxrjobs submit ...`: run a job on a backend (local processes by default)."""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import Optional

import typer

from cxrjobs.cli.common import out, print_json
from cxrjobs.cli.kube import current as kube_options, kubernetes_options
# The API, the job specs and their resolution are imported by the command that runs, not here:
# building every kind's pydantic models would cost `cxrjobs --help` about 0.2 s.

app = typer.Typer(no_args_is_help=True, help="Submit a job: nih-train, train, transfer, preprocess, evaluate, tune.")

BACKEND = typer.Option("local", help="where replicas run: local (processes on this machine) | kubernetes")
WAIT = typer.Option(False, "--wait", help="stream replica 0's log and wait for the end")
JSON = typer.Option(False, "--json", help="print one JSON object (run, state, ...)")
DRY = typer.Option(False, "--dry-run", help="print what would run and exit: processes (JSON) or Kubernetes objects (YAML)")
SPEC = typer.Option(None, "-f", "--spec", help="YAML spec; flags override its values")


def _finish(job, backend: str, wait: bool, as_json: bool, dry_run: bool) -> None:
    from cxrjobs import api
    from cxrjobs.backends import get_backend
    from cxrjobs.backends.base import JobStatus

    kube = kube_options()
    result = api.submit(job, backend, dry_run=dry_run, kube=kube)
    if dry_run:
        if as_json:
            print_json(result.to_dict())
        else:
            print(result.render_text().rstrip("\n"))
        return
    assert isinstance(result, JobStatus)
    if not wait:
        if as_json:
            print_json(result.to_dict())
        else:
            out.print(f"submitted {job.name} ({job.kind}, {job.replicas} replicas) on {backend}; "
                      f"follow with `cxrjobs logs {job.name} -f`")
        return
    try:
        if as_json:  # no log lines: stdout is one JSON object, printed when the run has ended
            final = api.wait(job.name, backend, kube)
        else:
            for line in get_backend(backend, kube).logs(job.name, replica=0, follow=True):
                print(line, end="", flush=True)
            final = api.wait(job.name, backend, kube)
    except KeyboardInterrupt:
        # Ctrl-C stops the waiting, not the run (its replicas are not this process's children).
        print(f"\nstopped waiting; run {job.name} goes on ({backend} backend): `cxrjobs status {job.name}` "
              f"shows it, `cxrjobs logs {job.name} -f` follows it, `cxrjobs cancel {job.name}` stops it",
              file=sys.stderr, flush=True)
        raise typer.Exit(130) from None
    if as_json:
        print_json(final)
    else:
        out.print(f"run {job.name}: {final['state']}{' - ' + final['message'] if final['message'] else ''}; "
                  f"artifacts: {final['artifacts']}")
    if final["state"] != "Succeeded":
        from cxrjobs.backends.states import is_user_error
        raise typer.Exit(2 if is_user_error(final["message"]) else 1)


# -- training flags: one definition shared by nih-train, train and transfer ---------------------
# name -> (type, option). Each becomes a keyword of the command; `training_flags` gathers them
# into the `train` payload (None = not given: the preset or spec file decides).
TRAIN_FLAGS: dict[str, tuple[object, object]] = {
    "data": (Optional[str], typer.Option(None, help="dataset: store prefix datasets/NAME or local folder")),
    "model": (Optional[str], typer.Option(None, help="smallcnn | resnext50 | densenet121")),
    "image_size": (Optional[int], typer.Option(None, help="must match the dataset (default: its size)")),
    "epochs": (Optional[int], typer.Option(None)),
    "optimizer": (Optional[str], typer.Option(None, help="sgd | adam")),
    "lr": (Optional[float], typer.Option(None)),
    "momentum": (Optional[float], typer.Option(None)),
    "weight_decay": (Optional[float], typer.Option(None)),
    "scheduler": (Optional[str], typer.Option(None, help="none | step (StepLR)")),
    "step_size": (Optional[int], typer.Option(None)),
    "gamma": (Optional[float], typer.Option(None)),
    "batch_size": (Optional[int], typer.Option(None, help="global batch (paper: 1024 for NIH, 32 for COVID)")),
    "micro_batch_size": (Optional[int], typer.Option(None, help="largest per-replica forward batch")),
    "objective": (Optional[str], typer.Option(None, help="multilabel (findings, AUROC) | multiclass (softmax, accuracy)")),
    "pretrained": (Optional[str], typer.Option(None, help="imagenet | PATH | s3://... | store key (resnext50, densenet121)")),
    "init_from": (Optional[str], typer.Option(None, help="run id, store key or file: start from its weights, minus the head")),
    "freeze": (Optional[str], typer.Option(None, help="none | conv | conv+fc1, or comma-separated parameter-name prefixes")),
    "sampler": (Optional[str], typer.Option(None, help="shuffle | balanced (minority oversampling to ~50/50)")),
    "monitor": (Optional[str], typer.Option(None, help="validation metric that picks best.pt (default val_loss)")),
    "rotation": (Optional[float], typer.Option(None, help="random rotation augmentation, max degrees (train split only)")),
    "seed": (Optional[int], typer.Option(None)),
    "deterministic": (Optional[bool], typer.Option(None, "--deterministic/--no-deterministic")),
    "threads": (Optional[int], typer.Option(None, help="torch threads per replica (default cores / replicas)")),
    "bootstrap": (Optional[int], typer.Option(None, help="bootstrap replicates for CIs")),
    "precision": (Optional[str], typer.Option(None, help="auto | fp32 | bf16 | fp16 (auto: bf16 on GPUs that support it, else fp32)")),
    "channels_last": (Optional[bool], typer.Option(None, "--channels-last/--no-channels-last", help="memory format (default: on for resnext50/densenet121 on a GPU)")),
    "compile": (Optional[bool], typer.Option(None, "--compile/--no-compile", help="torch.compile the training step")),
    "loader_workers": (Optional[int], typer.Option(None, help="data loader processes per replica (GPU: 2 to 4)")),
}
JOB_FLAGS: dict[str, tuple[object, object]] = {
    "replicas": (Optional[int], typer.Option(None, help="processes / pods (default 1)")),
    "name": (Optional[str], typer.Option(None, help="run id (default: generated); resubmit it to resume")),
    "backoff_limit": (Optional[int], typer.Option(None, help="group restarts after a failure (default 3)")),
    "rendezvous_timeout": (Optional[float], typer.Option(None, help="seconds to wait for all replicas")),
}


def training_flags(func):
    """Add TRAIN_FLAGS and JOB_FLAGS to a command; it receives them as job overrides `job`:
    {name, replicas, ..., train: {...}}."""
    sig = inspect.signature(func)
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=t)
             for n, (t, opt) in {**JOB_FLAGS, **TRAIN_FLAGS}.items()]
    params = [p for p in sig.parameters.values() if p.name != "job"]

    @functools.wraps(func)
    def command(**kwargs):
        train = {n: kwargs.pop(n) for n in TRAIN_FLAGS}
        train["augment"] = {"rotation": train.pop("rotation")}
        job = {n: kwargs.pop(n) for n in JOB_FLAGS}
        job["train"] = train
        return func(job=job, **kwargs)

    command.__signature__ = sig.replace(parameters=params + extra)
    hints = {k: v for k, v in typing.get_type_hints(func).items() if k != "job"}
    command.__annotations__ = {**hints, **{n: t for n, (t, _) in {**JOB_FLAGS, **TRAIN_FLAGS}.items()}}
    del command.__wrapped__  # typer must see the signature above, not func's
    return command


@app.command("nih-train")
@kubernetes_options
@training_flags
def nih_train(job: dict, spec_file: Optional[Path] = SPEC, backend: str = BACKEND, wait: bool = WAIT,
              as_json: bool = JSON, dry_run: bool = DRY):
    """Pre-train on NIH ChestX-ray14 with DDP over gloo (nccl on GPUs): the paper's preset of the
    training loop.

    Example: cxrjobs submit nih-train --replicas 2 --data datasets/nih-224 --epochs 10 --wait
    """
    from cxrjobs.jobs import presets
    from cxrjobs.jobs.resolve import resolve_job

    _finish(resolve_job("nih-train", spec_file, job, presets.defaults("nih-train")),
            backend, wait, as_json, dry_run)


@app.command("train")
@kubernetes_options
@training_flags
def train(job: dict, spec_file: Optional[Path] = SPEC, backend: str = BACKEND, wait: bool = WAIT,
          as_json: bool = JSON, dry_run: bool = DRY):
    """Train any model on any preprocessed dataset: the paper's baselines (ResNeXt-50 from random
    init, or from ImageNet weights given as a file or object key). Defaults: 2-class softmax,
    batch 32, balanced sampler, SGD lr 0.001, best by val loss; flags override them.

    Example: cxrjobs submit train --model resnext50 --pretrained weights/resnext50-imagenet.pth --data datasets/covid-224 --wait
    """
    from cxrjobs.jobs import presets
    from cxrjobs.jobs.resolve import resolve_job

    _finish(resolve_job("train", spec_file, job, presets.defaults("train")), backend, wait, as_json, dry_run)


@app.command("transfer")
@kubernetes_options
@training_flags
def transfer(job: dict,
             method: int = typer.Option(..., "--method", help="1: NIH small CNN, conv frozen, SGD+StepLR, batch 32; "
                                        "2: NIH ResNeXt-50, oversampling, 224 px, best by val loss"),
             source: Optional[str] = typer.Option(None, "--from", help="the pre-training run (or checkpoint) to start from"),
             spec_file: Optional[Path] = SPEC, backend: str = BACKEND, wait: bool = WAIT,
             as_json: bool = JSON, dry_run: bool = DRY):
    """Fine-tune a pre-trained run on another dataset with a new head (the paper's methods 1 and 2).
    The method's preset fills what the flags leave open.

    Example: cxrjobs submit transfer --method 1 --from nih-train-20260101-120000-ab12 --data datasets/covid-224 --wait
    """
    from cxrjobs.jobs import presets
    from cxrjobs.jobs.resolve import resolve_job

    given = job["train"]["init_from"]
    if source and given and source != given:  # two starting points: neither may win silently
        from cxrjobs.errors import ConfigError
        raise ConfigError(f"--from {source} and --init-from {given} name two starting points; "
                          "give one (--from is the transfer's name for --init-from)")
    job["train"]["init_from"] = source or given
    _finish(resolve_job("transfer", spec_file, job, presets.defaults("transfer", method)),
            backend, wait, as_json, dry_run)


@app.command("preprocess")
@kubernetes_options
def preprocess(source: Optional[str] = typer.Argument(None, help="dataset folder readable by every replica, or "
                                                          "store://raw/NAME / s3://BUCKET/PREFIX (default: the spec's)"),
               format: Optional[str] = typer.Option(None, "--format", help="nih | covid | imagefolder"),
               size: Optional[int] = typer.Option(None),
               output: Optional[str] = typer.Option(None, help="store prefix (default: the spec's, else datasets/<format>-<size>)"),
               replicas: Optional[int] = typer.Option(None, help="slices, one per replica"),
               workers: Optional[int] = typer.Option(None, help="decoding processes per replica"),
               fit: Optional[str] = typer.Option(None, help="pad | crop"),
               strict: Optional[bool] = typer.Option(None, "--strict/--no-strict"),
               overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="replace an output made with other options"),
               name: Optional[str] = typer.Option(None, help="run id (default: generated)"),
               spec_file: Optional[Path] = SPEC, backend: str = BACKEND, wait: bool = WAIT,
               as_json: bool = JSON, dry_run: bool = DRY):
    """Preprocess a dataset as a job: replica i takes slice i (JOB_COMPLETION_INDEX), the last to
    finish merges.

    Example: cxrjobs submit preprocess ../shared/data/nih-sample --format nih --size 224 --replicas 2 --wait
    """
    from cxrjobs.jobs.resolve import preprocess_defaults, resolve_job
    from cxrjobs.specs.preprocess import normalize_source

    job = resolve_job("preprocess", spec_file, dict(
        name=name, replicas=replicas,
        preprocess=dict(output=output, workers=workers, overwrite=overwrite,
                        spec=dict(source=normalize_source(source) if source else None, format=format,
                                  size=size, fit=fit, strict=strict))),
        fill=preprocess_defaults, flags={"preprocess.spec": "SOURCE and --format",
                                              "preprocess.spec.source": "SOURCE (the dataset folder)"})
    _finish(job, backend, wait, as_json, dry_run)


@app.command("evaluate")
@kubernetes_options
def evaluate(run: str = typer.Argument(..., help="the trained run to score"),
             data: Optional[str] = typer.Option(None, help="dataset: store prefix datasets/NAME or local folder"),
             split: Optional[str] = typer.Option(None, help="test | val | all (an external test set: all)"),
             as_name: Optional[str] = typer.Option(None, "--as", help="result name, e.g. test1 / test2 (default: the split)"),
             batch_size: Optional[int] = typer.Option(None, help="images per forward pass per replica"),
             bootstrap: Optional[int] = typer.Option(None, help="patient bootstrap replicates (default 1000)"),
             replicas: Optional[int] = typer.Option(None, help="processes / pods sharing the images (default 1)"),
             allow_unfinished: Optional[bool] = typer.Option(
                 None, "--allow-unfinished", help="score a run that stopped before its last epoch (its best.pt so far)"),
             name: Optional[str] = typer.Option(None, help="job id (default: generated)"),
             spec_file: Optional[Path] = SPEC, backend: str = BACKEND, wait: bool = WAIT,
             as_json: bool = JSON, dry_run: bool = DRY):
    """Score a finished run on a dataset: threshold from the run's validation split, metrics with
    patient-bootstrap CIs, OOD count and plots in runs/RUN/eval/NAME/.

    Example: cxrjobs submit evaluate transfer-20260101-120000-ab12 --data datasets/covid-224 --split test --as test1 --wait
    """
    from cxrjobs.jobs.resolve import resolve_job

    job = resolve_job("evaluate", spec_file, dict(
        name=name, replicas=replicas,
        evaluate=dict(run=run, data=data, split=split, name=as_name, batch_size=batch_size,
                      bootstrap=bootstrap, allow_unfinished=allow_unfinished)))
    _finish(job, backend, wait, as_json, dry_run)


@app.command("tune")
@kubernetes_options
@training_flags
def tune(job: dict,
         job_kind: Optional[str] = typer.Option(None, "--job", help="the training job each trial runs: train | transfer | nih-train"),
         trials: Optional[int] = typer.Option(None, help="trials; for PBT the population (default 8)"),
         algo: Optional[str] = typer.Option(None, help="pbt | asha | random (default pbt)"),
         epochs_per_trial: Optional[int] = typer.Option(None, help="epochs of each trial (default 5)"),
         perturbation_interval: Optional[int] = typer.Option(None, help="PBT: epochs between exploit/explore (default 1)"),
         max_concurrent: Optional[int] = typer.Option(None, help="trials at once (default: CPUs, at most --trials)"),
         cpus: Optional[int] = typer.Option(None, help="CPUs the local Ray may use (default: all)"),
         metric: Optional[str] = typer.Option(None, help="val_loss | val_auroc | val_accuracy | ... (default val_loss)"),
         mode: Optional[str] = typer.Option(None, help="min | max (default: the metric's direction)"),
         space: Optional[Path] = typer.Option(None, help="YAML search space; its entries replace the default's"),
         max_failures: Optional[int] = typer.Option(None, help="retries of a failed trial from its checkpoint (default 2)"),
         tune_seed: Optional[int] = typer.Option(None, "--tune-seed", help="seed of the search (sampling, PBT explore)"),
         spec_file: Optional[Path] = SPEC, backend: str = BACKEND, wait: bool = WAIT,
         as_json: bool = JSON, dry_run: bool = DRY):
    """Hyper-parameter search over a training job with Ray Tune (PBT by default): the paper's
    space (optimizer, lr, StepLR step size and gamma, momentum) unless --space says otherwise.
    The best trial is exported as the run <name>-best; `cxrjobs status NAME` shows the trials.

    Example: cxrjobs submit tune --job train --data datasets/covid-224 --model resnext50 --trials 50 --algo pbt --epochs-per-trial 5 --perturbation-interval 1 --wait
    """
    from cxrjobs.jobs import presets
    from cxrjobs.jobs.resolve import resolve_job
    from cxrjobs.specs.tune import TuneSpec

    given = job["train"].pop("epochs")  # a trial's epochs: one count, not two that disagree
    if given is not None and epochs_per_trial is not None and given != epochs_per_trial:
        from cxrjobs.errors import ConfigError
        raise ConfigError(f"--epochs {given} and --epochs-per-trial {epochs_per_trial}: a trial trains "
                          "--epochs-per-trial epochs; give that one")
    epochs_per_trial = epochs_per_trial if epochs_per_trial is not None else given
    tune_doc = dict(job=job_kind, trials=trials, algo=algo, epochs_per_trial=epochs_per_trial,
                    perturbation_interval=perturbation_interval, max_concurrent=max_concurrent,
                    cpus=cpus, metric=metric, mode=mode, max_failures=max_failures, seed=tune_seed,
                    train=job.pop("train"))
    if space is not None:
        from cxrjobs.specs.tune import default_space
        from cxrjobs.tune.space import load_space_file
        base = default_space(epochs_per_trial or TuneSpec.model_fields["epochs_per_trial"].default)
        tune_doc["space"] = load_space_file(space, base)
    # The inner kind's preset under the flags (transfer's depend on a method: none here).
    inner = job_kind or "train"
    preset = presets.defaults(inner)["train"] if inner != "transfer" else {}
    # --replicas: Ray worker pods on Kubernetes (locally one driver process starts its own Ray).
    job = resolve_job("tune", spec_file, {**job, "tune": tune_doc}, {"tune": {"train": preset}})
    _finish(job, backend, wait, as_json, dry_run)
