"""One trainer for every pretraining method: a step budget, SGD or AdamW, linear warm-up then cosine decay,
optional autocast, a progress bar, periodic training-state checkpoints, exact resume, and the encoder
checkpoint (safetensors + JSON metadata) at the end.

- Data order is a function of (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
- ``train_state.safetensors`` (model, optimizer, scheduler, augmentation-generator state, step) is written
  atomically (temp file + ``os.replace``) as safetensors: resuming never unpickles anything.
- A NaN or inf loss stops the run with a clear error before the bad step touches the weights, so the last
  checkpoint written stays the last good one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustssl.data.base import VisionDataset
from robustssl.encoders.checkpoints import load_state, save_state
from robustssl.encoders.checkpoints import save as save_checkpoint
from robustssl.pretrain.method import PretrainMethod
from robustssl.runtime import autocast, get_logger, make_generator, progress, resolve_device

log = get_logger(__name__)
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    steps: int = 500
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")
        if self.checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every}"
            )

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        keep = ("steps", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "warmup_steps", "seed")
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
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch at ``step``: epoch ``e`` is a permutation drawn from (seed, e), last partial batch
    dropped, so any step's batch can be recomputed without replaying the ones before it."""
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=make_generator(seed * 100_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size]


STATE_FILE = "train_state.safetensors"


def _save_state(
    path: Path,
    step: int,
    method: PretrainMethod,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    aug_gen: torch.Generator,
    config: TrainConfig,
) -> None:
    state = {
        "step": step,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "aug_generator": aug_gen.get_state(),
        "resume_key": config.resume_key(),
    }
    save_state(path, state)


def _load_state(
    path: Path,
    method: PretrainMethod,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    aug_gen: torch.Generator,
    config: TrainConfig,
) -> int:
    try:
        state = load_state(path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot resume from {path}: not a readable training state ({exc})") from exc
    if state.get("resume_key") != config.resume_key():
        raise ValueError(
            f"cannot resume from {path}: it was written with {state.get('resume_key')}, "
            f"this run has {config.resume_key()}; use a new --out or the same settings"
        )
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    aug_gen.set_state(state["aug_generator"])
    return int(state["step"])


def train(
    method: PretrainMethod,
    dataset: VisionDataset,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    method_name: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``method`` on ``dataset`` for ``config.steps`` steps; write ``encoder.safetensors`` (+ JSON),
    ``config.json`` and (every ``checkpoint_every`` steps and at the end) ``train_state.safetensors`` under
    ``out_dir``. With ``resume=True`` an existing ``train_state.safetensors`` there is continued exactly.
    Returns a summary."""
    if len(dataset) < config.batch_size:
        raise ValueError(
            f"dataset {dataset.name!r} has {len(dataset)} samples, fewer than one batch "
            f"of {config.batch_size}"
        )
    if resume and out_dir is None:
        raise ValueError("resume needs the out_dir of the run to continue")
    device = resolve_device(config.device)
    method.to(device).train()
    optimizer = build_optimizer(method.parameters(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.steps, config.warmup_steps)
    )
    aug_gen = make_generator(config.seed + 1, device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    first = 0
    if resume and (out / STATE_FILE).exists():
        first = _load_state(out / STATE_FILE, method, optimizer, scheduler, aug_gen, config)
        log.info("resuming %s at step %d/%d", out / STATE_FILE, first, config.steps)
    start, last_logs = time.perf_counter(), {}
    bar = progress(
        range(first, config.steps),
        desc=f"pretrain {method_name or type(method).__name__}",
        total=config.steps - first,
    )
    for step in bar:
        indices = _batch_indices(len(dataset), config.batch_size, config.seed, step)
        batch = {
            k: v.to(device, non_blocking=True)
            for k, v in next(dataset.batches(config.batch_size, indices=indices)).items()
        }
        with autocast(device, config.precision):
            loss, logs = method.training_loss(batch, aug_gen)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {float(loss.detach())} at step {step}; stopped before updating the weights "
                f"(the last checkpoint in {out} is intact). Lower the learning rate or use --precision fp32."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        last_logs = {"loss": float(loss.detach()), **logs}
        bar.set_postfix(loss=f"{last_logs['loss']:.3f}")
        if config.log_every and (step + 1) % config.log_every == 0:
            log.info(
                "step %d/%d loss %.4f lr %.4g",
                step + 1,
                config.steps,
                last_logs["loss"],
                scheduler.get_last_lr()[0],
            )
        if out is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save_state(out / STATE_FILE, step + 1, method, optimizer, scheduler, aug_gen, config)
    seconds = time.perf_counter() - start
    method.eval()
    summary: dict[str, Any] = {"steps": config.steps, "resumed_at": first, "seconds": seconds, **last_logs}
    if out is not None:
        _save_state(out / STATE_FILE, config.steps, method, optimizer, scheduler, aug_gen, config)
        resolved = {"method": method_name, "dataset": dataset.name, **asdict(config)}
        (out / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
        summary["checkpoint"] = str(
            save_checkpoint(
                method.encoder, out / "encoder.safetensors", method=method_name, epoch=None, config=resolved
            )
        )
    return summary
