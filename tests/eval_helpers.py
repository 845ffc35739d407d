"""Shared set-up of the evaluation tests: a tiny phantom COVID dataset and a 1-epoch run on it."""

from __future__ import annotations

from pathlib import Path

import torch


def phantom_covid(root: Path, count: int = 200, size: int = 64, seed: int = 3) -> Path:
    """A preprocessed phantom COVID dataset (binary: non-COVID / COVID-19) at `size` px."""
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.data.synth import synth_covid
    from cxrjobs.specs.preprocess import PreprocessSpec
    from cxrjobs.storage import LocalStore

    synth_covid(root / "raw", count, size=128, seed=seed)
    spec = PreprocessSpec(source=str(root / "raw"), format="covid", size=size)
    preprocess(spec, LocalStore(root / f"ds{size}"), "", show_progress=False)
    return root / f"ds{size}"


def train_run(store, name: str, data: Path, epochs: int = 1, **kw) -> dict:
    """Train a smallcnn run in this process (world size 1); returns the Trainer's result."""
    from cxrjobs.specs.train import TrainSpec
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import Run, Trainer

    from cxrjobs.jobs.spec import JobSpec

    spec = TrainSpec(**{"data": str(data), "epochs": epochs, "batch_size": 32, "optimizer": "adam",
                        "lr": 1e-3, "objective": "multiclass", "bootstrap": 0, **kw})
    # The run's record, as `submit` writes it (what it trained on, for evaluate's checks).
    store.put_text(f"runs/{name}/spec.json", JobSpec(kind="train", name=name, train=spec).model_dump_json(indent=1))
    return Trainer(spec, Run(store, name), DistContext(0, 1, torch.device("cpu"), None),
                   log=lambda m: None).fit()
