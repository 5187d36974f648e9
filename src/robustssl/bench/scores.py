"""Task metrics as per-chunk statistics that add up: the runner computes them chunk by chunk (on any rank)
and adds them up in chunk order, so the final value does not depend on how chunks were spread over ranks
or runs.

- classification: correct count -> ``top1`` with its Wilson interval (``top1_ci_low``, ``top1_ci_high``);
- segmentation: the confusion matrix -> ``miou``, ``pixel_accuracy``, ``mean_accuracy``;
- depth: the pixel sums of :class:`~robustssl.metrics.DepthMeter` -> ``rmse``, ``abs_rel``, ``delta1``;
- embedding drift: sums of the per-sample cosine similarity and relative L2 distance to the clean embedding
  -> ``cosine_to_clean``, ``relative_l2``.
"""

from __future__ import annotations

from typing import Any

import torch

from robustssl.metrics.depth import DepthMeter
from robustssl.metrics.drift import embedding_drift
from robustssl.metrics.intervals import accuracy_interval
from robustssl.metrics.segmentation import confusion_matrix, segmentation_scores

#: per task kind: (headline metric, larger is better)
HEADLINE = {
    "classification": ("top1", True),
    "segmentation": ("miou", True),
    "depth": ("rmse", False),
    "embedding": ("cosine_to_clean", True),
}
#: metrics stored per task kind, in row order
METRICS = {
    "classification": ("top1", "top1_ci_low", "top1_ci_high"),
    "segmentation": ("miou", "pixel_accuracy", "mean_accuracy"),
    "depth": ("rmse", "abs_rel", "delta1"),
    "embedding": ("cosine_to_clean", "relative_l2"),
}
#: whether each metric grows with quality (for relative degradation)
HIGHER_IS_BETTER = {
    "top1": True,
    "top1_ci_low": True,
    "top1_ci_high": True,
    "miou": True,
    "pixel_accuracy": True,
    "mean_accuracy": True,
    "rmse": False,
    "abs_rel": False,
    "delta1": True,
    "cosine_to_clean": True,
    "relative_l2": False,
}


def task_stats(
    kind: str, output: torch.Tensor, target: torch.Tensor, depth_range: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Statistics of one chunk: ``output`` is the model's (logits ``(B, K)``, segmentation logits
    ``(B, K, H, W)`` or depth ``(B, 1, H, W)``), ``target`` the matching labels, masks or depth maps."""
    output = output.detach().float().cpu()
    target = target.cpu()
    if kind == "classification":
        return {"correct": int((output.argmax(1) == target).sum()), "n": int(target.shape[0])}
    if kind == "segmentation":
        return {"confusion": confusion_matrix(output.argmax(1), target, output.shape[1])}
    low, high = depth_range if depth_range is not None else (None, None)
    meter = DepthMeter(min_depth=low, max_depth=high)
    meter.update(output, target)
    return {"sums": dict(meter.sums), "range": (low, high)}


def drift_stats(clean: torch.Tensor, perturbed: torch.Tensor) -> dict[str, Any]:
    """Statistics of one chunk of embeddings ``(B, D)``."""
    drift = embedding_drift(clean, perturbed)
    return {
        "cos": float(drift["cosine"].double().sum()),
        "rel": float(drift["relative_l2"].double().sum()),
        "n": int(clean.shape[0]),
    }


def combine(kind: str, parts: list[dict[str, Any]], confidence: float = 0.95) -> dict[str, float]:
    """The metrics of ``kind`` (a task kind or ``embedding``) from chunk statistics, added in list order."""
    if not parts:
        raise ValueError("no chunk statistics to combine")
    if kind == "classification":
        correct, n = sum(p["correct"] for p in parts), sum(p["n"] for p in parts)
        top1 = correct / n
        low, high = accuracy_interval(top1, n, confidence)
        return {"top1": top1, "top1_ci_low": low, "top1_ci_high": high}
    if kind == "segmentation":
        confusion = parts[0]["confusion"].clone()
        for p in parts[1:]:
            confusion += p["confusion"]
        scores = segmentation_scores(confusion)
        return {k: float(scores[k]) for k in METRICS["segmentation"]}
    if kind == "depth":
        low, high = parts[0]["range"]
        meter = DepthMeter(min_depth=low, max_depth=high)
        for p in parts:
            for key, value in p["sums"].items():
                meter.sums[key] += value
        scores = meter.compute()
        return {k: float(scores[k]) for k in METRICS["depth"]}
    if kind == "embedding":
        n = sum(p["n"] for p in parts)
        return {
            "cosine_to_clean": sum(p["cos"] for p in parts) / n,
            "relative_l2": sum(p["rel"] for p in parts) / n,
        }
    raise ValueError(f"unknown task kind {kind!r}; accepted: {', '.join(HEADLINE)}")
