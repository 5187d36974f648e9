"""FAB: the fast adaptive boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), untargeted (``"fab"``) and targeted over the top-k classes
(``"fab-t"``).

FAB linearizes the decision boundary at the current iterate, projects both the iterate and the clean point
onto that hyperplane intersected with the [0, 1] box (an exact, sort-based minimum-norm projection, below),
and moves to a convex combination biased towards the clean point, so it finds *small* perturbations. When an
iterate is adversarial it is recorded and pulled back towards the clean point (``beta``).

Classifier-only: ``forward`` must return logits ``(B, K)`` and ``target`` the labels ``(B,)``; success is
misclassification (``argmax ≠ target``), FAB's own criterion, so the ``objective`` argument is accepted for
the common contract and not used. The returned point is the smallest adversarial found if it lies within
``eps``, else the clean point. With ``early_stop=True`` (the default) a sample stops as soon as an adversarial
point within ``eps`` is found: within the threat model that is the same verdict, for less compute.

FAB-T runs its target classes side by side in one batch of (point, target) rows; every row is the same
deterministic run as one after another would give, and all rows of a point stop once one of them finds an
adversarial point within ``eps``. ``target_batch`` caps the images per pass as for APGD-T (``apgd.py``).

Under EOT (randomized models) FAB works on the mean logits over the draws: logit differences are linear,
so the gradient of the mean is EOT's mean gradient.
"""

from __future__ import annotations

import torch

from robustssl.threats.attacks.base import (
    ATTACKS,
    Attack,
    Forward,
    check_target_batch,
    first_best_per_group,
    mean_output,
    targets_side_by_side,
)
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel

# Hyper-parameters of the paper (Sec. 3 and the AutoAttack defaults): alpha_max, eta (overshoot), beta
# (backward step); 100 iterations per restart and target.
_ALPHA_MAX, _ETA, _BETA = 0.1, 1.05, 0.9
# Newton steps of the hyperplane projection before its unsettled rows fall back to sorting (FAB's steps
# settle in one or two).
_NEWTON_STEPS = 12


def project_hyperplane_box(point: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str) -> torch.Tensor:
    """Minimum-norm ``d`` with ``w·d = c`` and ``point + d`` in [0, 1]^D, per row; exact.

    ``point``, ``w``: (N, D), ``point`` in [0, 1]; ``c``: (N,). ``norm`` in {"linf", "l2"}. When no point of
    the box reaches the hyperplane the move goes to the box corner that gets closest (FAB's fallback).

    Both cases reduce to a scalar search: after flipping signs so that ``c >= 0``, coordinate ``i`` moves
    in the direction ``sign(w_i)`` with room ``r_i`` before hitting the box. For L-inf every free coordinate
    moves by the same ``t`` (``d_i = sign(w_i) min(t, r_i)``); for L2 by ``λ|w_i|``
    (``d_i = sign(w_i) min(λ|w_i|, r_i)``, the KKT form). ``w·d`` is piecewise linear, non-decreasing and
    concave in ``t`` (``λ``): Newton's method from 0 climbs to the root without overshooting and lands on it
    exactly once it reaches the root's linear piece, usually within a few steps of O(D) each (see
    ``_newton_root``); rows it has not settled within its step budget are solved by sorting the breakpoints.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"hyperplane projection supports norms linf, l2; got {norm!r}")
    point, w, c = point.float(), w.float(), c.float()
    flip = torch.where(c < 0, -1.0, 1.0)
    w, c = w * flip[:, None], c * flip
    a = w.abs()
    room = torch.where(w > 0, 1.0 - point, point).clamp_min(0.0)
    reach = a * room  # w·d of a coordinate moved all the way to the box
    total = reach.sum(dim=1)
    feasible = total >= c
    if norm == "linf":
        breaks = room
        weight = a  # slope contributed by a free coordinate, per unit of t
    else:
        breaks = torch.where(a > 0, room / a.clamp_min(1e-30), torch.full_like(a, float("inf")))
        weight = a * a
    scale, settled = _newton_root(breaks, weight, reach, c, feasible)
    if not bool(settled[feasible].all()):
        rest = (~settled & feasible).nonzero()[:, 0]
        scale[rest] = _sorted_root(breaks[rest], weight[rest], reach[rest], total[rest], c[rest])
    scale = torch.where(feasible, scale.clamp_min(0.0), torch.full_like(scale, float("inf")))
    # L2 moves coordinate i by λ|w_i|; where w_i = 0 it stays (λ = inf, infeasible rows, must not give NaN).
    step = scale[:, None] if norm == "linf" else torch.where(a > 0, scale[:, None] * a, 0.0)
    # sign(w) already carries the flip: w_flipped·d = c_flipped is the same constraint as w·d = c.
    return torch.sign(w) * torch.minimum(step, room)


def _newton_root(breaks: torch.Tensor, weight: torch.Tensor, reach: torch.Tensor, c: torch.Tensor,
                 feasible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale (N,), settled (N,) bool): Newton's method on ``h(s) = Σ_i min(weight_i s, reach_i)`` (the
    ``w·d`` of the projection, coordinate ``i`` saturating at ``s = breaks_i``) for ``h(s) = c``, from 0,
    on the ``feasible`` rows (``h``'s limit reaches ``c``; the others count as settled and are ignored).

    ``h`` is concave, so every tangent lies above it and each step stays left of the root; a step taken on
    the root's own linear piece lands on the root. A row is settled once its free set stops changing (the
    step did not cross a breakpoint): its scale is then exact up to rounding.
    """
    scale = torch.zeros_like(c)
    settled = torch.zeros_like(c, dtype=torch.bool)
    for _ in range(_NEWTON_STEPS):
        free = breaks > scale[:, None]
        value = torch.where(free, weight * scale[:, None], reach).sum(dim=1)
        slope = (weight * free).sum(dim=1)
        nxt = scale + ((c - value) / slope.clamp_min(1e-30)).clamp_min(0.0)
        # The step stays on the same linear piece when no free coordinate saturates before reaching nxt.
        crossed = (free & (breaks < nxt[:, None])).any(dim=1)
        settled = ~crossed | (slope <= 0) | ~feasible
        scale = nxt
        if bool(settled.all()):
            break
    return scale, settled


def _sorted_root(breaks: torch.Tensor, weight: torch.Tensor, reach: torch.Tensor, total: torch.Tensor,
                 c: torch.Tensor) -> torch.Tensor:
    """The same root by sorting the breakpoints and accumulating ``h`` over them, O(D log D) per row."""
    breaks_sorted, order = breaks.sort(dim=1)
    fixed = reach.gather(1, order)
    weight_sorted = weight.gather(1, order)
    fixed_before = fixed.cumsum(dim=1) - fixed
    free_from = weight_sorted.flip(1).cumsum(dim=1).flip(1)
    finite = torch.isfinite(breaks_sorted)
    value_at = torch.where(finite, fixed_before + breaks_sorted.nan_to_num(posinf=0.0) * free_from,
                           total[:, None])
    # First breakpoint where the reachable w·d covers c; the root lies on the segment just before it.
    k = (value_at >= c[:, None]).to(torch.int8).argmax(dim=1, keepdim=True)
    return (c - fixed_before.gather(1, k).squeeze(1)) / free_from.gather(1, k).squeeze(1).clamp_min(1e-30)


class FAB(Attack):
    """FAB (L-inf, L2). ``targeted=True`` runs one targeted FAB per each of the ``n_target_classes`` classes
    with the highest clean logits (other than the label), each only on the points still robust.

    Args:
        steps: iterations per restart (and per target); 100 in the paper and AutoAttack.
        restarts: restarts; the first starts at the clean point, later ones at a random point at half the
            best norm found so far (or ``eps``).
        targeted: FAB-T when True.
        n_target_classes: how many top classes FAB-T targets (9 in AutoAttack), clipped to ``K − 1``.
        alpha_max, eta, beta: the paper's bias towards the clean point, overshoot and backward step.
        early_stop: stop a sample once an adversarial point within ``eps`` is found.
        target_batch: FAB-T's images per pass, at most, with its targets side by side (None: all targets at
            once on an accelerator, ``base.CPU_TARGET_BATCH`` images on the CPU; 1: one target at a time).

    Costs: targeted, one forward and one backward per step on the active points (plus one more of each for
    points that were just pulled back); untargeted, the Jacobian of all ``K`` logits, i.e. ``K`` forward and
    backward passes per step (run as one batch of ``K·B``), counted as ``K`` each in ``self.counts``.
    """

    name = "fab"
    norms = ("linf", "l2")

    def __init__(self, steps: int = 100, restarts: int = 1, targeted: bool = False, n_target_classes: int = 9,
                 alpha_max: float = _ALPHA_MAX, eta: float = _ETA, beta: float = _BETA,
                 early_stop: bool = True, target_batch: int | None = None):
        super().__init__()
        for key, value in (("steps", steps), ("restarts", restarts), ("n_target_classes", n_target_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FAB {key} must be an int >= 1, got {value!r}")
        if not 0.0 <= alpha_max <= 1.0:
            raise ValueError(f"FAB alpha_max must be in [0, 1], got {alpha_max!r}")
        if not eta >= 1.0:
            raise ValueError(f"FAB eta (overshoot) must be >= 1, got {eta!r}")
        if not 0.0 < beta < 1.0:
            raise ValueError(f"FAB beta (backward step) must be in (0, 1), got {beta!r}")
        self.steps, self.restarts, self.targeted = steps, restarts, targeted
        self.n_target_classes = n_target_classes
        self.alpha_max, self.eta, self.beta, self.early_stop = alpha_max, eta, beta, early_stop
        self.target_batch = check_target_batch(target_batch)
        if targeted:
            self.name = "fab-t"

    def __repr__(self) -> str:
        return (f"FAB(steps={self.steps}, restarts={self.restarts}, targeted={self.targeted}, "
                f"n_target_classes={self.n_target_classes})")

    def attack(self, forward: Forward, x: torch.Tensor, target: torch.Tensor | None,
               objective: Objective | None, threat: ThreatModel,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``: (B, ...) in [0, 1]; ``target``: (B,) int labels. Returns ``x_adv`` of ``x``'s shape."""
        generator = self._new_call(threat, x, generator)
        x = x.detach()
        y = self._labels(x, target)
        logits = self._classifier_logits(forward, x).float()
        self._n_classes = logits.shape[1]
        best = x.clone()
        best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)
        # Points already misclassified need no perturbation: their clean point is returned as is.
        best_norm[logits.argmax(dim=1) != y] = 0.0
        if self.targeted:
            masked = logits.scatter(1, y[:, None], float("-inf"))
            n_targets = min(self.n_target_classes, logits.shape[1] - 1)
            targets = masked.topk(n_targets, dim=1).indices
            first = 0
            while first < n_targets:
                todo = int(((best_norm > threat.eps) if self.early_stop else (best_norm > 0)).sum())
                if todo == 0:
                    break
                together = targets_side_by_side(self.target_batch, todo, n_targets - first, x.device)
                chosen = targets[:, first:first + together]
                self._restarts(forward, x, y, chosen, threat, generator, best, best_norm)
                first += together
        else:
            self._restarts(forward, x, y, None, threat, generator, best, best_norm)
        found = best_norm <= threat.eps
        return torch.where(found.view(-1, *([1] * (x.dim() - 1))), best, x)

    def _restarts(self, forward: Forward, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
                  threat: ThreatModel, generator: torch.Generator, best: torch.Tensor,
                  best_norm: torch.Tensor) -> None:
        """All restarts against the targets ``t`` (B, T), one row per (point, target), target-major
        (untargeted when None), updating ``best`` and ``best_norm``."""
        for restart in range(self.restarts):
            # best_norm is 0 for points misclassified from the start; they are never attacked.
            todo = (best_norm > threat.eps) if self.early_stop else (best_norm > 0)
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                return
            rows, t_rows = idx, None
            if t is not None:
                rows, t_rows = idx.repeat(t.shape[1]), t[idx].t().reshape(-1)
            x0 = x[rows]
            start = x0.clone() if restart == 0 else self._random_start(x0, best_norm[rows], threat, generator)
            self._run(forward, x0, y[rows], t_rows, threat, start, rows, best, best_norm)

    def _random_start(self, x0: torch.Tensor, best_norm: torch.Tensor, threat: ThreatModel,
                      generator: torch.Generator) -> torch.Tensor:
        """A random point at distance ``0.5 · min(best_norm, eps)`` from ``x0`` (the paper's restarts)."""
        view = (-1, *([1] * (x0.dim() - 1)))
        if threat.norm == "linf":
            direction = torch.rand(x0.shape, generator=generator, device=x0.device) * 2 - 1
        else:
            direction = torch.randn(x0.shape, generator=generator, device=x0.device)
        length = threat.distance(direction, torch.zeros_like(direction)).clamp_min(1e-12)
        direction = direction / length.view(view)
        radius = 0.5 * best_norm.clamp(max=threat.eps)
        return (x0 + radius.view(view) * direction).clamp(0.0, 1.0)

    def _boundary(self, forward: Forward, xa: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
                  threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at ``xa`` (N, K) and the nearest linearized boundary: ``f`` (N,) and its gradient."""
        n = xa.shape[0]
        rows = torch.arange(n, device=xa.device)
        if t is not None:
            xg = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = mean_output(forward(xg)).float()
                diff = logits[rows, t] - logits[rows, y]
                (grad,) = torch.autograd.grad(diff.sum(), xg)
            self.counts["fwd"] += n
            self.counts["bwd"] += n
            return logits.detach(), diff.detach(), grad
        # Untargeted: the Jacobian of every logit difference, one backward per class through one forward.
        n_classes = self._n_classes
        xg = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            out = mean_output(forward(xg)).float()
            grads = torch.stack([torch.autograd.grad(out[:, k].sum(), xg, retain_graph=k < n_classes - 1)[0]
                                 for k in range(n_classes)], dim=1)  # (N, K, ...)
        self.counts["fwd"] += n
        self.counts["bwd"] += n_classes * n
        logits = out.detach()
        diffs = logits - logits[rows, y][:, None]
        grads = grads - grads[rows, y][:, None]
        dual = grads.flatten(2).abs().sum(-1) if threat.norm == "linf" else grads.flatten(2).norm(dim=-1)
        distance = diffs.abs() / (dual + 1e-12)
        distance[rows, y] = float("inf")
        closest = distance.argmin(dim=1)
        return logits, diffs[rows, closest], grads[rows, closest]

    def _step(self, x1: torch.Tensor, x0: torch.Tensor, f: torch.Tensor, grad: torch.Tensor,
              threat: ThreatModel) -> torch.Tensor:
        """One FAB step: project ``x1`` and ``x0`` on the linearized boundary, combine, clip to [0, 1]."""
        n = x1.shape[0]
        w = grad.flatten(1)
        # Boundary: f + w·(z − x1) = 0. From x1 the move d solves w·d = −f; from x0, w·d = −f + w·(x1 − x0).
        c1 = -f
        c0 = -f + (w * (x1 - x0).flatten(1)).sum(dim=1)
        d = project_hyperplane_box(torch.cat([x1.flatten(1), x0.flatten(1)]), torch.cat([w, w]),
                                   torch.cat([c1, c0]), threat.norm)
        norms = (d.abs().amax(dim=1) if threat.norm == "linf" else d.norm(dim=1)).clamp_min(1e-8)
        d1, d0 = d[:n].view_as(x1), d[n:].view_as(x1)
        alpha = (norms[:n] / (norms[:n] + norms[n:])).clamp(0.0, self.alpha_max)
        alpha = alpha.view(-1, *([1] * (x1.dim() - 1)))
        return ((1 - alpha) * (x1 + self.eta * d1) + alpha * (x0 + self.eta * d0)).clamp(0.0, 1.0)

    def _record(self, xa: torch.Tensor, logits: torch.Tensor, active: torch.Tensor, x0: torch.Tensor,
                y: torch.Tensor, idx: torch.Tensor, threat: ThreatModel, best: torch.Tensor,
                best_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check iterates ``xa`` (rows ``active`` of the run, of samples ``idx[active]``): keep the smallest
        adversarial per sample. Returns ``(is_adv, keep)``, keep False for rows whose sample is done
        (adversarial within eps, found by this row or another, with early stop)."""
        is_adv = logits.argmax(dim=1) != y[active]
        if bool(is_adv.any()):
            rows = active[is_adv]
            samples = idx[rows]
            dist = threat.distance(xa[is_adv], x0[rows])
            # Several rows may be the same sample (targets side by side): its closest one competes.
            take = (dist < best_norm[samples]) & first_best_per_group(samples, -dist, best_norm.shape[0])
            best[samples[take]] = xa[is_adv][take]
            best_norm[samples[take]] = dist[take]
        if self.early_stop:
            return is_adv, best_norm[idx[active]] > threat.eps
        return is_adv, torch.ones_like(is_adv)

    def _run(self, forward: Forward, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
             threat: ThreatModel, x1: torch.Tensor, idx: torch.Tensor, best: torch.Tensor,
             best_norm: torch.Tensor) -> None:
        """One restart from ``x1`` for the rows ``idx`` of the batch (``x0 = x[idx]``).

        Each step's result must be checked (is it adversarial? then record it and pull it back towards
        ``x0``). The check can share the next step's gradient forward pass, which saves a forward unless the
        iterate was adversarial (then the pulled-back point needs a fresh forward and backward). FAB often
        oscillates across the boundary, so the check is done separately, gradient-free, whenever more than a
        third of the last check's iterates were adversarial (the break-even with a backward costing about two
        forwards). Both orders compute the same iterates.
        """
        view = (-1, *([1] * (x0.dim() - 1)))
        active = torch.arange(x0.shape[0], device=x0.device)
        unchecked, adv_rate = False, 0.0
        for it in range(self.steps):
            xa = x1[active]
            t_a = None if t is None else t[active]
            logits, f, grad = self._boundary(forward, xa, y[active], t_a, threat)
            if unchecked:
                is_adv, keep = self._record(xa, logits, active, x0, y, idx, threat, best, best_norm)
                adv_rate = float(is_adv.float().mean())
                if bool(is_adv.any()):
                    xa = torch.where(is_adv.view(view), x0[active] + self.beta * (xa - x0[active]), xa)
                    pull = is_adv & keep
                    if bool(pull.any()):
                        t_p = None if t_a is None else t_a[pull]
                        _, f_p, g_p = self._boundary(forward, xa[pull], y[active][pull], t_p, threat)
                        f[pull], grad[pull] = f_p, g_p
                active, xa, f, grad = active[keep], xa[keep], f[keep], grad[keep]
                if active.numel() == 0:
                    return
            x1[active] = self._step(xa, x0[active], f, grad, threat)
            unchecked = True
            if adv_rate > 1 / 3 or it == self.steps - 1:
                xa = x1[active]
                logits = self._as_logits(self._output(forward, xa)).float()
                is_adv, keep = self._record(xa, logits, active, x0, y, idx, threat, best, best_norm)
                adv_rate = float(is_adv.float().mean())
                pulled = active[is_adv]
                x1[pulled] = x0[pulled] + self.beta * (x1[pulled] - x0[pulled])
                active, unchecked = active[keep], False
                if active.numel() == 0:
                    return


@ATTACKS.register("fab", kind="minimum-norm", gradient=True)
def _fab(steps: int = 100, restarts: int = 1, **kwargs) -> FAB:
    return FAB(steps=steps, restarts=restarts, targeted=False, **kwargs)


@ATTACKS.register("fab-t", kind="minimum-norm", gradient=True)
def _fab_targeted(steps: int = 100, restarts: int = 1, n_target_classes: int = 9, **kwargs) -> FAB:
    return FAB(steps=steps, restarts=restarts, targeted=True, n_target_classes=n_target_classes, **kwargs)
