"""Semantic segmentation metrics from a dataset-level confusion matrix.

Conventions (as in mmsegmentation and the DINOv2 linear-segmentation evaluation):

- pixels whose target is ``ignore_index`` (255) are dropped before counting;
- ``IoU_c = TP / (TP + FP + FN)``; a class absent from both prediction and target (``TP + FP + FN = 0``)
  has no IoU and is **excluded** from ``miou`` rather than counted as 0 or 1;
- ``mean_accuracy`` is the mean per-class recall ``TP / (TP + FN)`` over classes present in the target;
- ``pixel_accuracy`` is the fraction of all counted pixels labelled correctly.

mIoU is a ratio of sums over the whole dataset, not a mean of per-image mIoUs; :class:`SegmentationMeter`
accumulates the confusion matrix for that reason.
"""

from __future__ import annotations

import torch

from robustssl.data.base import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows = target class, columns = predicted class.

    ``pred`` and ``target`` are integer label maps of the same shape (e.g. ``(B, H, W)``); targets equal to
    ``ignore_index`` are skipped, other targets and all predictions must lie in ``[0, num_classes)``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    for name, t in (("pred", pred), ("target", target)):
        if t.dtype.is_floating_point:
            raise ValueError(f"{name} must be an integer label map, got dtype {t.dtype} "
                             "(argmax the logits first)")
    keep = target != ignore_index
    p, t = pred[keep].long(), target[keep].long()
    for name, v in (("pred", p), ("target", t)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes - 1}] "
                             f"(or be {ignore_index} in the target), "
                             f"got range [{int(v.min())}, {int(v.max())}]")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float]:
    """``miou``, ``mean_accuracy``, ``pixel_accuracy`` (all in [0, 1]) from a ``(K, K)`` confusion matrix,
    plus ``classes_counted``, the number of classes that entered ``miou``."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be (K, K), got {tuple(confusion.shape)}")
    conf = confusion.double()
    total = conf.sum()
    if total == 0:
        raise ValueError("no labelled pixels: every target pixel was ignore_index")
    tp = conf.diag()
    in_target, in_pred = conf.sum(dim=1), conf.sum(dim=0)
    union = in_target + in_pred - tp
    present = union > 0
    iou = tp[present] / union[present]
    recall = tp[in_target > 0] / in_target[in_target > 0]
    return {"miou": float(iou.mean()), "mean_accuracy": float(recall.mean()),
            "pixel_accuracy": float(tp.sum() / total), "classes_counted": int(present.sum())}


def per_class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """``(K,)`` float64 IoU per class, NaN for classes absent from both prediction and target."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(dim=1) + conf.sum(dim=0) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
             ignore_index: int = IGNORE_INDEX) -> float:
    """mIoU in [0, 1] of one batch of label maps (see the module docstring for the conventions)."""
    return segmentation_scores(confusion_matrix(pred, target, num_classes, ignore_index))["miou"]


class SegmentationMeter:
    """Streaming confusion matrix. ``update(logits (B, K, H, W) or labels (B, H, W), target (B, H, W))``."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.n = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if output.dim() == target.dim() + 1:
            if output.shape[1] != self.num_classes:
                raise ValueError(f"logits have {output.shape[1]} classes, "
                                 f"the meter expects {self.num_classes}")
            output = output.argmax(dim=1)
        self.confusion += confusion_matrix(output, target, self.num_classes, self.ignore_index).cpu()
        self.n += output.shape[0]

    def compute(self) -> dict[str, float]:
        return segmentation_scores(self.confusion)
