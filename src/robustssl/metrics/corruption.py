"""Corruption-robustness summaries (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR; ImageNet-C).

Inputs are tables ``{corruption: [value at severity 1, ..., severity S]}``; errors are fractions in [0, 1].

- ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}``; ``mCE`` = mean of ``CE_c`` over corruptions.
- relative ``CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)``; relative mCE = mean.
- unnormalized mean error = mean of ``E_{s,c}`` over every corruption and severity.
- dense tasks: relative degradation per cell, ``(clean - corrupted) / clean`` for higher-is-better metrics
  (mIoU) and ``(corrupted - clean) / clean`` for lower-is-better ones (RMSE); 0 = unaffected, larger = worse.

A baseline entry may be a per-severity sequence or a single number, read as the mean over severities
(``sum_s E^base = S * mean``), which is how the AlexNet errors below are published.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: AlexNet top-1 error on ImageNet-C per corruption, averaged over severities 1-5 (Hendrycks & Dietterich
#: 2019; the normalizers of their mCE, as distributed with the benchmark's evaluation code).
ALEXNET_IMAGENET_C_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
#: AlexNet clean ImageNet top-1 error: the paper's Table 1 lists 43.5 %; this is the exact value of the
#: torchvision AlexNet they evaluate (top-1 accuracy 56.522 %).
ALEXNET_IMAGENET_CLEAN_ERROR = 0.43478

Table = Mapping[str, Sequence[float]]
Baseline = Mapping[str, float | Sequence[float]]


def _check_table(table: Table, what: str, unit_range: bool = True) -> None:
    if not table:
        raise ValueError(f"{what}: empty table; expected {{corruption: [value per severity]}}")
    for name, values in table.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"{what}[{name!r}]: expected a non-empty sequence of per-severity values, "
                             f"got {values!r}")
        for v in values:
            if not isinstance(v, (int, float)) or math.isnan(v) or (unit_range and not 0 <= v <= 1):
                accepted = "numbers in [0, 1]" if unit_range else "numbers"
                raise ValueError(f"{what}[{name!r}]: values must be {accepted}, got {v!r}")


def _baseline_sum(baseline: Baseline, name: str, severities: int, offset: float = 0.0) -> float:
    if name not in baseline:
        raise ValueError(f"no baseline error for corruption {name!r}; "
                         f"the baseline has: {', '.join(sorted(baseline))}")
    entry = baseline[name]
    if isinstance(entry, (int, float)):
        return severities * (float(entry) - offset)
    if len(entry) != severities:
        raise ValueError(f"baseline for {name!r} has {len(entry)} severities, the errors have {severities}")
    return sum(float(e) - offset for e in entry)


def corruption_errors(errors: Table, baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS) -> dict[str, float]:
    """``{corruption: CE_c}`` normalized by ``baseline`` (default: AlexNet on ImageNet-C)."""
    _check_table(errors, "errors")
    out = {}
    for name, values in errors.items():
        denom = _baseline_sum(baseline, name, len(values))
        if denom <= 0:
            raise ValueError(f"baseline errors for {name!r} sum to {denom}; cannot normalize by it")
        out[name] = sum(values) / denom
    return out


def mean_corruption_error(errors: Table, baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS) -> float:
    """mCE: mean over corruptions of :func:`corruption_errors` (1.0 = as bad as the baseline)."""
    ce = corruption_errors(errors, baseline)
    return sum(ce.values()) / len(ce)


def relative_corruption_errors(
        errors: Table, clean_error: float, baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS,
        baseline_clean_error: float = ALEXNET_IMAGENET_CLEAN_ERROR) -> dict[str, float]:
    """``{corruption: relative CE_c}``: the error *increase* over clean, normalized by the baseline's."""
    _check_table(errors, "errors")
    for what, v in (("clean_error", clean_error), ("baseline_clean_error", baseline_clean_error)):
        if not 0 <= v <= 1:
            raise ValueError(f"{what} must lie in [0, 1], got {v!r}")
    out = {}
    for name, values in errors.items():
        denom = _baseline_sum(baseline, name, len(values), offset=baseline_clean_error)
        if denom <= 0:
            raise ValueError(f"baseline error increase for {name!r} is {denom:.4g} <= 0; "
                             "relative CE is undefined")
        out[name] = sum(v - clean_error for v in values) / denom
    return out


def relative_mean_corruption_error(errors: Table, clean_error: float,
                                   baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS,
                                   baseline_clean_error: float = ALEXNET_IMAGENET_CLEAN_ERROR) -> float:
    """Relative mCE: mean over corruptions of :func:`relative_corruption_errors`."""
    rce = relative_corruption_errors(errors, clean_error, baseline, baseline_clean_error)
    return sum(rce.values()) / len(rce)


def mean_error(errors: Table) -> float:
    """Unnormalized mean error over every corruption and severity (no baseline needed)."""
    _check_table(errors, "errors")
    values = [v for vs in errors.values() for v in vs]
    return sum(values) / len(values)


def errors_from_accuracies(accuracies: Table) -> dict[str, list[float]]:
    """``{corruption: [1 - accuracy per severity]}``."""
    _check_table(accuracies, "accuracies")
    return {name: [1.0 - a for a in values] for name, values in accuracies.items()}


def relative_degradation(clean: float, corrupted: Table, higher_is_better: bool) -> dict[str, list[float]]:
    """Per corruption and severity, how much worse than ``clean`` a dense-task metric got, as a fraction
    of ``clean``: mIoU (``higher_is_better=True``) or RMSE (``False``). 0 = unaffected."""
    _check_table(corrupted, "corrupted", unit_range=False)
    if not clean > 0 or math.isinf(clean):
        raise ValueError(f"clean metric must be a positive finite number to normalize by, got {clean!r}")
    sign = 1.0 if higher_is_better else -1.0
    return {name: [sign * (clean - v) / clean for v in values] for name, values in corrupted.items()}


def mean_relative_degradation(clean: float, corrupted: Table, higher_is_better: bool) -> float:
    """Mean of :func:`relative_degradation` over every corruption and severity."""
    table = relative_degradation(clean, corrupted, higher_is_better)
    values = [v for vs in table.values() for v in vs]
    return sum(values) / len(values)
