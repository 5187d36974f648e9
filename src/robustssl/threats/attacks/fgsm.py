"""FGSM (Goodfellow et al., ICLR 2015): one steepest-ascent step of size ``eps`` in the threat's norm.

``FGSM(step_size=None, random_start=False, early_stop=True)``. With ``random_start`` the step starts from
a uniform point of the ball and ``step_size`` defaults to ``1.25 · eps`` (Wong et al., ICLR 2020, "Fast is
better than free"); without it the step is ``eps`` from the clean point. Objectives that are flat at the
clean input (embedding distances) need ``random_start=True``: their gradient there is zero.
Samples already successful at the clean input are returned unchanged (``early_stop``).
"""

from __future__ import annotations

from typing import Any

import torch

from robustssl.threats.attacks.base import ATTACKS, Attack, Forward, detach
from robustssl.threats.attacks.pgd import check_step_size
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel


@ATTACKS.register("fgsm", kind="gradient")
class FGSM(Attack):
    name = "fgsm"
    norms = ("linf", "l2", "l1")

    def __init__(self, step_size: float | None = None, random_start: bool = False, early_stop: bool = True):
        super().__init__()
        self.step_size = check_step_size(step_size)
        self.random_start, self.early_stop = bool(random_start), bool(early_stop)

    def __repr__(self) -> str:
        return f"FGSM(step_size={self.step_size}, random_start={self.random_start})"

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]. Returns ``x_adv`` of the same shape."""
        generator = self._new_call(threat, x, generator)
        if self.random_start:
            clean = self._output(forward, x)
            start = threat.random_start(x, generator)
            _, grad, _ = self._loss_and_grad(forward, start, target, clean, objective)
            alpha = self.step_size if self.step_size is not None else 1.25 * threat.eps
        else:
            start = x
            # Reference = the clean output, which is the output at the point differentiated.
            x_req = x.detach().requires_grad_(True)
            with torch.enable_grad():
                clean = forward(x_req)
                loss = objective.loss(clean, target, detach(clean))
                (grad,) = torch.autograd.grad(loss.sum(), x_req)
            clean = detach(clean)
            self.counts["fwd"] += x.shape[0]
            self.counts["bwd"] += x.shape[0]
            alpha = self.step_size if self.step_size is not None else threat.eps
        x_adv = threat.project(start + alpha * threat.ascent_direction(grad), x)
        if self.early_stop and objective.has_success:
            done = self._success(objective, clean, target, clean)
            x_adv = torch.where(done.view(-1, *([1] * (x.dim() - 1))), x, x_adv)
        return x_adv.detach()
