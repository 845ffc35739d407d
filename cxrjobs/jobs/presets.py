"""The paper's presets of the one training loop, in one place: defaults under a spec file and
the command-line flags (resolve_job merges preset < spec file < flags).

* nih-train: NIH ChestX-ray14 pre-training (TrainSpec's own defaults are the paper's).
* transfer method 1: the NIH-trained small CNN, convolutional layers frozen, a new 2-class head,
  SGD with StepLR(step 7, gamma 0.1), batch 32.
* transfer method 2: ResNeXt-50 initialised from an NIH-trained ResNeXt-50, a new head, minority
  oversampling, the best model by validation loss, at the dataset's size (the paper: 224 px).
* train: the baselines (any model, random init or --pretrained weights) with method 2's recipe
  minus the initialisation, so a baseline differs from method 2 only in where it starts.
"""

from __future__ import annotations

from cxrjobs.errors import ConfigError

_BINARY = {"objective": "multiclass", "batch_size": 32, "monitor": "val_loss"}

TRANSFER_METHODS: dict[int, dict] = {
    1: {**_BINARY, "model": "smallcnn", "freeze": "conv", "optimizer": "sgd", "lr": 0.001,
        "momentum": 0.9, "scheduler": "step", "step_size": 7, "gamma": 0.1},
    # No image_size: the dataset's (the paper's 224 px is a dataset preprocessed at 224). Pinned
    # here, it refused a 64 px dataset with "drop --image-size" to a user who had given none.
    2: {**_BINARY, "model": "resnext50", "sampler": "balanced",
        "optimizer": "sgd", "lr": 0.001, "momentum": 0.9},
}

PRESETS: dict[str, dict] = {
    "nih-train": {},
    "train": {**_BINARY, "model": "resnext50", "sampler": "balanced", "optimizer": "sgd",
              "lr": 0.001, "momentum": 0.9},
    "transfer": {},
}


def defaults(kind: str, method: int | None = None) -> dict:
    """The `train` payload defaults of a job kind (and transfer method)."""
    if kind == "transfer":
        if method not in TRANSFER_METHODS:
            raise ConfigError(f"transfer --method {method}: choose one of {sorted(TRANSFER_METHODS)} "
                              "(1: NIH small CNN, frozen conv; 2: NIH ResNeXt-50, oversampling)")
        return {"train": dict(TRANSFER_METHODS[method])}
    return {"train": dict(PRESETS.get(kind, {}))}
