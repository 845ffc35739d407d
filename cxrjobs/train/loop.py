"""The one training loop. NIH pre-training, transfer, baselines and Tune trials all run here.

Each replica runs `Trainer(spec, run, ctx).fit()`: begin() (resume, data loader), train_epoch()
until every epoch has run, then the test score and artifacts. A Tune trial drives the same steps
one epoch per Tune step (cxrjobs.tune.trainable). Gradients are averaged by DDP; metrics are
computed on the exact split (predictions gathered from all ranks, no sampler padding); rank 0
alone writes checkpoints, metrics and artifacts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from cxrjobs.data.shards import ShardDataset, passthrough
from cxrjobs.data.transforms import MEAN, STD, prepare
from cxrjobs.errors import CxrError
from cxrjobs.models import build_model, load_state_checked
from cxrjobs.storage import ObjectStore, join_key
from cxrjobs.storage.base import sha256_file
from cxrjobs.train import checkpoint
from cxrjobs.train.distributed import DistContext
from cxrjobs.train.precision import Precision, resolve_channels_last
from cxrjobs.headline import headline
from cxrjobs.eval import ood
from cxrjobs.eval.metrics import loss_fn, summarize
from cxrjobs.eval.predict import predict_dataset
from cxrjobs.train.sampler import BalancedDistributedSampler, balance_classes
from cxrjobs.train.transfer import freeze, init_from, weights_file
from cxrjobs.specs.train import TrainSpec, available_monitors


@dataclass(frozen=True)
class Run:
    """Where one run's files live: runs/<run_id>/ in the store."""
    store: ObjectStore
    run_id: str

    def key(self, *parts: str) -> str:
        return join_key("runs", self.run_id, *parts)


def resolve_dataset(data: str, store: ObjectStore) -> Path:
    if os.path.isdir(data):
        return Path(data)
    from cxrjobs.config import load_settings
    from cxrjobs.storage.sync import materialize

    if not store.exists(join_key(data, "manifest.json")):
        raise CxrError(f"dataset {data!r} not found: neither a local folder nor a dataset in "
                       f"store {store.url} (expected {data}/manifest.json)")
    return materialize(store, data, load_settings().local_cache)


def default_threads(world_size: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // world_size)


def monitor_value(monitor: str, val: dict) -> float | None:
    v = val["loss"] if monitor == "val_loss" else val[monitor[len("val_"):]]["value"]
    return None if v is None or math.isnan(v) else float(v)


class Trainer:
    def __init__(self, spec: TrainSpec, run: Run, ctx: DistContext, log=print,
                 recorded_spec: TrainSpec | None = None):
        """`recorded_spec`: the spec its checkpoints record, when this process trains under a
        local variant of it (a Tune trial: a cached dataset path, its share of the cores)."""
        self.spec, self.run, self.ctx, self.log = spec, run, ctx, log
        self.recorded_spec = recorded_spec or spec
        torch.set_num_threads(spec.threads or default_threads(ctx.world_size))
        if spec.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
        torch.manual_seed(spec.seed)
        random.seed(spec.seed)
        root = resolve_dataset(spec.data, run.store)
        self.data = {s: ShardDataset(root, s, spec.objective) for s in ("train", "val", "test")}
        for split in ("train", "val"):
            if len(self.data[split]) == 0:
                raise CxrError(f"dataset {spec.data}: the {split} split is empty; preprocess with "
                               "more images or other --fractions")
        size = self.data["train"].image_size
        if spec.image_size not in (None, size):
            raise CxrError(f"image_size={spec.image_size} but dataset {spec.data} was preprocessed "
                           f"at {size}; preprocess again at {spec.image_size} or drop --image-size")
        self.image_size = size
        num_classes = self.data["train"].num_classes
        ok = available_monitors(spec.objective, num_classes)
        if spec.monitor not in ok:
            raise CxrError(f"monitor {spec.monitor} is not reported for a {spec.objective} task with "
                           f"{num_classes} classes ({spec.data}); choose one of {ok}")
        pretrained = spec.pretrained
        if pretrained and pretrained != "imagenet":
            from cxrjobs.config import load_settings
            pretrained = weights_file(pretrained, run.store, load_settings().local_cache)
        # A new head for any model: num_classes comes from the dataset.
        self.model = build_model(spec.model, num_classes, size, pretrained)
        if spec.init_from:
            note = init_from(self.model, spec.model, spec.init_from, run.store, size)
            if ctx.is_main:
                log(note)
        self.frozen = freeze(self.model, spec.model, spec.freeze)
        if self.frozen and ctx.is_main:
            log(f"frozen ({spec.freeze}): {len(self.frozen)} parameter tensors, "
                f"{sum(p.numel() for p in self.model.parameters() if not p.requires_grad):,} weights "
                f"of {sum(p.numel() for p in self.model.parameters()):,}")
        self.model.to(ctx.device)
        self.amp = Precision(spec.precision, ctx.device)
        self.channels_last = resolve_channels_last(spec.channels_last, spec.model, ctx.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = DDP(self.model) if ctx.distributed else self.model
        # Compiled for training steps only; evaluation and checkpoints use the plain module.
        self.train_net = torch.compile(self.net) if spec.compile else self.net
        self._buffers: dict[str, torch.Tensor] = {}  # reused float batches (CPU), per purpose
        self.loss = loss_fn(spec.objective)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if spec.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                                       weight_decay=spec.weight_decay)
        else:
            self.opt = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.sched = (torch.optim.lr_scheduler.StepLR(self.opt, spec.step_size, spec.gamma)
                      if spec.scheduler == "step" else None)
        self.per_rank = math.ceil(spec.batch_size / ctx.world_size)
        self.micro = min(self.per_rank, spec.micro_batch_size or self.per_rank)
        # BatchNorm cannot normalise a single image in training mode (torch raises): such a model
        # never gets a micro-batch of one (see step) and skips an epoch's last batch of one.
        self.needs_pairs = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.history: list[dict] = []
        self.best_val = math.inf
        self.best_monitor = math.inf if spec.monitor_mode == "min" else -math.inf
        self.start_epoch = 0
        self.epoch = 0  # epochs done; train_epoch() runs the next one
        self._loader: DataLoader | None = None  # set by begin()
        self._train_sampler = None
        self._told_single = False

    # -- one optimisation step over a rank's share of a global batch ---------------------------
    def prepare(self, x: torch.Tensor, aug=None, gen: torch.Generator | None = None,
                purpose: str = "train", consume: bool = False) -> torch.Tensor:
        """uint8 batch (pinned when the device is a GPU) -> normalised float batch on the device.
        On the CPU the float batch is written into a buffer reused by the next call of the same
        purpose, so it must be consumed (forward and backward) before then. `consume`: the
        caller will not read x again (see transforms.prepare)."""
        x = x.to(self.ctx.device, non_blocking=True)
        buf = self._buffers.get(purpose) if x.device.type == "cpu" else None
        out = prepare(x, aug, gen, out=buf, consume=consume)
        if x.device.type == "cpu" and (buf is None or out.data_ptr() != buf.data_ptr()):
            self._buffers[purpose] = out
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Returns the summed loss as a 0-dim tensor on the device (no host sync per step)."""
        x = self.prepare(x, self.spec.augment, gen, consume=True)  # the loader's own batch
        y = y.to(self.ctx.device, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        sizes = [self.micro] * (len(x) // self.micro) + ([len(x) % self.micro] if len(x) % self.micro else [])
        if self.needs_pairs and len(sizes) > 1 and sizes[-1] == 1:
            sizes[-2:] = [sizes[-2] + 1]
        chunks = list(zip(x.split(sizes), y.split(sizes)))
        total = torch.zeros((), device=self.ctx.device)
        for i, (xc, yc) in enumerate(chunks):
            last = i == len(chunks) - 1
            # Gradient accumulation: only the last micro-batch triggers DDP's all-reduce.
            sync = contextlib.nullcontext() if last or not self.ctx.distributed else self.net.no_sync()
            with sync:
                with self.amp.autocast():
                    logits = self.train_net(xc)
                loss = self.loss(logits.float(), yc)
                self.amp.backward(loss * (len(xc) / len(x)))
            total += loss.detach() * len(xc)
        self.amp.step(self.opt)
        return total

    def _resume(self) -> None:
        ckpt = checkpoint.load(self.run.store, self.run.key("checkpoints/latest.pt"))
        if ckpt is None:
            return
        saved = ckpt.get("dataset_index_sha256")
        if saved is not None and saved != self.dataset_digest:
            raise CxrError(
                f"run {self.run.run_id} trained its first {int(ckpt['epoch'])} epoch(s) on another version of "
                f"dataset {self.spec.data}: its index.csv (images, patients, splits) changed since, by a "
                "preprocessing with other options or another folder of that name. Resuming would mix its "
                "splits (patients it trained on could land in test). Start a new run (another --name), or "
                "restore the dataset it started on")
        load_state_checked(self.model, ckpt["model"], self.run.key("checkpoints/latest.pt"))
        self.start_epoch = int(ckpt["epoch"])
        self._restore_optimizer(ckpt)
        checkpoint.set_rng_state(ckpt["rng"])
        self.history = json.loads(ckpt["history"])
        self.best_val = float(ckpt["best_val_loss"])
        self.best_monitor = float(ckpt.get("best_monitor", self.best_monitor))
        self.amp.load_state_dict(ckpt.get("grad_scaler"))
        self.log(f"resumed from checkpoint: {self.start_epoch} of {self.spec.epochs} epochs done")

    def _restore_optimizer(self, ckpt: dict) -> None:
        """Optimizer and scheduler state from a checkpoint, then the spec's hyper-parameters on top:
        under PBT the checkpoint is a donor's and the spec holds the explored values. A change of
        optimizer type keeps the weights and starts fresh optimizer state."""
        spec, groups = self.spec, ckpt["optimizer"]["param_groups"]
        saved_type = "adam" if "betas" in groups[0] else "sgd"
        if saved_type == spec.optimizer:
            self.opt.load_state_dict(ckpt["optimizer"])
        else:
            self.log(f"optimizer changed from {saved_type} to {spec.optimizer}: fresh optimizer state")
        if self.sched is not None:
            if ckpt.get("scheduler"):
                self.sched.load_state_dict(ckpt["scheduler"])
            else:
                self.sched.last_epoch = self.start_epoch
        same = (saved_type == spec.optimizer and all(g.get("initial_lr", g["lr"]) == spec.lr for g in self.opt.param_groups)
                and (self.sched is None or (self.sched.step_size, self.sched.gamma) == (spec.step_size, spec.gamma)))
        for g in self.opt.param_groups:
            g["weight_decay"] = spec.weight_decay
            if "momentum" in g:
                g["momentum"] = spec.momentum
            if self.sched is not None:
                g["initial_lr"] = spec.lr
            if not same:  # unchanged: keep the restored lr bit for bit
                decays = self.sched.last_epoch // spec.step_size if self.sched is not None else 0
                g["lr"] = spec.lr * spec.gamma ** decays
        if self.sched is not None:
            self.sched.step_size, self.sched.gamma = spec.step_size, spec.gamma
            self.sched.base_lrs = [spec.lr] * len(self.opt.param_groups)
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]

    def _checkpoint(self, epoch: int, improved: bool) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict() if self.sched else {},
                 "epoch": epoch, "rng": checkpoint.rng_state(),
                 "history": json.dumps(self.history), "best_val_loss": self.best_val,
                 "grad_scaler": self.amp.state_dict(),
                 "spec": self.recorded_spec.model_dump_json(), "monitor": self.spec.monitor,
                 "best_monitor": self.best_monitor, "dataset_index_sha256": self.dataset_digest,
                 **self.input_recipe()}
        store = self.run.store
        checkpoint.save(store, self.run.key("checkpoints/latest.pt"), state)
        if improved:
            checkpoint.save(store, self.run.key("checkpoints/best.pt"), state)
        # Rewritten whole from the checkpointed history, so a lost epoch never leaves a line.
        store.put_text(self.run.key("metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in self.history))

    @functools.cached_property
    def dataset_digest(self) -> str:
        """sha256 of the dataset's index.csv (every image's id, patient, labels and split): a
        resumed run checks that it goes on with the dataset it started on."""
        return sha256_file(self.data["train"].root / "index.csv")

    def input_recipe(self) -> dict:
        """What a checkpoint needs to say so that predict can rebuild the model and its input."""
        train = self.data["train"]
        return {"arch": self.spec.model, "class_names": list(train.class_names),
                "objective": self.spec.objective, "image_size": self.image_size,
                "fit": train.manifest.get("parameters", {}).get("fit", "pad"),
                "normalization": {"mean": MEAN, "std": STD}}

    def _sampler(self, train):
        if self.spec.sampler == "balanced":
            return BalancedDistributedSampler(balance_classes(train.targets), self.ctx.world_size,
                                              self.ctx.rank, self.spec.seed)
        return DistributedSampler(train, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                  shuffle=True, seed=self.spec.seed, drop_last=False)

    def evaluate(self, split: str) -> dict:
        ds = self.data[split]
        # Under the run's autocast; batches normalised by the Trainer (reused CPU buffer).
        with self.amp.autocast():
            logits, _ = predict_dataset(self.model, ds, self.ctx, self.micro,
                                        normalize=lambda x: self.prepare(x, purpose="eval"))
        return summarize(self.spec.objective, logits, ds.targets, ds.patients, ds.class_names,
                         split, self.spec.bootstrap, self.spec.seed)

    def begin(self) -> "Trainer":
        """Resume from the run's latest.pt when there is one (weights, optimizer, epoch, history),
        then set up the data loader. Called again, it resumes from latest.pt again."""
        spec, ctx = self.spec, self.ctx
        self._resume()
        self.epoch = self.start_epoch
        train = self.data["train"]
        self._train_sampler = self._sampler(train)
        self._loader = DataLoader(train, batch_size=self.per_rank, sampler=self._train_sampler,
                                  collate_fn=passthrough, num_workers=spec.loader_workers,
                                  persistent_workers=spec.loader_workers > 0,
                                  pin_memory=ctx.device.type == "cuda")
        if ctx.is_main and self.start_epoch == 0:
            self.log(f"training {spec.model} on {spec.data}: {train.describe()}, "
                     f"{ctx.world_size} replica(s) x {torch.get_num_threads()} thread(s), "
                     f"global batch {self.per_rank * ctx.world_size} "
                     f"({self.per_rank}/replica, micro-batch {self.micro}), device {ctx.device}, "
                     f"precision {self.amp.name}{', channels-last' if self.channels_last else ''}"
                     f"{', compiled' if spec.compile else ''}")
            if self.per_rank * ctx.world_size > len(train):
                self.log(f"note: the global batch {self.per_rank * ctx.world_size} is larger than the "
                         f"{len(train)} training images: each epoch is one step over all of them")
        return self

    def train_epoch(self) -> dict:
        """One epoch: train, step the scheduler, validate; rank 0 writes the epoch's checkpoint and
        metrics before this returns. Returns the epoch's record (self.history[-1])."""
        if self._loader is None:
            raise RuntimeError("Trainer.train_epoch() before begin()")
        spec, ctx, epoch = self.spec, self.ctx, self.epoch
        train = self.data["train"]
        self._train_sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + epoch * 1009 + ctx.rank)
        t0 = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for x, y in self._loader:
            if self.needs_pairs and len(x) == 1:
                # An epoch's last batch of one image (every rank has as many images, so every rank
                # skips it). Rare: the training split's size is one more than a multiple of the batch.
                if ctx.is_main and not self._told_single:
                    self.log("skipped a training batch of 1 image: BatchNorm needs 2 or more")
                    self._told_single = True
                continue
            loss_sum += self.step(x, y, gen)
            seen += len(x)
        # On the training device: NCCL reduces only CUDA tensors. float() waits for the
        # device's last step, so the epoch's time includes all of its work.
        totals = torch.tensor([float(loss_sum), seen], dtype=torch.float64, device=ctx.device)
        train_seconds = time.perf_counter() - t0
        if ctx.distributed:
            dist.all_reduce(totals)
        lr = self.opt.param_groups[0]["lr"]
        if self.sched is not None:
            self.sched.step()
        val = self.evaluate("val")
        current = monitor_value(spec.monitor, val)
        improved = current is not None and (
            current < self.best_monitor if spec.monitor_mode == "min" else current > self.best_monitor)
        if improved:
            self.best_monitor = current
        self.best_val = min(self.best_val, val["loss"])
        self.history.append({
            "epoch": epoch + 1, "lr": lr,
            "train": {**train.describe(), "loss": float(totals[0]) / max(float(totals[1]), 1.0),
                      "images_seen": int(totals[1]), "seconds": train_seconds,
                      "images_per_second": float(totals[1]) / max(train_seconds, 1e-9)},
            "val": val, "best": improved,
        })
        self.epoch = epoch + 1
        if ctx.is_main:
            self._checkpoint(epoch + 1, improved)
            self.log(f"epoch {epoch + 1}/{spec.epochs} train_loss {self.history[-1]['train']['loss']:.4f} "
                     f"val_loss {val['loss']:.4f} {headline(val)} "
                     f"{self.history[-1]['train']['images_per_second']:.0f} img/s{' *best' if improved else ''}")
        return self.history[-1]

    def fit(self) -> dict:
        self.begin()
        while self.epoch < self.spec.epochs:
            self.train_epoch()
        return self._finish()

    def _finish(self) -> dict:
        spec = self.spec
        best_epochs = [h["epoch"] for h in self.history if h.get("best")]
        result = {"run": self.run.run_id, "epochs": len(self.history), "best_val_loss": self.best_val,
                  "monitor": spec.monitor, "best_monitor": self.best_monitor,
                  "best_epoch": best_epochs[-1] if best_epochs else None}  # what test scores
        self.log(f"rank {self.ctx.rank} final weights sha256 {checkpoint.weights_digest(self.model)}")
        if self.ctx.distributed:
            dist.barrier()  # best.pt is written by rank 0 before anyone reads it
        best_key = self.run.key("checkpoints/best.pt")
        if not self.run.store.exists(best_key):
            seen = [monitor_value(spec.monitor, h["val"]) for h in self.history]
            raise CxrError(
                f"run {self.run.run_id}: no epoch improved {spec.monitor} (values per epoch: {seen}), "
                f"so there is no {self.run.store.url}/{best_key} to score; the test split was not "
                "looked at. A NaN loss usually means the learning rate is too high: lower --lr")
        # The best weights from here on: the test score and the OOD detector describe best.pt.
        self.model.load_state_dict(checkpoint.load(self.run.store, best_key)["model"])
        if spec.evaluate_test and len(self.data["test"]):
            result["test"] = self.evaluate("test")
        ood.fit_for_run(self.run.store, self.run.run_id, self.ctx, self.data, self.micro, self.log)
        if self.ctx.is_main:
            store = self.run.store
            store.put_text(self.run.key("artifacts/result.json"), json.dumps(result, indent=1))
            where = f"{store.url}/{self.run.key('')}"
            best = f"best.pt (epoch {result['best_epoch']}, {spec.monitor} {self.best_monitor:.4f})"
            msg = f"test of {best}: {headline(result['test'])}" if "test" in result else best
            self.log(f"run {self.run.run_id} finished {result['epochs']} epochs: {msg}; artifacts: {where}")
        return result
