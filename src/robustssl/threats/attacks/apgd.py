"""APGD and APGD-T (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness ...").

INTERFACE (stable; the AutoAttack cascade in ``autoattack.py`` builds on it):

- ``APGD(steps=100, restarts=1, rho=0.75, n_checkpoints=None, momentum=0.75, objective_override=None)``,
  registered as ``"apgd"``.
- ``APGDTargeted(steps=100, restarts=1, n_target_classes=9)``, registered as ``"apgd-t"``; it builds a
  ``dlr-targeted`` objective per target class from the clean logits.
- Both: ``attack(forward, x, target, objective, threat, generator=None) -> x_adv`` (see ``base.py``).

The algorithm (paper, Alg. 1): step size ``η = 2ε``; the first step is a plain projected ascent step, then
``z = P(x_k + η·dir(∇))``, ``x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))`` with ``α =
momentum``. At checkpoints ``w_j`` the step size of a sample is halved, and it restarts from its best point,
when (1) the loss rose in at most ``rho`` of the steps since the last checkpoint, or (2) the step size was
not halved at the last checkpoint and the best loss has not improved since. Checkpoints (``n_checkpoints``
None) follow the reference implementation's integer schedule: the first after ``⌊0.22 N⌋`` steps, then
intervals shrinking by ``⌊0.03 N⌋`` down to ``⌊0.06 N⌋`` (the paper's ``p_{j+1} = p_j + max(p_j − p_{j−1}
− 0.03, 0.06)``). ``n_checkpoints`` = an int places that many checkpoints evenly instead.

Generic over objectives: the returned point is, per sample, a successful point when the objective has a
success criterion and one was found (misclassified, for classification), else the best-loss point seen
across steps and restarts (for the default ``early_stop=True`` successful samples leave the batch, so no
further compute is spent on them). Restarts run only on samples not yet successful; each restart starts
uniformly at random in the ball. L-inf and L2 (APGD-L1 needs a different step; see Croce & Hein 2021).
"""

from __future__ import annotations

from typing import Any

import torch

from robustssl.threats.attacks.base import ATTACKS, Attack, BestPoints, Forward, select
from robustssl.threats.objectives import OBJECTIVES, CrossEntropy, DLRTargeted, LossWithSuccess, Objective
from robustssl.threats.threat_model import ThreatModel


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@ATTACKS.register("apgd", kind="gradient")
class APGD(Attack):
    """Auto-PGD: step-size-free PGD with momentum and checkpointed step halving.

    ``objective_override`` (an ``Objective`` or registered name): maximize its loss instead of the call's
    objective, while the call's objective still decides success and which point is best (AutoAttack runs
    APGD on ``dlr`` judged by misclassification this way).
    """

    name = "apgd"
    norms = ("linf", "l2")

    def __init__(
        self,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        n_checkpoints: int | None = None,
        momentum: float = 0.75,
        objective_override: Objective | str | None = None,
        early_stop: bool = True,
    ):
        super().__init__()
        self.steps = _check_int("steps", steps, 1)
        self.restarts = _check_int("restarts", restarts, 1)
        if not 0 < rho <= 1:
            raise ValueError(f"rho must lie in (0, 1], got {rho!r}")
        if not 0 < momentum <= 1:
            raise ValueError(
                f"momentum (weight of the new step, alpha in the paper) must lie in (0, 1], got {momentum!r}"
            )
        self.n_checkpoints = None if n_checkpoints is None else _check_int("n_checkpoints", n_checkpoints, 1)
        if isinstance(objective_override, str):
            objective_override = OBJECTIVES.create(objective_override)
        if objective_override is not None and not isinstance(objective_override, Objective):
            raise ValueError(f"objective_override must be an Objective or a name, got {objective_override!r}")
        self.rho, self.momentum = float(rho), float(momentum)
        self.objective_override = objective_override
        self.early_stop = bool(early_stop)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(steps={self.steps}, restarts={self.restarts}, rho={self.rho}, "
            f"n_checkpoints={self.n_checkpoints}, momentum={self.momentum})"
        )

    def checkpoints(self) -> list[int]:
        """Step counts (1..steps) after which the step-size conditions are checked."""
        n = self.steps
        if self.n_checkpoints is not None:
            return sorted(
                {max(1, round(n * (j + 1) / (self.n_checkpoints + 1))) for j in range(self.n_checkpoints)}
            )
        interval, shrink, floor = max(int(0.22 * n), 1), max(int(0.03 * n), 1), max(int(0.06 * n), 1)
        points, at = [], interval
        while at <= n:
            points.append(at)
            interval = max(interval - shrink, floor)
            at += interval
        return points

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]. Returns ``x_adv`` of the same shape, in the ball and in [0, 1]."""
        generator = self._new_call(threat, x, generator)
        if self.objective_override is not None:
            objective = LossWithSuccess(objective.lift(self.objective_override), objective)
        clean, best = self._begin(forward, x, target, objective)
        for _ in range(self.restarts):
            if not self._search_round(forward, x, target, clean, objective, threat, generator, best):
                break
        return best.x

    # --- shared with APGD-T ---------------------------------------------------------------------------------
    def _start(self, objective: Objective, x: torch.Tensor, clean: Any, target: Any) -> BestPoints:
        loss = objective.loss(clean, target, clean, 0.0)
        loss = self._tracking_loss(objective, clean, target, clean, loss)
        return BestPoints(x, loss, self._success(objective, clean, target, clean))

    def _search_round(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        reference: Any,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator,
        best: BestPoints,
    ) -> bool:
        """One restart on the samples still to attack; False when there are none."""
        stop_early = self.early_stop and objective.has_success
        rows = (~best.success).nonzero()[:, 0] if stop_early else torch.arange(x.shape[0], device=x.device)
        if rows.numel() == 0:
            return False
        self._search(
            forward,
            x[rows],
            select(target, rows),
            select(reference, rows),
            rows,
            objective,
            threat,
            generator,
            best,
            stop_early,
        )
        return True

    def _search(
        self,
        forward: Forward,
        x0: torch.Tensor,
        target: Any,
        reference: Any,
        rows: torch.Tensor,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator,
        best: BestPoints,
        stop_early: bool,
    ) -> None:
        """One APGD run from a random start on ``x0`` (the rows ``rows`` of the batch), updating ``best``."""
        view = (-1, *([1] * (x0.dim() - 1)))
        x_adv = threat.random_start(x0, generator)
        loss, grad, out = self._loss_and_grad(forward, x_adv, target, reference, objective, 0.0)
        track = self._tracking_loss(objective, out, target, reference, loss)
        success = self._success(objective, out, target, reference)
        best.update(rows, x_adv, track, success)
        state = {
            "rows": rows,
            "x0": x0,
            "x_adv": x_adv,
            "x_prev": x_adv.clone(),
            "grad": grad,
            "step": torch.full((x0.shape[0],), 2.0 * threat.eps, device=x0.device, dtype=x0.dtype),
            "loss_prev": loss,
            "x_best": x_adv.clone(),
            "loss_best": loss.clone(),
            "grad_best": grad.clone(),
            "increases": torch.zeros_like(loss),
            "reduced_last": torch.ones_like(loss, dtype=torch.bool),
            "loss_best_last": loss.clone(),
        }
        target_now, reference_now = target, reference
        if stop_early:
            state, target_now, reference_now = _keep(state, target_now, reference_now, ~success)
        checkpoints, last_checkpoint = set(self.checkpoints()), 0
        for i in range(self.steps):
            if state["rows"].numel() == 0:
                return
            s = state
            alpha = 1.0 if i == 0 else self.momentum
            z = threat.project(
                s["x_adv"] + s["step"].view(view) * threat.ascent_direction(s["grad"]), s["x0"]
            )
            moved = s["x_adv"] + alpha * (z - s["x_adv"]) + (1 - alpha) * (s["x_adv"] - s["x_prev"])
            s["x_prev"], s["x_adv"] = s["x_adv"], threat.project(moved, s["x0"])
            loss, s["grad"], out = self._loss_and_grad(
                forward, s["x_adv"], target_now, reference_now, objective, (i + 1) / self.steps
            )
            track = self._tracking_loss(objective, out, target_now, reference_now, loss)
            success = self._success(objective, out, target_now, reference_now)
            best.update(s["rows"], s["x_adv"], track, success)
            # The step-size logic follows the ascended loss (the paper's f), not the tracking yardstick.
            s["increases"] += (loss > s["loss_prev"]).to(loss.dtype)
            s["loss_prev"] = loss
            improved = loss > s["loss_best"]
            s["x_best"][improved] = s["x_adv"][improved]
            s["grad_best"][improved] = s["grad"][improved]
            s["loss_best"] = torch.maximum(s["loss_best"], loss)
            if i + 1 in checkpoints:
                interval, last_checkpoint = i + 1 - last_checkpoint, i + 1
                # Reference code: "at most rho of the steps increased the loss" (<=, the paper writes <).
                oscillating = s["increases"] <= interval * self.rho
                stalled = ~s["reduced_last"] & (s["loss_best_last"] >= s["loss_best"])
                reduce = oscillating | stalled
                s["reduced_last"], s["loss_best_last"] = reduce, s["loss_best"].clone()
                s["step"] = torch.where(reduce, s["step"] / 2, s["step"])
                s["x_adv"] = torch.where(reduce.view(view), s["x_best"], s["x_adv"])
                s["grad"] = torch.where(reduce.view(view), s["grad_best"], s["grad"])
                s["increases"] = torch.zeros_like(s["increases"])
            if stop_early and bool(success.any()):
                state, target_now, reference_now = _keep(s, target_now, reference_now, ~success)


def _keep(
    state: dict[str, torch.Tensor], target: Any, reference: Any, keep: torch.Tensor
) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """Drop the samples where ``keep`` is False from the per-sample search state."""
    index = keep.nonzero()[:, 0]
    return {k: v[index] for k, v in state.items()}, select(target, index), select(reference, index)


@ATTACKS.register("apgd-t", kind="gradient", task="classification")
class APGDTargeted(APGD):
    """APGD on the targeted DLR loss, once per target class: the ``n_target_classes`` highest clean logits
    other than the true class, each run only on the samples still robust (Croce & Hein 2020, APGD-T).

    ``target`` holds the true labels (B,); success is judged by the call's objective (default: ``ce``,
    i.e. misclassified). Needs at least 4 classes (targeted DLR's denominator uses the 4th largest logit).
    """

    name = "apgd-t"

    def __init__(
        self,
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
        n_checkpoints: int | None = None,
        momentum: float = 0.75,
        early_stop: bool = True,
    ):
        super().__init__(
            steps=steps,
            restarts=restarts,
            rho=rho,
            n_checkpoints=n_checkpoints,
            momentum=momentum,
            early_stop=early_stop,
        )
        self.n_target_classes = _check_int("n_target_classes", n_target_classes, 1)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, n_target_classes={self.n_target_classes})"

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        objective: Objective | None,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]; ``target``: (B,) true labels. Returns ``x_adv``."""
        generator = self._new_call(threat, x, generator)
        objective = objective if objective is not None else CrossEntropy()
        clean = self._classifier_logits(forward, x)
        dlr = DLRTargeted()
        objective.validate(clean, target)
        n_classes = clean.shape[1]
        if n_classes < 4:
            raise ValueError(f"apgd-t needs at least 4 classes (targeted DLR), got logits with {n_classes}")
        # Most likely wrong classes first: the true class is masked out of the ranking.
        ranked = clean.float().scatter(1, target[:, None], float("-inf")).argsort(dim=1, descending=True)
        judged = LossWithSuccess(dlr, objective, targeted_loss=True)
        best = self._start(objective, x, clean, target)
        for k in range(min(self.n_target_classes, n_classes - 1)):
            pair = (target, ranked[:, k])
            for _ in range(self.restarts):
                if not self._search_round(forward, x, pair, clean, judged, threat, generator, best):
                    return best.x
        return best.x
