"""Metrics against small cases worked out by hand (and sklearn's confusion matrix as a reference)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from robustssl.metrics import (
    AccuracyMeter,
    CalibrationMeter,
    DepthMeter,
    SegmentationMeter,
    accuracy,
    accuracy_interval,
    confusion_matrix,
    depth_errors,
    embedding_drift,
    expected_calibration_error,
    mean_iou,
    per_class_iou,
    segmentation_scores,
    topk_correct,
    wilson_interval,
)

# --- classification ---------------------------------------------------------------------------------------
LOGITS = torch.tensor([[3.0, 2.0, 1.0],   # true 0: top-1 right
                       [1.0, 3.0, 2.0],   # true 2: 2nd -> top-2 right only
                       [2.0, 1.0, 3.0],   # true 1: 3rd -> wrong even at top-2
                       [0.0, 0.0, 5.0]])  # true 2: right
TARGET = torch.tensor([0, 2, 1, 2])


def test_topk_accuracy_by_hand():
    assert topk_correct(LOGITS, TARGET, 1).tolist() == [True, False, False, True]
    assert accuracy(LOGITS, TARGET, 1) == pytest.approx(0.5)
    assert accuracy(LOGITS, TARGET, 2) == pytest.approx(0.75)
    assert accuracy(LOGITS, TARGET, 3) == pytest.approx(1.0)


def test_accuracy_meter_pools_samples_not_batches():
    meter = AccuracyMeter(ks=(1, 2, 5))
    meter.update(LOGITS[[0, 3]], TARGET[[0, 3]])  # batch accuracy 1.0
    meter.update(LOGITS[[1, 2]][:1], TARGET[[1]])  # batch accuracy 0.0, one sample
    out = meter.compute()
    assert out["top1"] == pytest.approx(2 / 3)  # a mean of batch means would say 0.5
    assert out["top2"] == pytest.approx(1.0)
    assert "top5" not in out  # only 3 classes


@pytest.mark.parametrize("logits, target, match", [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"\(B, K\)"),
    (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), r"\(B,\)"),
    (torch.zeros(4, 3), torch.full((4,), 3), r"\[0, 2\]"),
    (torch.zeros(4, 3), torch.zeros(4), "integer"),
])
def test_accuracy_rejects_bad_input(logits, target, match):
    with pytest.raises(ValueError, match=match):
        accuracy(logits, target)


def test_topk_rejects_k_above_classes():
    with pytest.raises(ValueError, match="k must lie"):
        accuracy(LOGITS, TARGET, k=4)


# --- segmentation ------------------------------------------------------------------------------------------
# 2 x 4 maps, 4 classes; class 3 is in neither map; 255 pixels are ignored (their predictions too)
SEG_TARGET = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
SEG_PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 3, 2]]])


def test_confusion_matrix_matches_sklearn_and_drops_ignored_pixels():
    conf = confusion_matrix(SEG_PRED, SEG_TARGET, num_classes=4)
    keep = SEG_TARGET != 255
    ref = sk_confusion_matrix(SEG_TARGET[keep].numpy(), SEG_PRED[keep].numpy(), labels=[0, 1, 2, 3])
    assert conf.tolist() == ref.tolist()
    assert int(conf.sum()) == 6


def test_segmentation_scores_by_hand():
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 (a 0 predicted 1) -> IoU 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 1, FP 0, FN 1 -> 1/2;  class 3: absent -> excluded
    scores = segmentation_scores(confusion_matrix(SEG_PRED, SEG_TARGET, 4))
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert scores["classes_counted"] == 3
    # recalls: class 0 1/2, class 1 2/2, class 2 1/2
    assert scores["mean_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    iou = per_class_iou(confusion_matrix(SEG_PRED, SEG_TARGET, 4))
    assert math.isnan(iou[3]) and iou[1] == pytest.approx(2 / 3)


def test_class_predicted_but_absent_from_target_counts_as_zero_iou():
    target = torch.tensor([[0, 0]])
    pred = torch.tensor([[0, 1]])
    # class 0: TP 1, FN 1 -> 1/2; class 1: FP 1 -> IoU 0 (present in prediction, so it counts)
    assert mean_iou(pred, target, 2) == pytest.approx(0.25)


def test_segmentation_meter_is_dataset_level():
    meter = SegmentationMeter(2)
    # image 1: 4 pixels of class 0, all right; image 2: 1 pixel of class 1 predicted 0
    meter.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    meter.update(torch.zeros(1, 1, 1, dtype=torch.long), torch.ones(1, 1, 1, dtype=torch.long))
    # pooled: class 0 TP 4, FP 1 -> 4/5; class 1 TP 0, FN 1 -> 0; mIoU 0.4 (mean of per-image mIoUs: 0.5)
    assert meter.compute()["miou"] == pytest.approx(0.4)


def test_segmentation_meter_takes_logits():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2, 0, 0] = 1.0
    logits[0, 1, 0, 1] = 1.0
    meter = SegmentationMeter(3)
    meter.update(logits, torch.tensor([[[2, 2]]]))
    assert meter.compute()["pixel_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("pred, target, match", [
    (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), "same shape"),
    (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "integer"),
    (torch.full((1, 2, 2), 5), torch.zeros(1, 2, 2, dtype=torch.long), r"pred labels must lie in \[0, 3\]"),
    (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7), "target labels"),
])
def test_confusion_matrix_rejects_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, 4)


def test_all_ignored_is_an_error():
    conf = confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255), 3)
    with pytest.raises(ValueError, match="ignore_index"):
        segmentation_scores(conf)


# --- depth -------------------------------------------------------------------------------------------------
def test_depth_errors_by_hand_skip_invalid_pixels():
    pred = torch.tensor([[[1.0, 3.0], [2.0, 9.0]]])
    target = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # last pixel invalid
    out = depth_errors(pred, target)
    # errors 0, 1, -2 -> RMSE sqrt(5/3); abs rel (0 + 1/2 + 2/4)/3 = 1/3
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert out["abs_rel"] == pytest.approx(1 / 3)
    # ratios 1, 1.5, 2 -> delta1 (< 1.25) 1/3, delta2 (< 1.5625) 2/3, delta3 (< 1.953) 2/3
    assert out["delta1"] == pytest.approx(1 / 3)
    assert out["delta2"] == pytest.approx(2 / 3)
    assert out["delta3"] == pytest.approx(2 / 3)
    assert out["valid_pixels"] == 3


def test_depth_pixel_pooled_vs_image_mean():
    # image A: 1 valid pixel, error 3; image B: 3 valid pixels, error 0
    pred = torch.tensor([[[4.0, 0.5], [0.5, 0.5]], [[1.0, 1.0], [1.0, 1.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]])
    assert depth_errors(pred, target)["rmse"] == pytest.approx(math.sqrt(9 / 4))
    assert depth_errors(pred, target, reduction="images")["rmse"] == pytest.approx((3 + 0) / 2)


def test_depth_meter_streams_like_one_batch():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 1, 4, 4, generator=g) * 5 + 0.1
    target = torch.rand(6, 4, 4, generator=g) * 5
    target[target < 1] = 0
    meter = DepthMeter()
    meter.update(pred[:4], target[:4])
    meter.update(pred[4:], target[4:])
    whole = depth_errors(pred, target)
    for key, value in meter.compute().items():
        assert value == pytest.approx(whole[key])


def test_depth_range_clamps_predictions_and_filters_targets():
    pred = torch.tensor([[[20.0, 0.5]]])
    target = torch.tensor([[[10.0, 12.0]]])  # 12 m is outside the range
    out = depth_errors(pred, target, min_depth=1e-3, max_depth=10.0)
    assert out["valid_pixels"] == 1 and out["rmse"] == pytest.approx(0.0)


def test_non_positive_prediction_never_within_delta():
    out = depth_errors(torch.tensor([[[-1.0, 0.0]]]), torch.tensor([[[1.0, 1.0]]]))
    assert out["delta3"] == 0.0


def test_depth_errors_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        depth_errors(torch.tensor([[[math.nan]]]), torch.tensor([[[1.0]]]))
    with pytest.raises(ValueError, match="no valid depth"):
        depth_errors(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="reduction"):
        depth_errors(torch.ones(1, 2, 2), torch.ones(1, 2, 2), reduction="median")
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        depth_errors(torch.ones(1, 2, 2), torch.ones(1, 3, 2))


# --- calibration -------------------------------------------------------------------------------------------
def test_ece_by_hand():
    # confidence 0.9 twice (1 right) -> bin 13, |0.5 - 0.9|;
    # confidence 0.6 twice (both right) -> bin 8, |1 - 0.6|
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    target = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(probs, target) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_ece_zero_when_confidence_matches_accuracy_per_bin():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    target = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, target) == pytest.approx(0.0, abs=1e-12)


def test_ece_one_bin_is_the_global_gap():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    target = torch.tensor([1, 1])  # accuracy 0.5, mean confidence 0.8
    assert expected_calibration_error(probs, target, n_bins=1) == pytest.approx(0.3)


def test_calibration_meter_pools_batches_and_checks_input():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    target = torch.tensor([0, 1, 1, 1])
    meter = CalibrationMeter()
    meter.update(probs[:1], target[:1])
    meter.update(probs[1:], target[1:])
    assert meter.compute()["ece"] == pytest.approx(expected_calibration_error(probs, target))
    with pytest.raises(ValueError, match="softmax"):
        meter.update(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationMeter(0)


# --- confidence intervals ----------------------------------------------------------------------------------
def test_wilson_interval_by_hand():
    z = 1.959963984540054
    # 0 of 10: lower 0, upper z^2/n / (1 + z^2/n)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx((z * z / 10) / (1 + z * z / 10))
    # 5 of 10: centred on 0.5, half width z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4 n^2))
    half = z / (1 + z * z / 10) * math.sqrt(0.025 + z * z / 400)
    assert wilson_interval(5, 10) == pytest.approx((0.5 - half, 0.5 + half))
    assert wilson_interval(5, 10)[0] == pytest.approx(0.2366, abs=1e-4)  # the textbook value


def test_wilson_interval_symmetry_and_width():
    low, high = wilson_interval(3, 20)
    low_c, high_c = wilson_interval(17, 20)
    assert (low, high) == pytest.approx((1 - high_c, 1 - low_c))
    assert accuracy_interval(0.15, 20) == pytest.approx((low, high))
    wide, narrow = wilson_interval(50, 100, 0.99), wilson_interval(50, 100, 0.90)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


@pytest.mark.parametrize("args, match", [
    ((11, 10), "successes"), ((1, 0), "n must"), ((1, 10, 1.0), "confidence"),
])
def test_wilson_interval_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(*args)


# --- embedding drift ---------------------------------------------------------------------------------------
def test_embedding_drift_by_hand():
    clean = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    perturbed = torch.tensor([[0.0, 1.0], [6.0, 8.0], [-1.0, -1.0]])
    out = embedding_drift(clean, perturbed)
    torch.testing.assert_close(out["cosine"], torch.tensor([0.0, 1.0, -1.0]))
    torch.testing.assert_close(out["relative_l2"], torch.tensor([math.sqrt(2), 1.0, 2.0]))


def test_embedding_drift_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        embedding_drift(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        embedding_drift(torch.zeros(1, 2), torch.tensor([[math.nan, 0.0]]))
