"""Training-time adversarial examples for pretraining methods.

``maximize(loss_fn, x, threat, steps, step_size, generator)`` is plain PGD on an arbitrary scalar loss of the
whole batch (a contrastive loss couples the samples, so it is not a per-sample ``Objective``): random start in
the ball, ``steps`` ascent steps of ``step_size`` along ``threat.ascent_direction``, projection onto the ball
and [0, 1] after each. Gradients are taken w.r.t. the input only (``torch.autograd.grad``), so parameter
``.grad`` fields are untouched; the caller chooses the model's mode and batch-norm branch. The defaults are
the ACL / AdvCL / RoCL setting for CIFAR (L-inf, eps 8/255, 5 steps of 2/255; Jiang et al. 2020,
Fan et al. 2021).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from robustssl.threats.threat_model import ThreatModel


def maximize(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    threat: ThreatModel | None = None,
    steps: int = 5,
    step_size: float = 2 / 255,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``x_adv`` in the ``threat`` ball around ``x`` (detached) that (approximately) maximizes ``loss_fn``."""
    threat = threat or ThreatModel("linf", 8 / 255)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    x = x.detach()
    x_adv = threat.random_start(x, generator) if random_start else x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(x_adv)
            if loss.dim() != 0:
                loss = loss.sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = threat.project(x_adv.detach() + step_size * threat.ascent_direction(grad), x)
    return x_adv.detach()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block (batch-norm uses its running statistics and updates none, as
    ACL and DeACL attack), its previous mode (per submodule) restored on exit."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
