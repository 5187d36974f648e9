"""mCE, relative mCE, mean error and relative degradation against hand-computed tables."""

from __future__ import annotations

import pytest

from robustssl.metrics import (
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

ERRORS = {"a": [0.2, 0.4], "b": [0.5, 0.5]}
# "a" given per severity, "b" as a mean over severities (as the AlexNet table is published)
BASELINE = {"a": [0.4, 0.4], "b": 0.25}


def test_corruption_errors_by_hand():
    # CE_a = (0.2 + 0.4) / (0.4 + 0.4) = 0.75; CE_b = (0.5 + 0.5) / (2 * 0.25) = 2
    assert corruption_errors(ERRORS, BASELINE) == pytest.approx({"a": 0.75, "b": 2.0})
    assert mean_corruption_error(ERRORS, BASELINE) == pytest.approx(1.375)


def test_relative_mce_by_hand():
    # a: (0.1 + 0.3) / (0.2 + 0.2) = 1;  b: (0.4 + 0.4) / (2 * (0.25 - 0.2)) = 8
    rce = relative_corruption_errors(ERRORS, 0.1, BASELINE, baseline_clean_error=0.2)
    assert rce == pytest.approx({"a": 1.0, "b": 8.0})
    assert relative_mean_corruption_error(ERRORS, 0.1, BASELINE, 0.2) == pytest.approx(4.5)


def test_mean_error_and_accuracies():
    assert mean_error(ERRORS) == pytest.approx(0.4)
    assert errors_from_accuracies({"a": [0.8, 0.6]})["a"] == pytest.approx([0.2, 0.4])


def test_alexnet_table_is_the_published_one():
    assert len(ALEXNET_IMAGENET_C_ERRORS) == 15
    assert ALEXNET_IMAGENET_C_ERRORS["gaussian_noise"] == pytest.approx(0.886428)
    assert ALEXNET_IMAGENET_C_ERRORS["jpeg_compression"] == pytest.approx(0.6065)
    # AlexNet's own errors give mCE and relative mCE of exactly 1 (100 %) by construction
    alexnet = {name: [err] * 5 for name, err in ALEXNET_IMAGENET_C_ERRORS.items()}
    assert mean_corruption_error(alexnet) == pytest.approx(1.0)
    assert relative_mean_corruption_error(alexnet, ALEXNET_IMAGENET_CLEAN_ERROR) == pytest.approx(1.0)


def test_half_of_alexnets_error_is_mce_one_half():
    half = {"fog": [e / 2 for e in [0.819324] * 5], "snow": [0.866816 / 2] * 5}
    assert mean_corruption_error(half) == pytest.approx(0.5)


def test_relative_degradation_by_hand():
    miou = relative_degradation(0.5, {"fog": [0.4, 0.25]}, higher_is_better=True)
    assert list(miou) == ["fog"] and miou["fog"] == pytest.approx([0.2, 0.5])
    rmse = relative_degradation(2.0, {"fog": [3.0], "snow": [2.0]}, higher_is_better=False)
    assert rmse["fog"] == pytest.approx([0.5]) and rmse["snow"] == pytest.approx([0.0])
    assert mean_relative_degradation(2.0, {"fog": [3.0], "snow": [2.0]}, False) == pytest.approx(0.25)


def test_unknown_corruption_lists_the_baseline_names():
    with pytest.raises(ValueError, match="gaussian_noise"):
        mean_corruption_error({"my_blur": [0.5]})


@pytest.mark.parametrize("errors, match", [
    ({}, "empty"),
    ({"fog": []}, "non-empty"),
    ({"fog": [1.5]}, r"in \[0, 1\]"),
    ({"fog": "0.5"}, "sequence"),
])
def test_bad_tables_are_rejected(errors, match):
    with pytest.raises(ValueError, match=match):
        mean_corruption_error(errors)


def test_severity_count_mismatch_and_bad_clean_values():
    with pytest.raises(ValueError, match="severities"):
        corruption_errors({"a": [0.1, 0.2, 0.3]}, BASELINE)
    with pytest.raises(ValueError, match="clean_error"):
        relative_mean_corruption_error(ERRORS, 1.5, BASELINE, 0.2)
    with pytest.raises(ValueError, match="positive"):
        relative_degradation(0.0, {"fog": [0.1]}, True)
