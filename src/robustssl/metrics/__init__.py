"""Metrics: accuracy, mIoU, depth errors, mCE, embedding drift, calibration, confidence intervals.

Functional forms take one batch; ``*Meter`` classes accumulate over a dataset where the dataset-level value is
not a mean of batch values (accuracy with a short last batch, mIoU, pixel-pooled depth errors, ECE).
"""

from robustssl.metrics.calibration import CalibrationMeter, expected_calibration_error
from robustssl.metrics.classification import AccuracyMeter, accuracy, topk_correct
from robustssl.metrics.corruption import (
    ALEXNET_IMAGENET_C_ERRORS,
    ALEXNET_IMAGENET_CLEAN_ERROR,
    corruption_errors,
    errors_from_accuracies,
    mean_corruption_error,
    mean_error,
    mean_relative_degradation,
    relative_corruption_errors,
    relative_degradation,
    relative_mean_corruption_error,
)
from robustssl.metrics.depth import DepthMeter, depth_errors
from robustssl.metrics.drift import embedding_drift
from robustssl.metrics.intervals import (
    accuracy_interval,
    mean_and_standard_error,
    paired_standard_error,
    wilson_interval,
)
from robustssl.metrics.segmentation import (
    SegmentationMeter,
    confusion_matrix,
    mean_iou,
    per_class_iou,
    segmentation_scores,
)

__all__ = [
    "ALEXNET_IMAGENET_CLEAN_ERROR", "ALEXNET_IMAGENET_C_ERRORS", "AccuracyMeter", "CalibrationMeter",
    "DepthMeter", "SegmentationMeter", "accuracy", "accuracy_interval", "confusion_matrix",
    "corruption_errors", "depth_errors", "embedding_drift", "errors_from_accuracies",
    "expected_calibration_error", "mean_and_standard_error", "mean_corruption_error", "mean_error",
    "mean_iou", "mean_relative_degradation", "paired_standard_error", "per_class_iou",
    "relative_corruption_errors", "relative_degradation", "relative_mean_corruption_error",
    "segmentation_scores", "topk_correct", "wilson_interval",
]
