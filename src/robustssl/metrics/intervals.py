"""Uncertainty of measured figures: confidence intervals for a proportion (accuracy, attack success rate)
measured on ``n`` samples, the standard error of a mean over repeats, and the paired standard error of an
accuracy difference between two models scored on the same test images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy.stats import norm


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for ``successes`` out of ``n``; returns ``(low, high)`` in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %.
    ``successes`` may be fractional (an accuracy times ``n``), as long as it lies in [0, n].
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval for an ``accuracy`` in [0, 1] measured on ``n`` samples."""
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy!r}")
    return wilson_interval(accuracy * n, n, confidence)


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error of the mean)`` of repeated measurements (sample standard deviation over
    ``sqrt(n)``); the error is 0 for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_and_standard_error needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired_standard_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error, in points, of the accuracy difference of two classifiers on the same test images:
    ``100 * sqrt(sum d^2 - (sum d)^2 / n) / n`` over the per-image differences ``d = a - b``.

    For per-image correctness (bool) that is McNemar's, 100 * sqrt(n01 + n10 - (n01 - n10)^2 / n) / n: only
    the images the two disagree on carry information. ``a`` and ``b`` may also be per-image scores in [0, 1],
    e.g. correctness averaged over several training seeds."""
    if a.shape != b.shape or a.dim() != 1 or len(a) == 0:
        raise ValueError(f"paired_standard_error needs two equal 1-D non-empty tensors, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    d, n = a.double() - b.double(), len(a)
    return 100 * max(float((d * d).sum() - d.sum() ** 2 / n), 0.0) ** 0.5 / n
