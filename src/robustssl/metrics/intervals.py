"""Confidence intervals for a proportion (accuracy, attack success rate) measured on ``n`` samples."""

from __future__ import annotations

import math

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
