"""Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

Confidence = the max softmax probability; ``n_bins`` equal-width bins ``(i/M, (i+1)/M]`` (15 as in Guo et
al.); ``ECE = sum_b (|B_b| / n) * |acc(B_b) - conf(B_b)|``. The streaming meter keeps per-bin counts, so
the dataset-level ECE is exact (a mean of per-batch ECEs is not).
"""

from __future__ import annotations

import torch

DEFAULT_BINS = 15


class CalibrationMeter:
    """``update(probs (B, K), target (B,))`` per batch, ``compute()`` -> ``{"ece": ...}`` in [0, 1]."""

    def __init__(self, n_bins: int = DEFAULT_BINS):
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        self.n_bins = n_bins
        self.count = torch.zeros(n_bins, dtype=torch.float64)
        self.conf_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.correct_sum = torch.zeros(n_bins, dtype=torch.float64)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        if probs.dim() != 2 or target.shape != (probs.shape[0],):
            raise ValueError(f"probs must be (B, K) and target (B,), "
                             f"got {tuple(probs.shape)} and {tuple(target.shape)}")
        p = probs.detach().double().cpu()
        if torch.isnan(p).any() or p.min() < -1e-6 or p.max() > 1 + 1e-6 or (p.sum(1) - 1).abs().max() > 1e-3:
            raise ValueError("probs must be probabilities (rows in [0, 1] summing to 1); "
                             "apply softmax to logits first")
        conf, pred = p.max(dim=1)
        correct = (pred == target.cpu()).double()
        # bin i holds confidences in (i/M, (i+1)/M]; ceil-1 puts a boundary value in the lower bin
        idx = (torch.ceil(conf * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)
        self.count += torch.bincount(idx, minlength=self.n_bins).double()
        self.conf_sum += torch.bincount(idx, weights=conf, minlength=self.n_bins)
        self.correct_sum += torch.bincount(idx, weights=correct, minlength=self.n_bins)

    def compute(self) -> dict[str, float]:
        n = self.count.sum()
        if n == 0:
            raise ValueError("CalibrationMeter.compute() before any update")
        gap = (self.correct_sum - self.conf_sum).abs()  # = count * |acc - conf| per bin
        return {"ece": float(gap.sum() / n)}


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor,
                               n_bins: int = DEFAULT_BINS) -> float:
    """ECE in [0, 1] of softmax ``probs`` ``(B, K)`` against class indices ``target`` ``(B,)``."""
    meter = CalibrationMeter(n_bins)
    meter.update(probs, target)
    return meter.compute()["ece"]
