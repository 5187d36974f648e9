"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"), L-inf and L2. Score-based: it only calls ``forward`` under
``torch.no_grad`` (no backward passes) and keeps a random square update when it raises the objective.

Generic over objectives: it maximizes ``objective.loss`` (with the ``cw`` margin it is the paper's margin
loss on logits; with an embedding objective it attacks an encoder), and stops a sample early once
``objective.success`` holds (objectives with ``has_success = False`` use the whole query budget).

Each sample draws its own square position and signs (the paper's per-image random search), vectorized over
the batch. ``p`` (the fraction of pixels a square covers) follows the paper's piecewise-constant schedule,
halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10 000-query budget; with
``rescale_schedule=True`` those breakpoints are scaled to ``n_queries`` (AutoAttack uses the unscaled one).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustssl.threats.attacks.base import ATTACKS, Attack, Forward, select
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, n_queries: int, rescale: bool) -> float:
    """The paper's ``p`` at ``iteration``: ``p_init`` halved at each breakpoint of ``_SCHEDULE`` passed."""
    it = int(iteration / n_queries * 10000) if rescale else iteration
    return p_init / 2 ** sum(it > b for b in _SCHEDULE)


def _window_mask(n: int, height: int, width: int, size: int, generator: torch.Generator,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random ``size × size`` window per sample: mask (n, 1, H, W) bool and its top-left corner (n,) x2."""
    top = torch.randint(0, height - size + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, width - size + 1, (n,), generator=generator, device=device)
    rows = torch.arange(height, device=device)[None, :] - top[:, None]
    cols = torch.arange(width, device=device)[None, :] - left[:, None]
    mask = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return mask[:, None], top, left


def _place(patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int,
           width: int) -> torch.Tensor:
    """Per-sample ``patch`` (n, C, s, s) written into a zero canvas (n, C, H, W) at (top, left)."""
    n, channels, size, _ = patch.shape
    rows = torch.arange(height, device=patch.device)[None, :] - top[:, None]
    cols = torch.arange(width, device=patch.device)[None, :] - left[:, None]
    valid = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    r_idx = rows.clamp(0, size - 1)[:, None, :, None].expand(n, channels, height, size)
    c_idx = cols.clamp(0, size - 1)[:, None, None, :].expand(n, channels, height, width)
    canvas = patch.gather(2, r_idx).gather(3, c_idx)
    return canvas * valid[:, None].to(patch.dtype)


def _centre_weighted(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(rows, cols) bump: nested boxes around the centre, the k-th ring weighted 1/(k+1)^2, unit L2 norm."""
    r = (torch.arange(rows, device=device) - rows // 2).abs()
    c = (torch.arange(cols, device=device) - cols // 2).abs()
    ring = torch.maximum(r[:, None], c[None, :]).float()
    # A cell in ring k lies inside the boxes of radius k, k+1, ...: sum of 1/(j+1)^2 over those boxes.
    radius = max(rows, cols) // 2 + 1
    weights = 1.0 / (torch.arange(radius, device=device, dtype=torch.float32) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    bump = tail[ring.long().clamp(max=radius - 1)]
    return bump / bump.norm()


def l2_square_pattern(size: int, device: torch.device) -> torch.Tensor:
    """(size, size) L2 update pattern of the paper: two centre-weighted bumps of opposite sign (top/bottom
    halves), unit L2 norm. Opposite halves keep the pattern roughly zero-mean, so it changes the image's
    local structure rather than its brightness."""
    half = size // 2
    top = _centre_weighted(half, size, device)
    bottom = -_centre_weighted(size - half, size, device)
    pattern = torch.cat([top, bottom], dim=0)
    return pattern / pattern.norm()


class Square(Attack):
    """Square Attack, L-inf and L2 (score-based; never calls backward).

    Args:
        n_queries: query budget per sample and restart (5000 in AutoAttack).
        restarts: restarts, each on the samples not yet successful.
        p_init: initial fraction of pixels changed per update (0.8 in AutoAttack).
        rescale_schedule: scale the ``p`` schedule's breakpoints to ``n_queries`` (False in AutoAttack).

    ``self.queries`` holds, after a call, the queries each sample used (B,) over all restarts.
    """

    name = "square"
    norms = ("linf", "l2")

    def __init__(self, n_queries: int = 5000, restarts: int = 1, p_init: float = 0.8,
                 rescale_schedule: bool = False):
        super().__init__()
        for key, value in (("n_queries", n_queries), ("restarts", restarts)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Square {key} must be an int >= 1, got {value!r}")
        if not 0.0 < p_init <= 1.0:
            raise ValueError(f"Square p_init must be in (0, 1], got {p_init!r}")
        self.n_queries, self.restarts, self.p_init = n_queries, restarts, p_init
        self.rescale_schedule = rescale_schedule
        self.queries = torch.zeros(0, dtype=torch.long)

    def __repr__(self) -> str:
        return f"Square(n_queries={self.n_queries}, restarts={self.restarts}, p_init={self.p_init})"

    def attack(self, forward: Forward, x: torch.Tensor, target: Any, objective: Objective,
               threat: ThreatModel, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]; ``target`` as ``objective`` expects. Returns (B, C, H, W)."""
        generator = self._new_call(threat, x, generator)
        if x.dim() != 4 or min(x.shape[-2:]) < 2:
            raise ValueError(f"Square needs images (B, C, H, W) with H, W >= 2; got shape {tuple(x.shape)}")
        x = x.detach()
        self.queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        with torch.no_grad():
            reference = self._output(forward, x) if objective.needs_reference else None
            best = x.clone()
            best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
            success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            for _ in range(self.restarts):
                todo = (~success).nonzero().squeeze(1) if objective.has_success else \
                    torch.arange(x.shape[0], device=x.device)
                if todo.numel() == 0:
                    break
                self._run(forward, x, target, objective, reference, threat, generator, todo, best, best_loss,
                          success)
        return best

    def _evaluate(self, forward: Forward, x_new: torch.Tensor, rows: torch.Tensor, target: Any,
                  objective: Objective, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # Random search compares points, so a scheduled objective (SegPGD) is judged by its fixed yardstick.
        out = self._output(forward, x_new)
        self.queries[rows] += 1
        tgt, ref = select(target, rows), select(reference, rows)
        loss = objective.tracking_loss(out, tgt, ref).detach().float()
        done = self._success(objective, out, tgt, ref)
        return loss, done

    def _run(self, forward: Forward, x: torch.Tensor, target: Any, objective: Objective, reference: Any,
             threat: ThreatModel, generator: torch.Generator, todo: torch.Tensor, best: torch.Tensor,
             best_loss: torch.Tensor, success: torch.Tensor) -> None:
        """One restart on rows ``todo``; keeps, per sample, the best point over restarts."""
        x0 = x[todo]
        cur = self._init(x0, threat, generator)
        cur_loss, cur_done = self._evaluate(forward, cur, todo, target, objective, reference)
        self._keep_best(todo, cur, cur_loss, cur_done, best, best_loss, success)
        _, channels, height, width = x.shape
        n_features = channels * height * width
        active = torch.arange(todo.numel(), device=x.device)
        for i in range(1, self.n_queries):
            if objective.has_success:
                active = active[~cur_done[active]]
            if active.numel() == 0:
                break
            p = square_fraction(self.p_init, i, self.n_queries, self.rescale_schedule)
            rows = todo[active]
            if threat.norm == "linf":
                cand = self._linf_update(x0[active], cur[active], p, n_features, threat, generator)
            else:
                cand = self._l2_update(x0[active], cur[active], p, n_features, threat, generator)
            loss, done = self._evaluate(forward, cand, rows, target, objective, reference)
            improved = loss > cur_loss[active]
            keep = active[improved]
            cur[keep] = cand[improved]
            cur_loss[keep] = loss[improved]
            cur_done[keep] = done[improved]
            self._keep_best(rows[improved], cand[improved], loss[improved], done[improved], best, best_loss,
                            success)

    @staticmethod
    def _keep_best(rows: torch.Tensor, cand: torch.Tensor, loss: torch.Tensor, done: torch.Tensor,
                   best: torch.Tensor, best_loss: torch.Tensor, success: torch.Tensor) -> None:
        # A successful point beats any unsuccessful one; among equals, the higher loss wins.
        better = (done & ~success[rows]) | ((done == success[rows]) & (loss > best_loss[rows]))
        idx = rows[better]
        best[idx], best_loss[idx], success[idx] = cand[better], loss[better], done[better]

    def _init(self, x0: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
        n, channels, height, width = x0.shape
        if threat.norm == "linf":
            # Vertical stripes of ±eps (per sample, channel and column): the paper's L-inf initialization.
            signs = torch.randint(0, 2, (n, channels, 1, width), generator=generator, device=x0.device)
            return (x0 + threat.eps * (signs * 2 - 1).to(x0.dtype)).clamp(0.0, 1.0)
        # L2: a grid of bumps (squares of side H // 5) with random signs, rescaled to norm eps.
        size = max(height // 5, 1)
        pattern = l2_square_pattern(size, x0.device) if size > 1 else torch.ones(1, 1, device=x0.device)
        delta = torch.zeros_like(x0)
        top0, left0 = (height - size * (height // size)) // 2, (width - size * (width // size)) // 2
        for top in range(top0, height - size + 1, size):
            for left in range(left0, width - size + 1, size):
                signs = torch.randint(0, 2, (n, channels, 1, 1), generator=generator, device=x0.device)
                delta[:, :, top:top + size, left:left + size] += pattern * (signs * 2 - 1).to(x0.dtype)
        return self._rescale_l2(x0, delta, threat.eps)

    @staticmethod
    def _rescale_l2(x0: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        # Clipping to the box can only shrink the L2 norm, so the result stays in the ball.
        return (x0 + delta * (eps / norms)).clamp(0.0, 1.0)

    def _linf_update(self, x0: torch.Tensor, cur: torch.Tensor, p: float, n_features: int,
                     threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
        """Set one random square per sample to ``x0 ± eps`` (one sign per channel), resampling signs that
        would leave the square unchanged."""
        n, channels, height, width = cur.shape
        size = min(max(int(round(math.sqrt(p * n_features / channels))), 1), min(height, width) - 1)
        mask, _, _ = _window_mask(n, height, width, size, generator, cur.device)
        cand = cur
        redo = torch.ones(n, dtype=torch.bool, device=cur.device)
        for _ in range(10):
            signs = torch.randint(0, 2, (n, channels, 1, 1), generator=generator, device=cur.device) * 2 - 1
            proposal = torch.where(mask, (x0 + threat.eps * signs.to(cur.dtype)).clamp(0.0, 1.0), cur)
            cand = torch.where(redo.view(-1, 1, 1, 1), proposal, cand)
            redo = (cand - cur).flatten(1).abs().amax(dim=1) < 1e-7
            if not bool(redo.any()):
                break
        return cand

    def _l2_update(self, x0: torch.Tensor, cur: torch.Tensor, p: float, n_features: int,
                   threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
        """Move the perturbation mass of two random squares into the first one, add a fresh bump of random
        sign there, and spend any unused budget, keeping ``‖δ‖₂ = eps`` (the paper's L2 update)."""
        n, channels, height, width = cur.shape
        size = max(int(round(math.sqrt(p * n_features / channels))), 3)
        size = min(size + (size % 2 == 0), min(height, width) - 1)
        size = max(size, 1)
        delta = cur - x0
        first, top, left = _window_mask(n, height, width, size, generator, cur.device)
        second, _, _ = _window_mask(n, height, width, size, generator, cur.device)
        union = first | second
        norm_first = (delta * first).flatten(2).norm(dim=2)  # (n, C)
        norm_union = (delta * union).flatten(2).norm(dim=2)
        norm_total = delta.flatten(1).norm(dim=1)
        unused = (threat.eps ** 2 - norm_total ** 2).clamp_min(0.0)
        budget = (unused[:, None] / channels + norm_union ** 2).sqrt()  # per channel
        pattern = l2_square_pattern(size, cur.device) if size > 1 else torch.ones(1, 1, device=cur.device)
        flip = torch.rand(n, generator=generator, device=cur.device) < 0.5
        # The paper's pattern in either orientation, so the sign change runs along rows or columns.
        oriented = torch.where(flip.view(-1, 1, 1), pattern.t()[None], pattern[None])
        signs = torch.randint(0, 2, (n, channels, 1, 1), generator=generator, device=cur.device) * 2 - 1
        inside = _window_crop(delta, top, left, size) / norm_first.clamp_min(1e-12)[:, :, None, None]
        new = oriented[:, None] * signs.to(cur.dtype) + inside
        new = new / new.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None] * budget[:, :, None, None]
        delta = delta * ~union + _place(new, top, left, height, width)
        return self._rescale_l2(x0, delta, threat.eps)


def _window_crop(t: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample crop (n, C, size, size) of ``t`` (n, C, H, W) at (top, left)."""
    n, channels = t.shape[:2]
    r_idx = (top[:, None] + torch.arange(size, device=t.device)[None])[:, None, :, None]
    c_idx = (left[:, None] + torch.arange(size, device=t.device)[None])[:, None, None, :]
    rows = t.gather(2, r_idx.expand(n, channels, size, t.shape[3]))
    return rows.gather(3, c_idx.expand(n, channels, size, size))


@ATTACKS.register("square", kind="score-based", gradient=False)
def _square(n_queries: int = 5000, restarts: int = 1, **kwargs) -> Square:
    return Square(n_queries=n_queries, restarts=restarts, **kwargs)
