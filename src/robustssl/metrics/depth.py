"""Monocular depth metrics (Eigen et al. 2014): RMSE (metres), AbsRel, and the threshold accuracies
``delta_i`` = fraction of pixels with ``max(pred / gt, gt / pred) < 1.25 ** i``.

Only **valid** pixels count: ground truth ``> 0`` and finite (and, if given, inside ``[min_depth,
max_depth]``, with predictions clamped to that range, as the NYU-v2 evaluations of BTS and DINOv2 do).

Reduction: by default the metrics are **pixel-pooled** over the whole dataset (sums of squared / relative
errors over every valid pixel, divided by the number of valid pixels), which is what the streaming
accumulators in the NYU-v2 codebases report. ``reduction="images"`` instead averages per-image values (the
convention of Eigen's original evaluation); the two differ when images have different numbers of valid
pixels.
"""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("pixels", "images")
DELTA_BASE = 1.25


def _prepare(pred: torch.Tensor, target: torch.Tensor, min_depth: float | None,
             max_depth: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten to ``(B, P)``; return pred (clamped if a range is given), target and the valid mask."""
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (B, H, W) or (B, 1, H, W) depth maps, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    if torch.isnan(pred).any():
        raise ValueError("predicted depth contains NaN")
    pred, target = pred.detach().double().flatten(1), target.detach().double().flatten(1)
    valid = torch.isfinite(target) & (target > 0)
    if min_depth is not None:
        valid &= target >= min_depth
    if max_depth is not None:
        valid &= target <= max_depth
    if min_depth is not None or max_depth is not None:
        pred = pred.clamp(min=min_depth, max=max_depth)
    return pred, target, valid


def _pixel_terms(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image sums over valid pixels, ``(B,)`` each: n, squared error, abs rel, delta counts."""
    safe_t = torch.where(valid, target, torch.ones_like(target))
    # a non-positive prediction is infinitely far off in ratio terms (never within a delta threshold)
    ratio = torch.where(pred > 0, torch.maximum(pred / safe_t, safe_t / pred.clamp_min(1e-300)),
                        torch.full_like(pred, math.inf))
    v = valid.double()
    err = pred - target
    terms = {"n": v.sum(1), "sq": (err**2 * v).sum(1), "rel": (err.abs() / safe_t * v).sum(1)}
    for i in (1, 2, 3):
        terms[f"d{i}"] = ((ratio < DELTA_BASE ** i).double() * v).sum(1)
    return terms


def _scores(n: torch.Tensor, sq: torch.Tensor, rel: torch.Tensor,
            d: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"rmse": torch.sqrt(sq / n), "abs_rel": rel / n}
    out.update({f"delta{i + 1}": di / n for i, di in enumerate(d)})
    return out


def depth_errors(pred: torch.Tensor, target: torch.Tensor, *, min_depth: float | None = None,
                 max_depth: float | None = None, reduction: str = "pixels") -> dict[str, float]:
    """``rmse`` (metres), ``abs_rel``, ``delta1..3`` (in [0, 1]) and ``valid_pixels`` of one batch.

    ``pred``/``target``: ``(B, H, W)`` or ``(B, 1, H, W)`` metres; target 0 = invalid.
    """
    meter = DepthMeter(min_depth=min_depth, max_depth=max_depth, reduction=reduction)
    meter.update(pred, target)
    return meter.compute()


class DepthMeter:
    """Streaming depth metrics; ``update(pred, target)`` per batch, ``compute()`` at the end."""

    def __init__(self, *, min_depth: float | None = None, max_depth: float | None = None,
                 reduction: str = "pixels"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; accepted: {', '.join(REDUCTIONS)}")
        if min_depth is not None and max_depth is not None and not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth!r}, {max_depth!r}")
        self.min_depth, self.max_depth, self.reduction = min_depth, max_depth, reduction
        self.sums = {k: 0.0 for k in ("n", "sq", "rel", "d1", "d2", "d3")}
        self.image_sums = {k: 0.0 for k in ("rmse", "abs_rel", "delta1", "delta2", "delta3")}
        self.images = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        terms = _pixel_terms(*_prepare(pred, target, self.min_depth, self.max_depth))
        for k, v in terms.items():
            self.sums[k] += float(v.sum())
        has = terms["n"] > 0  # images without a valid pixel have no per-image value
        if has.any():
            per_image = _scores(terms["n"][has], terms["sq"][has], terms["rel"][has],
                                [terms[f"d{i}"][has] for i in (1, 2, 3)])
            for k, v in per_image.items():
                self.image_sums[k] += float(v.sum())
            self.images += int(has.sum())

    def compute(self) -> dict[str, float]:
        if self.sums["n"] == 0:
            raise ValueError("no valid depth pixels (ground truth > 0 and inside the depth range) were seen")
        if self.reduction == "images":
            out = {k: v / self.images for k, v in self.image_sums.items()}
        else:
            s = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.sums.items()}
            pooled = _scores(s["n"], s["sq"], s["rel"], [s["d1"], s["d2"], s["d3"]])
            out = {k: float(v) for k, v in pooled.items()}
        out["valid_pixels"] = int(self.sums["n"])
        return out
