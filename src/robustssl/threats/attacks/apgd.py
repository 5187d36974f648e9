"""APGD and APGD-T (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness ..."), and
l1-APGD (Croce & Hein, ICCV 2021, "Mind the box: l1-APGD for sparse adversarial attacks on image
classifiers").

INTERFACE (stable; the AutoAttack cascade in ``autoattack.py`` builds on it):

- ``APGD(steps=100, restarts=1, rho=0.75, n_checkpoints=None, momentum=0.75, objective_override=None)``,
  registered as ``"apgd"``; L-inf, L2 and L1 (``attack(..., "apgd", norm="l1")``).
- ``APGDTargeted(steps=100, restarts=1, n_target_classes=9, target_batch=None)``, registered as
  ``"apgd-t"``; it builds a ``dlr-targeted`` objective per target class from the clean logits.
- Both: ``attack(forward, x, target, objective, threat, generator=None) -> x_adv`` (see ``base.py``).

The algorithm (2020 paper, Alg. 1), L-inf and L2: step size ``η = 2ε``; the first step is a plain projected
ascent step, then ``z = P(x_k + η·dir(∇))``, ``x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))``
with ``α = momentum``. At checkpoints ``w_j`` the step size of a sample is halved, and it restarts from its
best point, when (1) the loss rose in at most ``rho`` of the steps since the last checkpoint, or (2) the step
size was not halved at the last checkpoint and the best loss has not improved since. Checkpoints
(``n_checkpoints`` None) follow the reference implementation's integer schedule: the first after ``⌊0.22 N⌋``
steps, then intervals shrinking by ``⌊0.03 N⌋`` down to ``⌊0.06 N⌋`` (the paper's ``p_{j+1} = p_j +
max(p_j − p_{j−1} − 0.03, 0.06)``). ``n_checkpoints`` = an int places that many checkpoints evenly instead.

l1-APGD (2021 paper): the step changes only the ``k`` coordinates of largest ``|∇|`` (each by
``η/k`` in the gradient's sign), followed by the exact Euclidean projection onto the intersection of the L1
ball and the [0, 1] box (``project_l1_box``; projecting on the ball and then clipping would waste budget on
coordinates the box blocks). ``η = ε`` and no momentum. Sparsity adaptation: ``k`` starts at 20% of the
coordinates; at every checkpoint (every ``⌊0.04 N⌋`` steps) ``k`` becomes the sparsity ``‖x_best − x‖₀`` of
the run's best point divided by 1.5; where that sparsity fell by more than 5% since the last checkpoint the
step size goes back to ``ε`` and the run restarts from its best point, elsewhere the step size shrinks by
1.5, never below ``ε/10``. The random start is a Gaussian draw projected onto the same set.

Generic over objectives: the returned point is, per sample, a successful point when the objective has a
success criterion and one was found (misclassified, for classification), else the best-loss point seen
across steps and restarts (for the default ``early_stop=True`` successful samples leave the batch, so no
further compute is spent on them). Restarts run only on samples not yet successful; each restart starts
at random in the ball.

APGD-T runs its target classes side by side: one batch holds every (still robust point, target) pair, and
all rows of a point leave the batch as soon as one of them breaks it. Each target still gets its own run of
``steps`` iterations from its own random start, as in the paper; the batch is just larger, which makes each
model pass cheaper per image while the batch is small. ``target_batch`` caps the images per pass (the
targets then run in consecutive groups, each on the points the previous groups left robust): None means
all targets at once on an accelerator and at most ``base.CPU_TARGET_BATCH`` images on the CPU; 1 runs the
targets one after another.
"""

from __future__ import annotations

from typing import Any

import torch

from robustssl.threats.attacks.base import (
    ATTACKS,
    Attack,
    BestPoints,
    Forward,
    check_target_batch,
    select,
    targets_side_by_side,
)
from robustssl.threats.objectives import OBJECTIVES, CrossEntropy, DLRTargeted, LossWithSuccess, Objective
from robustssl.threats.threat_model import ThreatModel

# l1-APGD's constants (Croce & Hein 2021): initial fraction of coordinates changed per step, the
# checkpoint interval (fraction of the steps), the divisor from the best point's sparsity to the next k, the
# step-size decay at a checkpoint and the smallest step size (as a fraction of eps).
_L1_INITIAL_FRACTION = 0.2
_L1_CHECKPOINT_EVERY = 0.04
_L1_SPARSITY_DIVISOR = 1.5
_L1_STEP_DECAY = 1.5
_L1_MIN_STEP = 0.1


def project_l1_box(x: torch.Tensor, point: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of ``point`` onto ``{z : ‖z − x‖₁ <= eps, z in [0, 1]}``, per sample; exact.

    ``x``, ``point``: (B, ...), ``x`` in [0, 1]. With ``δ = point − x`` the solution is, per coordinate,
    ``sign(δ_i) · min(max(|δ_i| − λ, 0), r_i)``, where ``r_i`` is the room to the box in the direction of
    ``δ_i`` and ``λ >= 0`` the smallest value that brings the L1 norm to ``eps`` (0 when already inside): the
    norm is piecewise linear and non-increasing in ``λ``, so sorting its breakpoints finds ``λ`` exactly.
    """
    shape = x.shape
    flat_x = x.flatten(1)
    delta = point.flatten(1) - flat_x
    size = delta.abs()
    room = torch.where(delta > 0, 1.0 - flat_x, flat_x).clamp_min(0.0)
    reach = torch.minimum(size, room)
    over = reach.sum(dim=1) > eps
    if bool(over.any()):
        shift = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        shift[over] = _l1_box_threshold(size[over], room[over], reach[over].double().sum(dim=1), eps)
        reach = torch.minimum((size.double() - shift[:, None]).clamp_min(0.0), room.double()).to(x.dtype)
    out = (flat_x + delta.sign() * reach).clamp(0.0, 1.0)
    # x + δ rounds per pixel; summed over many pixels that can exceed eps by ~1e-6: pull such rows in.
    for _ in range(3):
        norm = (out - flat_x).abs().sum(dim=1)
        too_far = norm > eps
        if not bool(too_far.any()):
            break
        factor = torch.where(too_far, eps * (1 - 1e-5) / norm.clamp_min(1e-30), 1.0)
        out = (flat_x + (out - flat_x) * factor[:, None]).clamp(0.0, 1.0)
    return out.view(shape)


def _l1_box_threshold(
    size: torch.Tensor, room: torch.Tensor, total: torch.Tensor, eps: float
) -> torch.Tensor:
    """(m,) float64 ``λ`` with ``Σ_i min(max(size_i − λ, 0), room_i) = eps`` for rows whose value at 0
    (``total``) exceeds eps. Coordinate ``i`` lowers the sum at rate 1 for ``λ`` in
    ``(max(size_i − room_i, 0), size_i)``: the sum at each breakpoint follows from cumulative sums."""
    enter = (size - room).clamp_min(0.0)
    breaks, order = torch.cat([enter, size], dim=1).sort(dim=1)
    change = torch.cat([torch.ones_like(size), -torch.ones_like(size)], dim=1).gather(1, order)
    active = change.cumsum(dim=1).double()  # coordinates on the slope just after each breakpoint
    breaks = breaks.double()
    fallen = (active[:, :-1] * breaks.diff(dim=1)).cumsum(dim=1)
    value = total[:, None] - torch.cat([torch.zeros_like(fallen[:, :1]), fallen], dim=1)
    reached = value <= eps
    # The sum is 0 <= eps past the last breakpoint; rounding aside, some breakpoint reaches eps.
    last = torch.full_like(total, breaks.shape[1] - 1, dtype=torch.long)
    first = torch.where(reached.any(dim=1), reached.to(torch.int8).argmax(dim=1), last)
    before = (first - 1).clamp_min(0)[:, None]
    lam = breaks.gather(1, before) + (value.gather(1, before) - eps) / active.gather(1, before).clamp_min(1.0)
    return torch.minimum(lam, breaks.gather(1, first[:, None])).squeeze(1)


def l1_sparse_direction(grad: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Unit-L1 ascent direction on the ``fraction`` (B,) of coordinates with the largest ``|grad|``: their
    signs divided by their count (zero for a zero gradient)."""
    flat = grad.flatten(1)
    magnitude = flat.abs()
    n = flat.shape[1]
    rank = ((1.0 - fraction) * n).long().clamp(0, n - 1)
    threshold = magnitude.sort(dim=1).values.gather(1, rank[:, None])
    step = flat.sign() * (magnitude >= threshold).to(flat.dtype)
    return (step / step.abs().sum(dim=1, keepdim=True).clamp_min(1.0)).view_as(grad)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@ATTACKS.register("apgd", kind="gradient")
class APGD(Attack):
    """Auto-PGD: step-size-free PGD with momentum and checkpointed step halving (l1-APGD for L1).

    ``objective_override`` (an ``Objective`` or registered name): maximize its loss instead of the call's
    objective, while the call's objective still decides success and which point is best (AutoAttack runs
    APGD on ``dlr`` judged by misclassification this way). It is lifted through the call's objective
    (``Objective.lift``), so it reads EOT's draws as the call's objective does.
    """

    name = "apgd"
    norms = ("linf", "l2", "l1")

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

    def checkpoints(self, norm: str = "linf") -> list[int]:
        """Step counts (1..steps) after which the step-size conditions are checked under ``norm``."""
        n = self.steps
        if self.n_checkpoints is not None:
            return sorted(
                {max(1, round(n * (j + 1) / (self.n_checkpoints + 1))) for j in range(self.n_checkpoints)}
            )
        if norm == "l1":
            every = max(int(_L1_CHECKPOINT_EVERY * n), 1)
            return list(range(every, n + 1, every))
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
        stop_early = self.early_stop and objective.has_success
        for _ in range(self.restarts):
            rows = self._rows_to_attack(best, stop_early)
            if rows.numel() == 0:
                break
            self._search(forward, x[rows], select(target, rows), select(clean, rows), rows, objective, threat,
                         generator, best, stop_early)
        return best.x

    # --- shared with APGD-T ---------------------------------------------------------------------------------
    def _start(self, objective: Objective, x: torch.Tensor, clean: Any, target: Any) -> BestPoints:
        loss = objective.loss(clean, target, clean, 0.0)
        loss = self._tracking_loss(objective, clean, target, clean, loss)
        return BestPoints(x, loss, self._success(objective, clean, target, clean))

    @staticmethod
    def _rows_to_attack(best: BestPoints, stop_early: bool) -> torch.Tensor:
        if stop_early:
            return (~best.success).nonzero()[:, 0]
        return torch.arange(best.x.shape[0], device=best.x.device)

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
        grouped: bool = False,
    ) -> None:
        """One APGD run from a random start on ``x0``, whose row ``i`` is sample ``rows[i]`` of ``best``.

        ``grouped``: ``rows`` may repeat a sample (several runs of it side by side, APGD-T's targets); all
        rows of a sample leave the batch once one of them succeeds (with ``stop_early``).
        """
        view = (-1, *([1] * (x0.dim() - 1)))
        l1 = threat.norm == "l1"
        if l1:
            noise = torch.randn(x0.shape, generator=generator, device=generator.device)
            x_adv = project_l1_box(x0, x0 + noise.to(device=x0.device, dtype=x0.dtype), threat.eps)
        else:
            x_adv = threat.random_start(x0, generator)
        loss, grad, out = self._loss_and_grad(forward, x_adv, target, reference, objective, 0.0)
        success = self._success(objective, out, target, reference)
        best.update(rows, x_adv, self._tracking_loss(objective, out, target, reference, loss), success,
                    unique=not grouped)
        n = x0.shape[0]
        state = {
            "rows": rows,
            "x0": x0,
            "x_adv": x_adv,
            "grad": grad,
            "step": torch.full((n,), (1.0 if l1 else 2.0) * threat.eps, device=x0.device, dtype=x0.dtype),
            "x_best": x_adv.clone(),
            "loss_best": loss.clone(),
            "grad_best": grad.clone(),
        }
        if l1:
            state["fraction"] = torch.full((n,), _L1_INITIAL_FRACTION, device=x0.device)
            state["sparsity_last"] = torch.full((n,), float(x0[0].numel()), device=x0.device)
        else:
            state.update(x_prev=x_adv, loss_prev=loss, increases=torch.zeros_like(loss),
                         reduced_last=torch.ones_like(loss, dtype=torch.bool), loss_best_last=loss.clone())
        target_now, reference_now = target, reference
        if stop_early:
            state, target_now, reference_now = _keep(state, target_now, reference_now, ~best.success[rows])
        checkpoints, last_checkpoint = set(self.checkpoints(threat.norm)), 0
        for i in range(self.steps):
            if state["rows"].numel() == 0:
                return
            s = state
            if l1:
                ascent = s["step"].view(view) * l1_sparse_direction(s["grad"], s["fraction"])
                s["x_adv"] = project_l1_box(s["x0"], s["x_adv"] + ascent, threat.eps)
            else:
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
            best.update(s["rows"], s["x_adv"], track, success, unique=not grouped)
            # The step-size logic follows the ascended loss (the paper's f), not the tracking yardstick.
            improved = loss > s["loss_best"]
            s["x_best"][improved] = s["x_adv"][improved]
            s["grad_best"][improved] = s["grad"][improved]
            if not l1:
                s["increases"] += (loss > s["loss_prev"]).to(loss.dtype)
                s["loss_prev"] = loss
            s["loss_best"] = torch.maximum(s["loss_best"], loss)
            if i + 1 in checkpoints:
                if l1:
                    self._l1_checkpoint(s, threat.eps, view)
                else:
                    self._checkpoint(s, i + 1 - last_checkpoint, view)
                last_checkpoint = i + 1
            if stop_early and bool(success.any()):
                keep = ~best.success[s["rows"]]
                state, target_now, reference_now = _keep(s, target_now, reference_now, keep)

    def _checkpoint(self, s: dict[str, torch.Tensor], interval: int, view: tuple[int, ...]) -> None:
        """L-inf/L2: halve the step size and return to the best point where the loss oscillates or stalls."""
        # Reference code: "at most rho of the steps increased the loss" (<=, the paper writes <).
        oscillating = s["increases"] <= interval * self.rho
        stalled = ~s["reduced_last"] & (s["loss_best_last"] >= s["loss_best"])
        reduce = oscillating | stalled
        s["reduced_last"], s["loss_best_last"] = reduce, s["loss_best"].clone()
        s["step"] = torch.where(reduce, s["step"] / 2, s["step"])
        s["x_adv"] = torch.where(reduce.view(view), s["x_best"], s["x_adv"])
        s["grad"] = torch.where(reduce.view(view), s["grad_best"], s["grad"])
        s["increases"] = torch.zeros_like(s["increases"])

    @staticmethod
    def _l1_checkpoint(s: dict[str, torch.Tensor], eps: float, view: tuple[int, ...]) -> None:
        """L1: adapt the sparsity of the steps to the best point's, and the step size to its progress."""
        sparsity = (s["x_best"] != s["x0"]).flatten(1).sum(dim=1).float()
        sparser = sparsity < 0.95 * s["sparsity_last"]
        s["fraction"] = sparsity / s["x0"][0].numel() / _L1_SPARSITY_DIVISOR
        step = torch.where(sparser, torch.full_like(s["step"], eps), s["step"] / _L1_STEP_DECAY)
        s["step"] = step.clamp(_L1_MIN_STEP * eps, eps)
        s["sparsity_last"] = sparsity
        s["x_adv"] = torch.where(sparser.view(view), s["x_best"], s["x_adv"])
        s["grad"] = torch.where(sparser.view(view), s["grad_best"], s["grad"])


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
    ``target_batch``: images per pass, at most, with the target classes side by side (see the module
    docstring); 1 runs them one after another, each on the samples the previous ones left robust.
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
        target_batch: int | None = None,
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
        self.target_batch = check_target_batch(target_batch)

    def __repr__(self) -> str:
        return (f"{super().__repr__()[:-1]}, n_target_classes={self.n_target_classes}, "
                f"target_batch={self.target_batch})")

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
        clean = self._output(forward, x)
        logits = self._as_logits(clean)
        objective.validate(clean, target)
        n_classes = logits.shape[1]
        if n_classes < 4:
            raise ValueError(f"apgd-t needs at least 4 classes (targeted DLR), got logits with {n_classes}")
        n_targets = min(self.n_target_classes, n_classes - 1)
        # Most likely wrong classes first: the true class is masked out of the ranking.
        ranked = logits.float().scatter(1, target[:, None], float("-inf")).argsort(dim=1, descending=True)
        ranked = ranked[:, :n_targets]
        judged = LossWithSuccess(objective.lift(DLRTargeted()), objective, targeted_loss=True)
        stop_early = self.early_stop and judged.has_success
        best = self._start(objective, x, clean, target)
        first = 0
        while first < n_targets:
            todo = self._rows_to_attack(best, stop_early)
            if todo.numel() == 0:
                break
            together = targets_side_by_side(self.target_batch, todo.numel(), n_targets - first, x.device)
            chosen = ranked[:, first:first + together]
            for restart in range(self.restarts):
                if restart:
                    todo = self._rows_to_attack(best, stop_early)
                    if todo.numel() == 0:
                        break
                # Target-major rows: the first len(todo) rows run against the most likely wrong class.
                rows = todo.repeat(together)
                pair = (target[rows], chosen[todo].t().reshape(-1))
                self._search(forward, x[rows], pair, select(clean, rows), rows, judged, threat, generator,
                             best, stop_early, grouped=together > 1)
            first += together
        return best.x
