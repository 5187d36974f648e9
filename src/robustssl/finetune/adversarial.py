"""Adversarial fine-tuning pieces: training losses, training-time examples, and evaluation under attack.

- :func:`natural_loss`: the task's supervised loss (CE; per-pixel CE with ignore index 255; SILog or L1 on
  valid depth pixels);
- :class:`Consistency` / :func:`consistency_loss`: TRADES' robust term ``D(f(x), f(x'))`` per sample
  (Zhang et al., ICML 2019): ``KL(softmax f(x) || softmax f(x'))`` for logits (averaged over pixels for
  segmentation); for depth, which has no distribution to compare, the ``depth-silog`` objective of the
  adversarial prediction against the clean prediction;
- :func:`trades_loss`: ``natural(f(x), y) + beta * mean_b D(f(x), f(x'))``;
- :func:`craft_training_examples`: PGD (``robustssl.threats`` engine, textbook last iterate, no early stop)
  on the task's objective (PGD-AT, Madry et al. 2018: ``ce``/``seg-ce``/``depth-silog``) or on
  :class:`Consistency` (TRADES' inner maximization), with the model in **eval** mode (batch-norm running
  statistics, as TRADES' reference code does; the crafting passes then leave them untouched). Both start
  uniformly in the ball (TRADES' code starts at ``x + 0.001 * N(0, 1)``; any start off ``x`` works, the KL
  has zero gradient at ``x`` itself);
- :func:`evaluate_under_attack`: clean and robust task metrics of a ``TaskModel`` on a dataset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from robustssl.data.base import VisionDataset
from robustssl.finetune.heads import _dense_loss, _make_meters
from robustssl.heads.task_model import TaskModel
from robustssl.runtime.device import resolve_device
from robustssl.runtime.precision import autocast
from robustssl.runtime.seeding import make_generator
from robustssl.threats.api import attack as run_attack
from robustssl.threats.attacks.pgd import PGD
from robustssl.threats.objectives import DepthSILog, Objective, objective_for_task
from robustssl.threats.threat_model import ThreatModel

TASKS = ("classification", "segmentation", "depth")
TRAINING_LOSSES = ("pgd-at", "trades")
TARGET_KEYS = {"classification": "label", "segmentation": "mask", "depth": "depth"}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")


# --- losses -------------------------------------------------------------------------------------------------
def natural_loss(output: torch.Tensor, target: torch.Tensor, task: str,
                 depth_loss: str = "silog") -> torch.Tensor | None:
    """The supervised loss of a batch (scalar, fp32), or None when the batch has no labelled pixel.

    classification: mean CE over ``(B, K)`` logits; segmentation: CE over ``(B, K, H, W)`` logits, 255
    ignored; depth: SILog (or L1) over valid pixels (``> 0``) of ``(B, 1, H, W)`` predictions.
    """
    _check_task(task)
    if task == "classification":
        return F.cross_entropy(output.float(), target.long())
    return _dense_loss(task, depth_loss, output.float(), target)


def consistency_loss(clean: torch.Tensor, adversarial: torch.Tensor, task: str) -> torch.Tensor:
    """(B,) TRADES' robust term between the clean output and the adversarial one (see the module doc).

    Gradients flow through both arguments (as in TRADES' outer minimization).
    """
    _check_task(task)
    if task == "depth":
        return DepthSILog().loss(adversarial.float(), clean.float()[:, 0])
    log_p_clean = F.log_softmax(clean.float(), dim=1)
    log_p_adv = F.log_softmax(adversarial.float(), dim=1)
    kl = (log_p_clean.exp() * (log_p_clean - log_p_adv)).sum(dim=1)  # (B,) or (B, H, W)
    return kl.flatten(1).mean(dim=1) if kl.dim() > 1 else kl


class Consistency(Objective):
    """TRADES' inner objective: maximize :func:`consistency_loss` (reference = the clean output)."""

    name = "trades-consistency"
    needs_reference = True
    has_success = False

    def __init__(self, task: str):
        _check_task(task)
        self.task = task

    def loss(self, output: torch.Tensor, target: Any, reference: torch.Tensor | None = None,
             progress: float = 0.0) -> torch.Tensor:
        if reference is None:
            raise ValueError("the TRADES consistency objective needs the clean output as reference")
        return consistency_loss(reference.detach(), output, self.task)

    def __repr__(self) -> str:
        return f"Consistency(task={self.task!r})"


def trades_loss(clean: torch.Tensor, adversarial: torch.Tensor, target: torch.Tensor, task: str,
                beta: float, depth_loss: str = "silog") -> torch.Tensor:
    """TRADES (Zhang et al. 2019, eq. 5): ``natural(clean, target) + beta * mean_b D(clean, adversarial)``.

    For classification: ``CE(f(x), y) + beta * mean_b KL(softmax f(x_b) || softmax f(x'_b))``, the
    ``criterion_kl(log_softmax(f(x')), softmax(f(x))) / B`` of the reference code. A batch without labelled
    pixels contributes only its robust term.
    """
    natural = natural_loss(clean, target, task, depth_loss)
    robust = consistency_loss(clean, adversarial, task).mean()
    return beta * robust if natural is None else natural + beta * robust


# --- training-time examples ------------------------------------------------------------------------------
def _forward(model: torch.nn.Module, device: torch.device, precision: str):
    if precision == "fp32":
        return model

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(x)

    return forward


def craft_training_examples(model: TaskModel, x: torch.Tensor, target: torch.Tensor, *, loss: str,
                            threat: ThreatModel, steps: int, step_size: float,
                            generator: torch.Generator, precision: str = "fp32"
                            ) -> tuple[torch.Tensor, dict[str, int]]:
    """Adversarial versions of a training batch ``x`` (B, 3, H, W) in [0, 1] for ``model``.

    ``loss="pgd-at"`` ascends the task's objective (``ce``, ``seg-ce``, ``depth-silog``) on ``target``;
    ``"trades"`` ascends :class:`Consistency` to the clean output. PGD from a uniform random start in the
    ball, ``steps`` signed (L-inf) or normalized (L2) steps of ``step_size``, projected onto the ball and
    [0, 1]; the last iterate is returned (no early stop, no best-point tracking). The model runs in eval
    mode during crafting and its previous mode is restored. Returns ``(x_adv, {"fwd": .., "bwd": ..})``.
    """
    if loss not in TRAINING_LOSSES:
        raise ValueError(f"unknown adversarial training loss {loss!r}; "
                         f"accepted: {', '.join(TRAINING_LOSSES)}")
    objective = objective_for_task(model.task) if loss == "pgd-at" else Consistency(model.task)
    attacker = PGD(steps=steps, step_size=step_size, early_stop=False, keep_best=False)
    was_training = model.training
    model.eval()
    try:
        x_adv = attacker.attack(_forward(model, x.device, precision), x, target, objective, threat, generator)
    finally:
        model.train(was_training)
    return x_adv.detach(), dict(attacker.counts)


# --- evaluation under attack -----------------------------------------------------------------------------
def evaluate_under_attack(model: TaskModel, dataset: VisionDataset, *, attack: str = "pgd",
                          eps: float = 8 / 255, norm: str = "linf",
                          attack_kwargs: dict[str, Any] | None = None, objective: str | None = None,
                          batch_size: int = 128,
                          device: str | torch.device = "cpu", precision: str = "fp32",
                          indices: Sequence[int] | None = None,
                          generator: torch.Generator | None = None) -> dict[str, Any]:
    """Clean and robust metrics of ``model`` on ``dataset`` (or its ``indices``) under one attack.

    Each batch is attacked with ``robustssl.threats.attack(model, x, target, attack, eps=eps, norm=norm,
    objective=objective, **attack_kwargs)`` (objective None = the task's default); the metrics are those
    of :func:`robustssl.finetune.evaluate` (``top1``, ``miou``, ``rmse``, ...). Returns ``{"clean": {...},
    "robust": {...}, "n", "attack", "eps", "norm", "fwd", "bwd", "seconds"}``. ``generator`` None: seed 0
    on ``device``. The model's mode is restored afterwards.
    """
    task = model.task
    if task not in TASKS:
        raise ValueError(f"evaluate_under_attack needs a task model ({', '.join(TASKS)}), got task {task!r}")
    key = TARGET_KEYS[task]
    dataset.require(key, purpose=f"evaluating a {task} model under attack")
    ThreatModel(norm, eps)  # a bad norm or radius fails before any work
    device = resolve_device(device)
    generator = generator if generator is not None else make_generator(0, device)
    was_training = model.training
    model.to(device).eval()
    clean_meters: list[Any] = []
    robust_meters: list[Any] = []
    n, fwd, bwd = 0, 0, 0
    start = time.perf_counter()
    try:
        for batch in dataset.batches(batch_size, indices=indices):
            x, target = batch["image"].to(device), batch[key].to(device)
            if task == "classification":
                target = target.long()
            result = run_attack(model, x, target, attack, eps=eps, norm=norm, objective=objective,
                                generator=generator, precision=precision, **(attack_kwargs or {}))
            with torch.no_grad(), autocast(device, precision):
                clean_out = model(x).float().cpu()
                robust_out = model(result.x_adv).float().cpu()
            if not clean_meters:
                clean_meters = _make_meters(task, clean_out, dataset)
                robust_meters = _make_meters(task, robust_out, dataset)
            for meters, out in ((clean_meters, clean_out), (robust_meters, robust_out)):
                meters[0].update(out, batch[key])
                if task == "classification":
                    meters[1].update(out.softmax(dim=1), batch[key])
            n += x.shape[0]
            fwd, bwd = fwd + result.fwd + 2 * x.shape[0], bwd + result.bwd
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no samples to evaluate")
    out: dict[str, Any] = {"n": n, "attack": attack, "eps": float(eps), "norm": norm, "fwd": fwd, "bwd": bwd,
                           "seconds": time.perf_counter() - start}
    for name, meters in (("clean", clean_meters), ("robust", robust_meters)):
        metrics: dict[str, float] = {}
        for meter in meters:
            metrics.update(meter.compute())
        metrics["n"] = n
        out[name] = metrics
    return out


__all__ = ["TASKS", "TRAINING_LOSSES", "Consistency", "consistency_loss",
           "craft_training_examples", "evaluate_under_attack", "natural_loss", "trades_loss"]
