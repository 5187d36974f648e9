"""Shared machinery of the pretext-task methods ``rotation``, ``jigsaw``, ``selfie`` and ``pretext-ensemble``.

Chen et al., CVPR 2020 ("Adversarial Robustness: From Self-Supervised Pre-Training to Fine-Tuning") train an
encoder on a self-supervised classification task, standard or adversarial: the adversarial version minimizes
``½ (CE(x) + CE(x_adv))`` where ``x_adv`` is PGD-10 on that same CE (L-inf, eps 8/255, step 2/255).

- :class:`PretextTask`: one task on top of a shared encoder — ``draw`` its random choices for a batch (labels,
  permutations, masks; from the caller's generator), then ``logits`` for an image batch under those choices.
  The choices are drawn once per step, so the clean and adversarial passes pose the same questions.
- :class:`PretextMethod`: a ``PretrainMethod`` training one task, standard or adversarial.
- :func:`cut_tiles` / :func:`assemble_tiles`: an image as a grid of tiles (jigsaw, selfie) and back.
- :func:`gradient_diversity`: the ensemble's regularizer, ``log det`` of the Gram matrix of the tasks'
  normalized input gradients.

Adversarial inputs are always crafted on the *whole* image (before rotation or tiling), so every task is
attacked in the same [0, 1] pixel space and the L-inf ball is the one the evaluation uses (rotating or
tiling permutes pixels, which maps the L-inf ball onto itself).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustssl.data.views import SimCLRViews
from robustssl.encoders.base import Encoder
from robustssl.pretrain.adversarial import maximize
from robustssl.pretrain.method import PretrainMethod
from robustssl.pretrain.weak_views import PadCropFlip
from robustssl.threats.threat_model import ThreatModel

#: PGD used by Chen et al. (CVPR 2020) while pretraining: L-inf, eps 8/255, 10 steps of 2/255
PAPER_EPS, PAPER_STEPS, PAPER_STEP_SIZE = 8 / 255, 10, 2 / 255
#: smallest tile / patch side (pixels) handed to the encoder
MIN_TILE = 4
#: augmentations applied to the batch before the pretext task: none; ``padcrop`` = Chen et al.'s CIFAR
#: augmentation (4-px zero padding, a random crop of the original size, horizontal flip); SimCLR view
#: presets by name (``tiny``, ``cifar``)
AUGMENTATIONS = ("none", "padcrop", "tiny", "cifar")
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def resolve_augment(method: str, augment: str) -> Augment | None:
    """The batch augmentation named ``augment`` (see ``AUGMENTATIONS``), None for ``"none"``."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"{method}: unknown augment {augment!r}; accepted: {', '.join(AUGMENTATIONS)}")
    if augment == "none":
        return None
    if augment == "padcrop":
        crop = PadCropFlip(padding=4)
        return lambda x, generator: crop(x, generator)
    views = SimCLRViews.preset(augment)
    return lambda x, generator: views(x, generator=generator)


def adversarial_threat(method: str, eps: float, steps: int, step_size: float) -> ThreatModel:
    """Check a method's PGD options and return its L-inf threat model (clear errors naming ``method``)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(
            f"{method}: eps must be a finite number >= 0 (L-inf radius in [0, 1] pixel units, e.g. "
            f"8/255 = 0.0314), got {eps!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{method}: steps must be an int >= 1 (PGD iterations), got {steps!r}")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"{method}: step_size must be > 0, got {step_size!r}")
    return ThreatModel("linf", float(eps))


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Batch-norm layers inside ``module`` keep their running statistics through the block.

    The layers still normalize with the batch's statistics in train mode (so an attack sees the network as the
    training step will), but the ``steps`` extra forward passes of PGD do not drag the running averages —
    which the frozen encoder uses at evaluation — towards adversarial statistics.
    """
    layers = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(layers, saved, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def craft(
    module: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """PGD (``pretrain.adversarial.maximize``) on ``loss_fn`` around ``x``, ``module``'s batch-norm running
    statistics left untouched. Returns ``x_adv`` (detached) in the ball and in [0, 1]."""
    with frozen_bn_stats(module):
        return maximize(loss_fn, x, threat=threat, steps=steps, step_size=step_size, generator=generator)


# --- tiles --------------------------------------------------------------------------------------------------
def tile_size(height: int, width: int, grid: int, method: str) -> tuple[int, int]:
    """Tile side ``(H // grid, W // grid)``; a clear error when a tile would be under ``MIN_TILE`` pixels."""
    th, tw = height // grid, width // grid
    if min(th, tw) < MIN_TILE:
        raise ValueError(
            f"{method}: images of {height}x{width} are too small for a {grid}x{grid} grid (tiles of "
            f"{th}x{tw} px, at least {MIN_TILE}x{MIN_TILE} needed); use a smaller grid or images of "
            f"at least {grid * MIN_TILE}x{grid * MIN_TILE}"
        )
    return th, tw


def cut_tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, grid², C, H // grid, W // grid)`` tiles in row-major order.

    When ``H`` or ``W`` is not a multiple of ``grid`` the centred ``grid·(H // grid)`` region is cut (the
    remainder, fewer than ``grid`` rows/columns, is dropped).
    """
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    top, left = (h - grid * th) // 2, (w - grid * tw) // 2
    region = x[:, :, top : top + grid * th, left : left + grid * tw]
    tiles = region.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(b, grid * grid, c, th, tw)


def assemble_tiles(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`cut_tiles`: ``(B, grid², C, th, tw)`` -> ``(B, C, grid·th, grid·tw)``."""
    b, n, c, th, tw = tiles.shape
    if n != grid * grid:
        raise ValueError(f"assemble_tiles: {n} tiles do not fill a {grid}x{grid} grid")
    return (
        tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * th, grid * tw)
    )


def embed_tiles(encoder: Encoder, tiles: torch.Tensor, method: str) -> torch.Tensor:
    """Embed every tile with the shared encoder: ``(B, n, C, th, tw)`` -> ``(B, n, embed_dim)``."""
    b, n = tiles.shape[:2]
    try:
        z = encoder.embed(tiles.reshape(b * n, *tiles.shape[2:]))
    except RuntimeError as exc:
        raise ValueError(
            f"{method}: encoder {encoder.name!r} cannot embed {tiles.shape[-2]}x{tiles.shape[-1]} "
            f"tiles ({exc}); tile-based tasks need an encoder that accepts small inputs (a CNN with "
            "global pooling), or larger images / a smaller grid"
        ) from exc
    return z.reshape(b, n, -1)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """``Linear`` when ``hidden_dim`` is 0, else ``Linear-BN-ReLU-Linear``."""
    if hidden_dim == 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim)
    )


def embed_dim_of(encoder: Any, method: str) -> int:
    """``encoder.embed_dim``, after checking that ``encoder`` is a robustssl ``Encoder`` (a clear error if
    not)."""
    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"{method}: pretraining needs a robustssl Encoder (embed/dense), got {type(encoder).__name__}"
        )
    return int(encoder.embed_dim)


def check_int(method: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or a ValueError naming ``method`` and ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{method}: {name} must be an int {span}, got {value!r}")
    return value


# --- tasks and methods --------------------------------------------------------------------------------------
class PretextTask(nn.Module):
    """One self-supervised classification task on top of a shared encoder (the task owns only its heads).

    - ``draw(x, generator) -> dict``: the task's random choices for the batch ``x`` (B, 3, H, W) in [0, 1].
    - ``logits(encoder, x, draw) -> (logits (N, K), targets (N,))``: the task's prediction problem on ``x``
      (which may be an adversarial version of the batch the choices were drawn for).
    """

    name = "pretext"

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error when the task cannot be posed on images shaped like ``x``."""

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def logits(
        self, encoder: Encoder, x: torch.Tensor, draw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(
        self, encoder: Encoder, x: torch.Tensor, draw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean cross-entropy, accuracy)`` of the task on ``x``; both scalars, the accuracy detached."""
        logits, targets = self.logits(encoder, x, draw)
        ce = F.cross_entropy(logits.float(), targets)
        return ce, (logits.detach().argmax(1) == targets).float().mean()


def draw_on(
    generator: torch.Generator, device: torch.device, fn: Callable[..., torch.Tensor], *args: Any, **kw: Any
) -> torch.Tensor:
    """Call a random factory (``torch.rand``, ``torch.randint``, ...) on the generator's device, then move the
    result to ``device`` (a CPU generator cannot fill a CUDA tensor)."""
    return fn(*args, generator=generator, device=generator.device, **kw).to(device)


class PretextMethod(PretrainMethod):
    """Trains ``encoder`` on one :class:`PretextTask` posed on the ``augment``-ed batch; with ``adversarial``
    the loss is ``½ (CE(x) + CE(x_adv))``, ``x_adv`` PGD on the task's CE crafted on the whole image."""

    def __init__(
        self,
        encoder: Encoder,
        task: PretextTask,
        *,
        augment: str,
        adversarial: bool,
        eps: float,
        steps: int,
        step_size: float,
    ):
        super().__init__(encoder)
        if not isinstance(adversarial, bool):
            raise ValueError(f"{task.name}: adversarial must be true or false, got {adversarial!r}")
        self.task = task
        self.augment = resolve_augment(task.name, augment)
        self.adversarial = adversarial
        self.threat = adversarial_threat(task.name, eps, steps, step_size)
        self.steps, self.step_size = steps, float(step_size)

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        self.task.check_input(x)
        if self.augment is not None:
            x = self.augment(x, generator)
        draw = self.task.draw(x, generator)
        if self.adversarial:
            # crafted before the clean forward: restoring the batch-norm statistics after the attack must not
            # touch buffers that a graph still to be backpropagated has saved
            x_adv = craft(
                self,
                lambda z: self.task.loss(self.encoder, z, draw)[0],
                x,
                self.threat,
                self.steps,
                self.step_size,
                generator,
            )
        clean, clean_acc = self.task.loss(self.encoder, x, draw)
        name = self.task.name
        logs = {f"{name}_ce": float(clean.detach()), f"{name}_acc": float(clean_acc)}
        if not self.adversarial:
            return clean, logs
        adv, adv_acc = self.task.loss(self.encoder, x_adv, draw)
        logs.update({f"{name}_adv_ce": float(adv.detach()), f"{name}_adv_acc": float(adv_acc)})
        return 0.5 * (clean + adv), logs


# --- ensemble regularizer -----------------------------------------------------------------------------------
def gradient_diversity(grads: Sequence[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Per-sample ``log det(G + eps·I)`` where ``G = ĝᵀĝ`` is the K x K Gram matrix of the K tasks' input
    gradients, each L2-normalized per sample (Chen et al., CVPR 2020, Sec. 3.3).

    ``grads``: K tensors (B, ...) of equal shape. Returns (B,) in float32. The value is at most
    ``K·log(1 + eps)`` (orthogonal gradients, ``G = I``) and falls towards ``(K - 1)·log(eps)`` as the
    gradients become parallel, so rewarding it pushes the tasks' adversarial directions apart.
    """
    if len(grads) < 2:
        raise ValueError(f"gradient_diversity needs at least 2 gradients, got {len(grads)}")
    shapes = {tuple(g.shape) for g in grads}
    if len(shapes) != 1:
        raise ValueError(f"gradient_diversity: gradients must share one shape, got {sorted(shapes)}")
    if not eps > 0:
        raise ValueError(f"gradient_diversity: eps must be > 0, got {eps!r}")
    g = torch.stack([gr.float().flatten(1) for gr in grads], dim=1)  # (B, K, D)
    g = F.normalize(g, dim=2, eps=1e-12)
    gram = g @ g.transpose(1, 2)
    eye = torch.eye(len(grads), device=g.device, dtype=g.dtype)
    return torch.logdet(gram + eps * eye)
