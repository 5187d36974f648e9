"""Top-k accuracy, functional and streaming.

The dataset-level accuracy is (correct over all samples) / n, which differs from a mean of per-batch
accuracies when the last batch is smaller; :class:`AccuracyMeter` keeps counts for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_logits(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be (B,) with B={logits.shape[0]}, got shape {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(f"target class indices must lie in [0, {logits.shape[1] - 1}], "
                         f"got range [{int(target.min())}, {int(target.max())}]")


def topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> torch.Tensor:
    """``(B,)`` bool: class ``target`` ``(B,)`` is among the ``k`` highest of ``logits`` ``(B, K)``."""
    _check_logits(logits, target)
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must lie in [1, {logits.shape[1]}] (number of classes), got {k}")
    if k == 1:
        return logits.argmax(dim=1) == target
    top = logits.topk(k, dim=1).indices
    return (top == target.unsqueeze(1)).any(dim=1)


def accuracy(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> float:
    """Top-``k`` accuracy in [0, 1] of a batch."""
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return float(topk_correct(logits, target, k).float().mean())


class AccuracyMeter:
    """Streaming top-k accuracy: ``update(logits, target)`` per batch, ``compute()`` -> ``{"top1": ..}``.

    ``ks`` larger than the number of classes are skipped (top-5 of a 3-class problem is meaningless).
    """

    def __init__(self, ks: Sequence[int] = (1, 5)):
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive ints, got {tuple(ks)!r}")
        self.ks = tuple(ks)
        self.correct = {k: 0 for k in self.ks}
        self.n = 0
        self.num_classes: int | None = None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        _check_logits(logits, target)
        self.num_classes = logits.shape[1]
        for k in self.ks:
            if k <= self.num_classes:
                self.correct[k] += int(topk_correct(logits, target, k).sum())
        self.n += logits.shape[0]

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("AccuracyMeter.compute() before any update")
        return {f"top{k}": self.correct[k] / self.n for k in self.ks if k <= (self.num_classes or 0)}
