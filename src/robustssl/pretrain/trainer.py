"""One trainer for every pretraining method.

- Budget in steps or epochs; SGD, LARS or AdamW; linear warm-up then cosine decay; bf16/fp16 autocast.
- Data order is a function of (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
- ``train_state.safetensors`` (method, optimizer, scheduler, every rank's augmentation-generator state,
  monitor, step) is written every ``checkpoint_every`` steps atomically (temp file + ``os.replace``) as
  safetensors: a kill mid-write leaves the previous file, and resuming never unpickles anything.
- A NaN or inf loss (on any rank) stops the run with a clear error before the bad step touches the weights,
  so the last checkpoint written stays the last good one.
- DDP under ``torchrun`` (gloo on CPU, NCCL on CUDA): the method is wrapped in ``DistributedDataParallel``
  and called through it; each rank takes a strided share of the global batch (``batch_size`` is global);
  only rank 0 writes files and shows progress. Each rank draws its augmentations from its own generator
  (seeded from the seed and the rank), so a multi-rank run equals a single-process run exactly only for
  methods without random views; with random views it equals it in distribution.
- TensorBoard scalars (loss, lr, the method's logs, the monitor) under ``out_dir/tensorboard``.
- An online linear probe and a k-NN monitor (``pretrain/monitor.py``) on held-out labels.
- ``precise_bn_images > 0``: after the last step the encoder's batch-norm running statistics are recomputed
  as a plain average over that many whole, clean training images ("precise BN", Wu & Johnson, "Rethinking
  'Batch' in BatchNorm", 2021). The statistics gathered during training are an exponential average over
  whatever the method fed the encoder (patches, rotated or adversarial views) under weights that kept
  changing; a downstream probe embeds whole clean images with the final weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustssl.data.base import VisionDataset
from robustssl.encoders.batchnorm import bn_branch
from robustssl.encoders.checkpoints import load_state, save_state
from robustssl.encoders.checkpoints import save as save_checkpoint
from robustssl.pretrain.method import PretrainMethod
from robustssl.pretrain.monitor import Monitor
from robustssl.pretrain.optim import OPTIMIZERS
from robustssl.pretrain.optim import build_optimizer as _build_optimizer
from robustssl.runtime import autocast, distributed, get_logger, make_generator, progress, resolve_device
from robustssl.runtime.tensorboard import ScalarWriter

log = get_logger(__name__)


@dataclass
class TrainConfig:
    """``steps`` or ``epochs`` (epochs win when given: ``epochs × ⌊n / batch_size⌋`` steps)."""

    steps: int | None = 500
    epochs: int | None = None
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.5
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_steps: int = 0
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 0
    monitor_every: int = 0
    tensorboard: bool = True
    find_unused_parameters: bool = False
    precise_bn_images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None:
            raise ValueError("give a budget: steps or epochs")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if self.epochs is None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.epochs is None:
            self._check_warmup(self.steps)
        for name in ("checkpoint_every", "monitor_every", "log_every", "precise_bn_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")

    def _check_warmup(self, steps: int) -> None:
        if not 0 <= self.warmup_steps < steps:
            raise ValueError(f"warmup_steps must be in [0, steps={steps}), got {self.warmup_steps}")

    def total_steps(self, n: int) -> int:
        """The step budget for a training set of ``n`` samples."""
        steps = self.epochs * (n // self.batch_size) if self.epochs is not None else self.steps
        self._check_warmup(steps)
        return steps

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        keep = (
            "steps",
            "epochs",
            "batch_size",
            "optimizer",
            "lr",
            "weight_decay",
            "momentum",
            "warmup_steps",
            "seed",
        )
        return {k: getattr(self, k) for k in keep}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the weights were not updated with it."""


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_frac = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress_frac))


def build_optimizer(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    return _build_optimizer(params, config.optimizer, config.lr, config.weight_decay, config.momentum)


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch at ``step``: epoch ``e`` is a permutation drawn from (seed, e), last partial batch
    dropped, so any step's batch can be recomputed without replaying the ones before it."""
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=make_generator(seed * 100_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size]


STATE_FILE = "train_state.safetensors"


def _batch_norms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_batch_norm(
    encoder: torch.nn.Module,
    dataset: VisionDataset,
    images: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    precision: str = "fp32",
) -> int:
    """Reset the running statistics of every batch-norm layer of ``encoder`` and recompute them as the plain
    average (``momentum=None``) over ``images`` whole, clean training images (a seeded draw, the same on every
    rank, so ranks stay identical without communication). Only the layers the encoder's forward pass uses
    are updated (for dual-BN encoders, the clean branch). Weights are untouched; each layer's momentum and
    the encoder's train/eval mode are restored. Returns the number of images used (at most ``len(dataset)``).
    Idempotent: the result does not depend on the statistics it replaces."""
    layers = _batch_norms(encoder)
    if not layers:
        raise ValueError(
            f"precise_bn_images > 0 but {type(encoder).__name__} has no batch-norm layers; "
            "set train.precise_bn_images=0"
        )
    count = min(images, len(dataset))
    order = torch.randperm(len(dataset), generator=make_generator(seed * 100_003 + 99_991))[:count]
    was_training = encoder.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    encoder.train()
    try:
        for start in range(0, count, batch_size):
            indices = order[start : start + batch_size]
            batch = next(dataset.batches(len(indices), indices=indices))
            with autocast(device, precision):
                encoder.embed(batch["image"].to(device))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        encoder.train(was_training)
    return count


class _Run:
    """What a training run carries between steps (so saving and resuming see one object)."""

    def __init__(
        self,
        method: PretrainMethod,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        aug_gen: torch.Generator,
        config: TrainConfig,
        monitor: Monitor | None,
    ):
        self.method, self.optimizer, self.scheduler = method, optimizer, scheduler
        self.aug_gen, self.config, self.monitor = aug_gen, config, monitor

    def save(self, path: Path, step: int) -> None:
        """All ranks call this (the generator states are gathered); rank 0 writes."""
        generators = distributed.gather_objects(self.aug_gen.get_state())
        if not distributed.is_main():
            return
        state = {
            "step": step,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "aug_generators": generators,
            "world_size": distributed.world_size(),
            "resume_key": self.config.resume_key(),
        }
        if self.monitor is not None:
            state["monitor"] = self.monitor.state()
        save_state(path, state)

    def load(self, path: Path) -> int:
        try:
            state = load_state(path)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot resume from {path}: not a readable training state ({exc})") from exc
        if state.get("resume_key") != self.config.resume_key():
            raise ValueError(
                f"cannot resume from {path}: it was written with {state.get('resume_key')}, "
                f"this run has {self.config.resume_key()}; use a new --out or the same settings"
            )
        if int(state.get("world_size", 1)) != distributed.world_size():
            raise ValueError(
                f"cannot resume from {path}: it was written by {state.get('world_size')} process(es), this "
                f"run has {distributed.world_size()}; resume with the same --nproc_per_node"
            )
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.aug_gen.set_state(state["aug_generators"][distributed.rank()])
        if self.monitor is not None and "monitor" in state:
            self.monitor.load(state["monitor"])
        return int(state["step"])


def _wrap(method: PretrainMethod, device: torch.device, config: TrainConfig) -> torch.nn.Module:
    if distributed.world_size() == 1:
        return method
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        method, device_ids=ids, find_unused_parameters=config.find_unused_parameters
    )


def train(
    method: PretrainMethod,
    dataset: VisionDataset,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    method_name: str | None = None,
    resume: bool = False,
    monitor_dataset: VisionDataset | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``dataset``; write ``encoder.safetensors`` (+ JSON), ``config.json``,
    ``train_state.safetensors`` (every ``checkpoint_every`` steps and at the end) and TensorBoard scalars in
    ``out_dir``. With ``resume=True`` an existing ``train_state.safetensors`` there is continued exactly.
    ``monitor_dataset`` (labelled, held out) plus ``config.monitor_every > 0`` turn on the online probe and
    k-NN monitor. Returns a summary (steps, seconds, last losses, monitor results, checkpoint path)."""
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} is empty")
    if len(dataset) < config.batch_size:
        raise ValueError(
            f"dataset {dataset.name!r} has {len(dataset)} samples, fewer than one batch "
            f"of {config.batch_size}"
        )
    if resume and out_dir is None:
        raise ValueError("resume needs the out_dir of the run to continue")
    if config.monitor_every and monitor_dataset is None:
        raise ValueError("monitor_every > 0 needs a labelled held-out monitor_dataset")
    steps = config.total_steps(len(dataset))
    if config.precise_bn_images:
        if method.eval_bn_branch == "adv":
            raise ValueError(
                "precise_bn_images recomputes batch-norm statistics on clean images, but "
                f"{method_name or type(method).__name__} exports the adversarial branch; set "
                "train.precise_bn_images=0"
            )
        if not _batch_norms(method.encoder):
            raise ValueError(
                f"precise_bn_images > 0 but {type(method.encoder).__name__} has no batch-norm layers; "
                "set train.precise_bn_images=0"
            )
    device = resolve_device(config.device)
    distributed.init(device)
    device = distributed.local_device(device)
    rank, world = distributed.rank(), distributed.world_size()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} (global) must be divisible by the {world} processes"
        )
    method.to(device).train()
    model = _wrap(method, device, config)
    optimizer = build_optimizer(method.parameters(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, config.warmup_steps)
    )
    aug_gen = make_generator(config.seed + 1 + 1_000_003 * rank, device)
    monitor = None
    if config.monitor_every and distributed.is_main():
        monitor = Monitor(method.encoder, dataset, monitor_dataset).to(device)
    run = _Run(method, optimizer, scheduler, aug_gen, config, monitor)
    main = distributed.is_main()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    method.setup(dataset, device, make_generator(config.seed + 2, device))
    first = 0
    if resume and (out / STATE_FILE).exists():
        first = run.load(out / STATE_FILE)
        log.info("resuming %s at step %d/%d", out / STATE_FILE, first, steps)
    writer = ScalarWriter(out / "tensorboard") if (out is not None and main and config.tensorboard) else None
    start, last_logs, monitored = time.perf_counter(), {}, {}
    bar = progress(
        range(first, steps),
        desc=f"pretrain {method_name or type(method).__name__}",
        total=steps - first,
        enabled=None if main else False,
    )
    try:
        for step in bar:
            indices = _batch_indices(len(dataset), config.batch_size, config.seed, step)[rank::world]
            batch = {
                k: v.to(device, non_blocking=True)
                for k, v in next(dataset.batches(len(indices), indices=indices)).items()
            }
            batch["index"] = indices.to(device)
            with autocast(device, config.precision):
                loss, logs = model(batch, aug_gen)
            mean_loss = distributed.all_reduce_mean(loss.detach().float().reshape(1).clone())
            if not torch.isfinite(mean_loss).all():
                raise NonFiniteLossError(
                    f"loss became {float(loss.detach())} at step {step}; stopped before updating the weights "
                    f"(the last checkpoint in {out} is intact). Lower the learning rate or use "
                    "--precision fp32."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if monitor is not None:
                logs = {**logs, "online_probe_ce": monitor.update(batch)}
            last_logs = {"loss": float(mean_loss), **logs}
            bar.set_postfix(loss=f"{last_logs['loss']:.3f}")
            if writer is not None:
                writer.add_scalars(
                    {"loss": last_logs["loss"], "lr": scheduler.get_last_lr()[0]}, step + 1, prefix="train/"
                )
                writer.add_scalars(
                    {k: v for k, v in logs.items() if isinstance(v, (int, float))}, step + 1, prefix="train/"
                )
            if monitor is not None and ((step + 1) % config.monitor_every == 0 or step + 1 == steps):
                monitored = monitor.evaluate()
                if writer is not None:
                    writer.add_scalars(monitored, step + 1, prefix="monitor/")
                log.info("step %d monitor %s", step + 1, monitored)
            if main and config.log_every and (step + 1) % config.log_every == 0:
                log.info(
                    "step %d/%d loss %.4f lr %.4g",
                    step + 1,
                    steps,
                    last_logs["loss"],
                    scheduler.get_last_lr()[0],
                )
            if out is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                run.save(out / STATE_FILE, step + 1)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "steps": steps,
        "resumed_at": first,
        "seconds": seconds,
        **last_logs,
        **monitored,
    }
    if config.precise_bn_images:
        summary["precise_bn_images"] = precise_batch_norm(
            method.encoder,
            dataset,
            config.precise_bn_images,
            config.batch_size,
            config.seed,
            device,
            config.precision,
        )
    method.eval()
    if out is not None:
        run.save(out / STATE_FILE, steps)
        if main:
            resolved = {"method": method_name, "dataset": dataset.name, "world_size": world, **asdict(config)}
            (out / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True, default=str))
            # A method trained with two batch-norm branches names the one to use downstream (ACL, AdvCL:
            # the adversarial one); the checkpoint records it and robustssl.encoders.load restores it.
            branch = method.eval_bn_branch
            with bn_branch(method.encoder, branch) if branch else contextlib.nullcontext():
                summary["checkpoint"] = str(
                    save_checkpoint(
                        method.encoder,
                        out / "encoder.safetensors",
                        method=method_name,
                        epoch=None,
                        config=resolved,
                    )
                )
        distributed.barrier()
    return summary
