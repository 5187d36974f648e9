"""The paired standard error the benchmarks judge margins by (``robustssl.metrics.paired_standard_error``)."""

from __future__ import annotations

import math

import pytest
import torch

from robustssl.metrics import paired_standard_error


def test_correctness_gives_mcnemar_by_hand():
    a = torch.tensor([True, True, False, False, True])
    b = torch.tensor([True, False, True, False, False])
    # n01 = 2 (a right, b wrong), n10 = 1, n = 5: 100 * sqrt(3 - 1/5) / 5
    assert paired_standard_error(a, b) == pytest.approx(100 * math.sqrt(2.8) / 5)


def test_seed_averaged_scores_give_the_std_of_the_differences():
    a = torch.tensor([0.5, 1.0, 0.0])
    b = torch.tensor([0.0, 0.5, 0.5])
    d = a - b  # 0.5, 0.5, -0.5: population std sqrt(0.25 - 1/36), over sqrt(3)
    assert paired_standard_error(a, b) == pytest.approx(100 * math.sqrt(0.25 - 1 / 36) / math.sqrt(3))
    assert paired_standard_error(a, b) == pytest.approx(100 * d.std(unbiased=False).item() / math.sqrt(3))


def test_averaging_copies_of_one_seed_changes_nothing_and_agreement_gives_zero():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(200, generator=g) < 0.9, torch.rand(200, generator=g) < 0.8
    pooled = paired_standard_error(torch.stack([a.float(), a.float()]).mean(0), b.float())
    assert pooled == pytest.approx(paired_standard_error(a, b))
    assert paired_standard_error(a, a) == 0.0


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="equal 1-D"):
        paired_standard_error(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
