"""PGD (Madry et al., ICLR 2018): projected steepest ascent in the threat's norm from a random start.

``PGD(steps=10, step_size=None, restarts=1, random_start=True, early_stop=True, keep_best=True)``:

- ``step_size`` None -> ``2.5 · eps / steps`` (Madry et al.'s rule: enough to cross the ball and come back);
- random start uniform in the ball (``ThreatModel.random_start``), drawn from the attack's generator;
- every restart starts afresh from a random point and only on samples not yet successful;
- ``keep_best``: return, per sample, the best point seen over all steps and restarts (a successful point
  when the objective has a success criterion, else the largest loss), not the last iterate;
- ``early_stop``: a sample leaves the batch as soon as the objective's success holds, so the remaining
  steps cost nothing for it; its returned point is that first successful iterate.

Cost per image: ``steps`` forward+backward passes, one forward to judge the last step's point (``keep_best``)
and, only for objectives that need the clean output as reference, one clean forward.

With ``early_stop=False, keep_best=False, restarts=1`` this is the textbook PGD (the last iterate), the
same update as torchattacks' ``PGD``/``PGDL2`` (see ``tests/test_attacks_vs_torchattacks.py``). L1 uses the
SLIDE step of ``ThreatModel.ascent_direction``.
"""

from __future__ import annotations

from typing import Any

import torch

from robustssl.threats.attacks.base import ATTACKS, Attack, Forward, select
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel


def check_step_size(step_size: float | None) -> float | None:
    if step_size is not None and not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(f"step_size must be a number > 0 or None (auto), got {step_size!r}")
    return None if step_size is None else float(step_size)


@ATTACKS.register("pgd", kind="gradient")
class PGD(Attack):
    name = "pgd"
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        early_stop: bool = True,
        keep_best: bool = True,
        l1_sparsity: float = 0.95,
    ):
        super().__init__()
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
            raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
        if not 0 <= l1_sparsity < 1:
            raise ValueError(f"l1_sparsity is a quantile in [0, 1), got {l1_sparsity!r}")
        self.steps, self.restarts = steps, restarts
        self.step_size = check_step_size(step_size)
        self.random_start, self.early_stop, self.keep_best = (
            bool(random_start),
            bool(early_stop),
            bool(keep_best),
        )
        self.l1_sparsity = float(l1_sparsity)

    def __repr__(self) -> str:
        return (
            f"PGD(steps={self.steps}, step_size={self.step_size}, restarts={self.restarts}, "
            f"random_start={self.random_start}, early_stop={self.early_stop}, keep_best={self.keep_best})"
        )

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
        *,
        x_init: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]. ``x_init`` (same shape, optional): the first restart's starting
        point instead of a random one (projected into the ball first). Returns ``x_adv`` like ``x``."""
        generator = self._new_call(threat, x, generator)
        if x_init is not None and x_init.shape != x.shape:
            raise ValueError(f"x_init must have the shape of x {tuple(x.shape)}, got {tuple(x_init.shape)}")
        alpha = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        clean, best = self._begin(forward, x, target, objective)
        last = x.detach().clone()
        stop_early = self.early_stop and objective.has_success
        for restart in range(self.restarts):
            rows = (
                (~best.success).nonzero()[:, 0] if stop_early else torch.arange(x.shape[0], device=x.device)
            )
            if rows.numel() == 0:
                break
            x0, tgt, ref = x[rows], select(target, rows), select(clean, rows)
            if restart == 0 and x_init is not None:
                x_adv = threat.project(x_init[rows].detach(), x0)
            elif self.random_start:
                x_adv = threat.random_start(x0, generator)
            else:
                x_adv = x0.clone()
            for i in range(self.steps):
                loss, grad, out = self._loss_and_grad(forward, x_adv, tgt, ref, objective, i / self.steps)
                success = self._success(objective, out, tgt, ref)
                best.update(rows, x_adv, self._tracking_loss(objective, out, tgt, ref, loss), success)
                if stop_early and bool(success.any()):
                    keep = (~success).nonzero()[:, 0]
                    rows, x0, x_adv, grad = rows[keep], x0[keep], x_adv[keep], grad[keep]
                    tgt, ref = select(tgt, keep), select(ref, keep)
                    if rows.numel() == 0:
                        break
                direction = threat.ascent_direction(grad, self.l1_sparsity)
                x_adv = threat.project(x_adv + alpha * direction, x0)
            if rows.numel() == 0:
                continue
            last[rows] = x_adv
            if self.keep_best:
                # The last step's point has not been evaluated yet.
                out = self._output(forward, x_adv)
                loss = self._tracking_loss(objective, out, tgt, ref, objective.loss(out, tgt, ref, 1.0))
                best.update(rows, x_adv, loss, self._success(objective, out, tgt, ref))
        if self.keep_best:
            return best.x
        # Textbook PGD returns the last iterate; samples that stopped early keep their successful point.
        return (
            torch.where(best.success.view(-1, *([1] * (x.dim() - 1))), best.x, last) if stop_early else last
        )
