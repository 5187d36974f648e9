"""De³, denoise-then-predict (You et al., NeurIPS 2023, "Beyond pretrained features: noisy image modeling
provides adversarial defense"), in front of any task model.

``denoise_then_classify(denoiser, task_model, sigma=70/255)`` returns a :class:`DenoisedModel`:
``x -> task_model(clamp(denoiser(x + N(0, σ²)), 0, 1))``. The denoiser is a pretrained ``nim`` model
(``robustssl.pretrain.masked_image``; a path to a saved one is loaded). The wrapper keeps the task model's
``task`` (classification logits, segmentation logits, depth), so every attack, objective and metric treats it
like the bare model.

The MAE reconstruction baseline of the paper is the same wrapper around an ``mae`` model with ``sigma=0`` and
test-time masking (``mask_ratio=0.75`` by default in :func:`mae_reconstruction`): the visible patches are
encoded, the decoder predicts every patch, and the prediction (visible patches included) replaces the image.

Randomness: ``forward(x, generator=None)``. Without a generator the wrapper draws from its own generator,
seeded with ``seed`` and advanced by every call, so repeated calls give different draws (EOT averages over
genuinely different draws) and a run is reproducible from ``seed`` (``reseed()`` starts it over). The
engine's EOT passes its own generator (``generator=``), which makes a whole attack reproducible from the
attack's seed.

:func:`finetune_on_denoised` trains the task model (its head, or everything) on denoised images with a fresh
σ ~ U(0, 30/255) per image, as the paper fine-tunes its classifiers.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustssl.data.base import IGNORE_INDEX, VisionDataset
from robustssl.finetune.heads import silog_loss
from robustssl.heads.task_model import TaskModel
from robustssl.pretrain.masked_image import MaskedImageModel, load_denoiser
from robustssl.runtime.device import resolve_device
from robustssl.runtime.progress import progress
from robustssl.runtime.seeding import make_generator

#: the paper's fine-tuning noise, sigma ~ U(0, 30) in 0-255 units (You et al. 2023, Sec. 4.1)
FINETUNE_SIGMA = (0.0, 30 / 255)
TARGET_KEYS = {"classification": "label", "segmentation": "mask", "depth": "depth"}


def _check_sigma(sigma: Any, what: str = "sigma") -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma):
        raise ValueError(f"{what} must be a finite number >= 0 (image units, e.g. 70/255 = {70 / 255:.4f}), "
                         f"got {sigma!r}")
    if sigma < 0:
        raise ValueError(f"{what} must be >= 0 (a noise standard deviation in image units), got {sigma}")
    return float(sigma)


def _as_denoiser(denoiser: MaskedImageModel | str | os.PathLike) -> MaskedImageModel:
    if isinstance(denoiser, (str, os.PathLike)):
        return load_denoiser(denoiser)
    if not isinstance(denoiser, MaskedImageModel):
        raise TypeError(f"denoiser must be a pretrained 'nim' or 'mae' model "
                        f"(robustssl.pretrain.masked_image) or the path of a saved one, got "
                        f"{type(denoiser).__name__}")
    return denoiser


def check_compatible(denoiser: MaskedImageModel, task_model: nn.Module) -> None:
    """Raise ``ValueError`` when the task model's encoder declares input channels or an image size
    (``in_channels``, ``img_size``) that differ from what the denoiser reconstructs."""
    encoder = getattr(task_model, "encoder", None)
    channels = getattr(encoder, "in_channels", None)
    if channels is not None and int(channels) != denoiser.in_channels:
        raise ValueError(f"the denoiser outputs {denoiser.in_channels}-channel images but the task model's "
                         f"encoder takes {channels} channels")
    size = getattr(encoder, "img_size", None)
    if size is not None and int(size) != denoiser.img_size:
        raise ValueError(f"the denoiser reconstructs {denoiser.img_size}x{denoiser.img_size} images but the "
                         f"task model's encoder ({getattr(encoder, 'name', type(encoder).__name__)}) expects "
                         f"{size}x{size}; use a denoiser pretrained at the task model's image size")


class DenoisedModel(nn.Module):
    """``task_model(purify(x))`` with ``purify`` = noise σ, random masking ``mask_ratio``, reconstruction by
    ``denoiser``, clamp to [0, 1]. ``x``: ``(B, C, img_size, img_size)`` in [0, 1]; the output is the task
    model's. Differentiable end to end (white-box attacks go through the denoiser)."""

    def __init__(self, denoiser: MaskedImageModel | str | os.PathLike, task_model: nn.Module, *, sigma: float,
                 mask_ratio: float = 0.0, seed: int = 0, straight_through: bool = False):
        super().__init__()
        denoiser = _as_denoiser(denoiser)
        if not isinstance(task_model, nn.Module):
            raise TypeError(f"task_model must be an nn.Module (a TaskModel), got {type(task_model).__name__}")
        self.sigma = _check_sigma(sigma)
        if (isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float))
                or not 0 <= mask_ratio < 1):
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        check_compatible(denoiser, task_model)
        self.denoiser, self.model = denoiser, task_model
        self.mask_ratio, self.seed = float(mask_ratio), seed
        self.straight_through = bool(straight_through)
        self.task = getattr(task_model, "task", None)
        self._generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        return (f"sigma={self.sigma:.4g}, mask_ratio={self.mask_ratio}, seed={self.seed}, task={self.task!r}"
                + (", straight_through=True" if self.straight_through else ""))

    def bpda(self) -> DenoisedModel:
        """The same pipeline (shared modules, same outputs) with a straight-through clamp: gradients pass
        where the reconstruction saturates (BPDA). A surrogate for attacks, never for evaluation."""
        return DenoisedModel(self.denoiser, self.model, sigma=self.sigma, mask_ratio=self.mask_ratio,
                             seed=self.seed, straight_through=True)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the wrapper's own random stream (from ``seed``, default the constructor's)."""
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ValueError(f"seed must be a non-negative int, got {seed!r}")
            self.seed = seed
        self._generator = None

    @contextlib.contextmanager
    def drawing_from(self, seed: int) -> Iterator[None]:
        """Within the block, draw from a fresh stream seeded ``seed`` (every block with the same seed sees the
        same draws: common random numbers across evaluations); the wrapper's own stream resumes after it."""
        saved = self.seed, self._generator
        self.reseed(seed)
        try:
            yield
        finally:
            self.seed, self._generator = saved

    def _own_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = make_generator(self.seed, device)
        return self._generator

    def purify(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoised image ``(B, C, H, W)`` in [0, 1] the task model sees."""
        generator = generator if generator is not None else self._own_generator(x.device)
        return self.denoiser.purify(x, sigma=self.sigma, mask_ratio=self.mask_ratio, generator=generator,
                                    straight_through=self.straight_through)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        return self.model(self.purify(x, generator))


def denoise_then_classify(denoiser: MaskedImageModel | str | os.PathLike, task_model: nn.Module, *,
                          sigma: float, mask_ratio: float = 0.0, seed: int = 0) -> DenoisedModel:
    """De³: ``task_model`` behind noise σ (image units; the paper tests ~70/255 on ImageNet) and the
    pretrained ``nim`` ``denoiser``. Any task (classification, segmentation, depth)."""
    return DenoisedModel(denoiser, task_model, sigma=sigma, mask_ratio=mask_ratio, seed=seed)


def mae_reconstruction(denoiser: MaskedImageModel | str | os.PathLike, task_model: nn.Module, *,
                       mask_ratio: float = 0.75, seed: int = 0) -> DenoisedModel:
    """The MAE baseline: no noise, ``mask_ratio`` of the patches dropped at test time and reconstructed."""
    return DenoisedModel(denoiser, task_model, sigma=0.0, mask_ratio=mask_ratio, seed=seed)


# --- fine-tuning on denoised images -------------------------------------------------------------------------
def _task_loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    if task == "classification":
        return F.cross_entropy(output, target.long())
    if task == "segmentation":
        if bool((target == IGNORE_INDEX).all()):
            return None
        return F.cross_entropy(output, target.long(), ignore_index=IGNORE_INDEX)
    valid = torch.isfinite(target) & (target > 0)
    if not bool(valid.any()):
        return None
    return silog_loss(output[:, 0], target, valid)


def _forward(model: TaskModel, x: torch.Tensor, train_encoder: bool) -> torch.Tensor:
    """The task model's output, with the encoder's features computed without a graph when it is frozen."""
    if train_encoder:
        return model(x)
    with torch.no_grad():
        features = model.encoder.embed(x) if model.task == "classification" else model.encoder.dense(x)
    if model.task == "classification":
        return model.head(features)
    return model.head(features, size=tuple(x.shape[-2:]))


def finetune_on_denoised(model: TaskModel, denoiser: MaskedImageModel | str | os.PathLike | None,
                         dataset: VisionDataset, *, sigma: Sequence[float] = FINETUNE_SIGMA,
                         mask_ratio: float = 0.0, epochs: int = 5, batch_size: int = 64, lr: float = 1e-3,
                         weight_decay: float = 0.0, train_encoder: bool = False,
                         indices: Sequence[int] | None = None, generator: torch.Generator | None = None,
                         device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train ``model`` (in place) on ``denoiser``-reconstructed images of ``dataset`` (``denoiser=None``:
    on the clean images, the same recipe for the undefended baseline).

    Every image of every batch gets a fresh σ ~ U(``sigma[0]``, ``sigma[1]``) (image units; default the
    paper's U(0, 30/255)) and noise, is reconstructed without gradients, clamped to [0, 1], and the task loss
    (cross-entropy; segmentation cross-entropy ignoring 255; depth SILog on valid pixels) trains the head
    (``train_encoder=True``: the whole model) with AdamW. Shuffling and noise come from ``generator``
    (default seed 0). Returns ``{"history": [mean loss per epoch], "steps", "sigma", "n"}``; ``model`` ends in
    eval mode.
    """
    denoiser = _as_denoiser(denoiser) if denoiser is not None else None
    if not isinstance(model, TaskModel) or model.task not in TARGET_KEYS:
        task = f" ({model.task!r})" if hasattr(model, "task") else ""
        raise ValueError(f"finetune_on_denoised trains a TaskModel for one of {', '.join(TARGET_KEYS)}, got "
                         f"{type(model).__name__}{task}")
    if len(sigma) != 2:
        raise ValueError(f"sigma is a range (low, high), got {tuple(sigma)!r}")
    low, high = (_check_sigma(s, "sigma range") for s in sigma)
    if low > high:
        raise ValueError(f"sigma range needs low <= high, got ({low}, {high})")
    if epochs < 1 or batch_size < 2 or not lr > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 2 and lr > 0; got epochs={epochs}, "
                         f"batch_size={batch_size}, lr={lr}")
    key = TARGET_KEYS[model.task]
    dataset.require(key, purpose=f"fine-tuning a {model.task} model")
    device = resolve_device(device)
    if denoiser is not None:
        check_compatible(denoiser, model)
        denoiser.to(device).eval()
    generator = generator if generator is not None else make_generator(0)
    noise_gen = make_generator(int(torch.randint(0, 2**62, (1,), generator=generator)), device)
    model.to(device)
    frozen = {p: p.requires_grad for p in model.encoder.parameters()} if not train_encoder else {}
    for p in frozen:
        p.requires_grad_(False)
    trained = model.parameters() if train_encoder else model.head.parameters()
    params = [p for p in trained if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history, steps = [], 0
    n = len(indices) if indices is not None else len(dataset)
    try:
        model.train()
        if not train_encoder:
            model.encoder.eval()  # frozen: batch-norm statistics must not move either
        images = "denoised" if denoiser is not None else "clean"
        for _ in progress(range(epochs), desc=f"fine-tune {model.task} on {images} images"):
            total, count = 0.0, 0
            for batch in dataset.batches(batch_size, shuffle=True, generator=generator, indices=indices,
                                         drop_last=n >= 2 * batch_size):
                x, target = batch["image"].to(device), batch[key].to(device)
                if x.shape[0] < 2:
                    continue  # batch norm in the heads cannot train on one sample
                if denoiser is not None:
                    with torch.no_grad():
                        s = low + (high - low) * torch.rand(x.shape[0], generator=noise_gen, device=device)
                        x = denoiser.purify(x, sigma=s, mask_ratio=mask_ratio, generator=noise_gen)
                loss = _task_loss(model.task, _forward(model, x, train_encoder), target)
                if loss is None:
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count, steps = total + float(loss.detach()), count + 1, steps + 1
            history.append(total / max(count, 1))
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        model.eval()
    return {"history": history, "steps": steps, "sigma": (low, high), "n": n}
