"""SimCLR views: reproducible, in range, and each component does what it claims (checked against
hand-built expectations and PIL's colour conversions)."""

from __future__ import annotations

import colorsys
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustssl.data.colour import grayscale, hsv_to_rgb, rgb_to_hsv
from robustssl.data.views import (
    SimCLRViews,
    TwoViews,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_boxes,
    crop_flip,
    gaussian_blur,
)

IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)


def _batch(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_same_generator_same_views_and_different_seeds_differ():
    x = _batch()
    views = SimCLRViews.preset("imagenet")
    a = views(x, torch.Generator().manual_seed(1))
    b = views(x, torch.Generator().manual_seed(1))
    c = views(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("preset", ["cifar", "imagenet", "tiny", "none"])
def test_output_in_unit_range_and_shape(preset):
    x = _batch(16, 24)
    out = SimCLRViews.preset(preset)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_identity_settings_return_the_input():
    x = _batch()
    out = SimCLRViews(**IDENTITY)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)
    assert torch.allclose(SimCLRViews.preset("none")(x, torch.Generator()), x, atol=1e-5)


def test_flip_really_flips():
    x = _batch()
    out = SimCLRViews(**{**IDENTITY, "flip_p": 1.0})(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_crop_matches_slicing_then_is_resized():
    x = _batch(2, 16)
    boxes = torch.tensor([[2.0, 4.0, 8.0, 8.0], [0.0, 0.0, 16.0, 16.0]])
    out = crop_flip(x, boxes, torch.tensor([False, True]), (8, 8))
    # an 8x8 crop resized to 8x8 samples exactly the pixel centres
    assert torch.allclose(out[0], x[0, :, 2:10, 4:12], atol=1e-5)
    # a full 16 -> 8 downsample with bilinear at align_corners=False averages 2x2 blocks
    pooled = torch.nn.functional.avg_pool2d(x[1:], 2)[0].flip(-1)
    assert torch.allclose(out[1], pooled, atol=1e-5)


def test_crop_boxes_respect_scale_ratio_and_bounds():
    boxes = crop_boxes(2000, 32, 48, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0),
                       torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 48).all()
    area = h * w / (32 * 48)
    # rounding to whole pixels moves area and aspect slightly beyond the nominal range
    assert area.min() > 0.06 and area.max() <= 1.0
    assert (w / h).min() > 0.6 and (w / h).max() < 1.6
    assert len(torch.unique(boxes, dim=0)) > 1900


def test_scale_one_with_wide_ratio_falls_back_to_the_full_image():
    boxes = crop_boxes(50, 20, 20, (1.0, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0),
                       torch.device("cpu"))
    assert (boxes == torch.tensor([0.0, 0.0, 20.0, 20.0])).all()


def test_colour_conversions_match_colorsys():
    x = _batch(2, 5)
    hsv = rgb_to_hsv(x)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 4, 1)]:
        r, g, bl = x[b, :, i, j].tolist()
        assert hsv[b, :, i, j].tolist() == pytest.approx(list(colorsys.rgb_to_hsv(r, g, bl)), abs=1e-5)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-5)
    luma = (x[0, :, 0, 0] * torch.tensor([0.299, 0.587, 0.114])).sum()
    assert torch.allclose(grayscale(x)[0, 0, 0, 0], luma)


def test_jitter_components_hand_computed():
    x = torch.full((1, 3, 2, 2), 0.5)
    x[0, 0] = 0.2
    assert torch.allclose(adjust_brightness(x, torch.tensor([1.5])), (x * 1.5).clamp(0, 1))
    mean = grayscale(x).mean()
    assert torch.allclose(adjust_contrast(x, torch.tensor([0.0])), mean.expand_as(x))
    assert torch.allclose(adjust_saturation(x, torch.tensor([0.0])), grayscale(x).expand_as(x))
    assert torch.allclose(adjust_saturation(x, torch.tensor([1.0])), x)
    full_turn = adjust_hue(x, torch.tensor([0.0]))
    assert torch.allclose(full_turn, x, atol=1e-6)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    green = adjust_hue(red, torch.tensor([1 / 3]))
    assert torch.allclose(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)


def test_grayscale_always_gives_equal_channels():
    out = SimCLRViews(**{**IDENTITY, "gray_p": 1.0})(_batch(), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_jitter_probability_zero_and_one():
    x = _batch(64)
    never = SimCLRViews(**{**IDENTITY, "jitter_p": 0.0})(x, torch.Generator().manual_seed(0))
    always = SimCLRViews(**{**IDENTITY, "jitter_p": 1.0})(x, torch.Generator().manual_seed(0))
    assert torch.allclose(never, x, atol=1e-5)
    changed = (always - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.all()


def test_gaussian_blur_preserves_constants_and_mean_and_smooths():
    const = torch.full((2, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.5, 2.0]), 5), const, atol=1e-6)
    x = _batch(2, 16)
    blurred = gaussian_blur(x, torch.tensor([0.1, 2.0]), 5)
    assert torch.allclose(blurred[0], x[0], atol=1e-4)  # sigma 0.1: weights ~ (0, 0, 1, 0, 0)
    assert blurred[1].std() < x[1].std() * 0.7


def test_two_views_are_independent_draws_and_resize():
    x = _batch()
    g = torch.Generator().manual_seed(3)
    v1, v2 = TwoViews(SimCLRViews(size=8))(x, g)
    assert v1.shape == v2.shape == (8, 3, 8, 8) and not torch.equal(v1, v2)
    g = torch.Generator().manual_seed(3)
    expected = SimCLRViews(size=8)(x, g)
    assert torch.equal(v1, expected)


def test_rejects_bad_input_and_parameters():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SimCLRViews()(torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="scale"):
        SimCLRViews(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="jitter_p"):
        SimCLRViews(jitter_p=1.5)
    with pytest.raises(ValueError, match="preset.*accepted: cifar"):
        SimCLRViews.preset("strong")


def _reference_area(rng: random.Random, height: int, width: int) -> float:
    """torchvision's documented RandomResizedCrop sampling, one sample at a time in plain Python."""
    for _ in range(10):
        target = height * width * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return w * h / (height * width)
    return 1.0


def test_crop_area_distribution_matches_a_per_sample_reference():
    boxes = crop_boxes(20000, 64, 48, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0),
                       torch.device("cpu"))
    areas = boxes[:, 2] * boxes[:, 3] / (64 * 48)
    rng = random.Random(0)
    reference = torch.tensor([_reference_area(rng, 64, 48) for _ in range(20000)])
    # rejected large crops pull the mean below the nominal (0.08 + 1) / 2; both must agree on how much
    assert abs(areas.mean() - reference.mean()) < 0.01
    assert abs(areas.median() - reference.median()) < 0.02
    assert float(reference.mean()) < 0.53


@settings(max_examples=25, deadline=None)
@given(scale_lo=st.floats(0.05, 1.0), ratio_hi=st.floats(1.0, 3.0), strength=st.floats(0.0, 1.0),
       hue=st.floats(0.0, 0.5), p=st.floats(0.0, 1.0), side=st.integers(4, 20), seed=st.integers(0, 2**31))
def test_any_valid_parameters_keep_the_image_contract(scale_lo, ratio_hi, strength, hue, p, side, seed):
    views = SimCLRViews(size=side, scale=(scale_lo, 1.0), ratio=(1 / ratio_hi, ratio_hi), brightness=strength,
                        contrast=strength, saturation=strength, hue=hue, jitter_p=p, gray_p=p, blur_p=p,
                        flip_p=p)
    x = _batch(3, 12, seed=seed % 1000)
    out = views(x, torch.Generator().manual_seed(seed))
    assert out.shape == (3, 3, side, side) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
