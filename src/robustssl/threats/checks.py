"""Gradient-masking checks, in the spirit of AutoAttack's flags (Croce & Hein 2020, ``checks.py`` there):
cheap signs that a gradient attack's number would overestimate robustness.

- ``check_randomness``: outputs differ between two calls on the same input (a randomized defense: use EOT);
- ``check_zero_gradients``: the objective's input gradient is exactly zero for some samples (saturated
  softmax, non-differentiable preprocessing, ...: use BPDA or a score-based attack such as Square);
- ``check_softmax_output``: the model returns probabilities (rows non-negative and summing to 1) rather
  than logits, which flattens CE gradients (feed logits, or use a margin loss such as ``cw``/``dlr``).

``check_gradient_masking`` runs them all and returns a ``MaskingReport``; every positive check also raises a
``GradientMaskingWarning`` (``warnings.warn``) so it is visible in logs, and is listed in ``report.flags``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from robustssl.runtime.seeding import make_generator
from robustssl.threats.attacks.base import detach
from robustssl.threats.objectives import Objective

Forward = Callable[[torch.Tensor], Any]


class GradientMaskingWarning(UserWarning):
    """A check found a sign of gradient masking; gradient attacks may overestimate robustness."""


@dataclass
class MaskingReport:
    """Results of ``check_gradient_masking``. ``flags``: one message per positive check (empty = clean)."""

    randomized: bool = False
    max_output_change: float = 0.0
    zero_gradient_fraction: float | None = None
    softmax_output: bool = False
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.flags


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _tensors(v)]
    return []


def _flag(report: MaskingReport, message: str, warn: bool) -> None:
    report.flags.append(message)
    if warn:
        warnings.warn(message, GradientMaskingWarning, stacklevel=3)


def check_randomness(forward: Forward, x: torch.Tensor, repeats: int = 2) -> float:
    """Largest absolute output change over ``repeats`` extra calls on the same ``x`` (0 = deterministic)."""
    with torch.no_grad():
        first = _tensors(detach(forward(x)))
        change = 0.0
        for _ in range(repeats):
            again = _tensors(detach(forward(x)))
            for a, b in zip(first, again, strict=True):
                change = max(change, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
    return change


def check_zero_gradients(
    forward: Forward,
    x: torch.Tensor,
    target: Any,
    objective: Objective,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B,) bool: samples whose gradient of ``objective.loss`` w.r.t. the input is exactly zero.

    Objectives measured from the clean output (embedding distances) are minimal, with zero gradient, at
    the clean input itself; for them the gradient is taken at ``x`` plus uniform noise of 1/255 drawn from
    ``generator`` (seeded 0 when None).
    """
    x_at = x.detach().clone()
    with torch.no_grad():
        reference = detach(forward(x_at))
    if objective.needs_reference:
        generator = generator if generator is not None else make_generator(0, x.device)
        noise = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) * 2 - 1
        x_at = (x_at + noise / 255).clamp(0, 1)
    x_req = x_at.requires_grad_(True)
    with torch.enable_grad():
        out = forward(x_req)
        loss = objective.loss(out, target, reference)
        (grad,) = torch.autograd.grad(loss.sum(), x_req, allow_unused=True)
    if grad is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return grad.flatten(1).abs().amax(dim=1) == 0


def check_softmax_output(output: Any, tolerance: float = 1e-4) -> bool:
    """True when every class-score tensor in ``output`` (dim >= 2, more than one class along dim 1) is
    non-negative and sums to 1 along dim 1, i.e. looks like probabilities, not logits."""
    candidates = [t for t in _tensors(output) if t.dim() >= 2 and t.shape[1] > 1 and t.numel()]
    if not candidates:
        return False
    for t in candidates:
        t = t.detach().float()
        if float(t.min()) < 0 or float((t.sum(dim=1) - 1).abs().max()) > tolerance:
            return False
    return True


def check_gradient_masking(
    forward: Forward,
    x: torch.Tensor,
    target: Any = None,
    objective: Objective | None = None,
    *,
    repeats: int = 2,
    tolerance: float = 1e-5,
    generator: torch.Generator | None = None,
    warn: bool = True,
) -> MaskingReport:
    """Run every check on ``x`` (B, C, H, W) in [0, 1]; ``objective`` None skips the zero-gradient check.

    ``tolerance``: output changes up to this are float noise, not randomness. Calls ``forward`` about
    ``4 + repeats`` times (one with a backward pass); never changes the model's mode or weights.
    """
    report = MaskingReport()
    report.max_output_change = check_randomness(forward, x, repeats)
    report.randomized = report.max_output_change > tolerance
    if report.randomized:
        _flag(
            report,
            f"the model's outputs change between calls on the same input (by up to "
            f"{report.max_output_change:.3g}): it is randomized; evaluate with EOT "
            "(attack name 'eot') and report the mean over draws",
            warn,
        )
    with torch.no_grad():
        output = forward(x)
    report.softmax_output = check_softmax_output(output)
    if report.softmax_output:
        _flag(
            report,
            "the model's outputs are non-negative and sum to 1: it returns probabilities, which "
            "flattens cross-entropy gradients; attack the logits or use a margin objective (cw, dlr)",
            warn,
        )
    if objective is not None:
        zero = check_zero_gradients(forward, x, target, objective, generator)
        report.zero_gradient_fraction = float(zero.float().mean()) if zero.numel() else 0.0
        if bool(zero.any()):
            _flag(
                report,
                f"the input gradient of {objective.name!r} is exactly zero for {int(zero.sum())} of "
                f"{zero.numel()} samples: gradients may be masked; try BPDA or a score-based attack "
                "(square)",
                warn,
            )
    return report
