"""Building blocks rewritten for speed, each against the slower definition it replaces.

* ``scale_saturation`` equals the HSV round trip (``rgb_to_hsv`` -> edit saturation -> ``hsv_to_rgb``),
  grey, black and tied pixels included;
* ``resize`` equals ``F.interpolate`` (bilinear, bicubic);
* ``correlate2d`` equals a direct sum of shifted copies for full, one-sided and off-centre kernels;
* ``band_matmul_last`` / ``band_matmul_rows`` equal the dense products;
* the JPEG chroma resamplers equal libjpeg's formulas written per sample (jcsample.c ``h2v2_downsample``,
  jdsample.c ``h2v2_fancy_upsample``);
* ``_fft_length`` returns smooth lengths with a factor 8.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustssl.threats.corruptions.colour import hsv_to_rgb, rgb_to_hsv, scale_saturation
from robustssl.threats.corruptions.jpeg import _downsample_420, _upsample_420
from robustssl.threats.corruptions.kernels import (
    _fft_length,
    band_matmul_last,
    band_matmul_rows,
    correlate2d,
    filter_matrix,
    gaussian_kernel1d,
    pad2d,
    resize,
)


def test_scale_saturation_equals_the_hsv_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 30, 30, generator=g, dtype=torch.float64)
    x[0, :, :8] = x[0, :1, :8]  # grey
    x[0, :, 8:10] = 0  # black
    x[1, 1, :10] = x[1, 0, :10]  # two channels share the maximum
    x[2] = (x[2] * 4).round() / 4  # many ties
    for scale, offset in ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2), (1.0, 0.5)):
        hsv = rgb_to_hsv(x)
        hsv[:, 1] = (hsv[:, 1] * scale + offset).clamp(0, 1)
        torch.testing.assert_close(scale_saturation(x, scale, offset), hsv_to_rgb(hsv), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(48, 40), (17, 29), (5, 7)])
def test_resize_equals_interpolate(mode: str, size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, 23, 31, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = F.interpolate(x, size=size, mode=mode, align_corners=False)
    torch.testing.assert_close(resize(x, size, mode), expected, rtol=0, atol=1e-12)


def _direct_correlation(x: torch.Tensor, kernels: torch.Tensor, mode: str) -> torch.Tensor:
    """``out[y, x] = sum_ij k[i, j] img[y + i - r, x + j - r]`` as a sum of shifted padded copies."""
    r = kernels.shape[-1] // 2
    h, w = x.shape[-2:]
    padded = pad2d(x, r, r, r, r, mode)
    out = torch.zeros_like(x)
    for i in range(kernels.shape[-2]):
        for j in range(kernels.shape[-1]):
            out += kernels[:, i, j].view(-1, 1, 1, 1) * padded[..., i:i + h, j:j + w]
    return out


@pytest.mark.parametrize("shape", ["full", "one-sided row", "corner block", "single off-centre tap"])
@pytest.mark.parametrize("mode", ["reflect101", "replicate", "symmetric"])
def test_correlate2d_equals_the_direct_sum(shape: str, mode: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 20, 26, generator=g, dtype=torch.float64)
    k = 11
    kernels = torch.zeros(3, k, k, dtype=torch.float64)
    if shape == "full":
        kernels = torch.rand(3, k, k, generator=g, dtype=torch.float64)
    elif shape == "one-sided row":  # motion blur's line: taps on one side of the centre only
        kernels[:, k // 2, k // 2:] = torch.rand(3, k - k // 2, generator=g, dtype=torch.float64)
    elif shape == "corner block":
        kernels[:, :4, -3:] = torch.rand(3, 4, 3, generator=g, dtype=torch.float64)
    else:
        kernels[:, 1, k - 2] = 1.0
    torch.testing.assert_close(correlate2d(x, kernels, mode), _direct_correlation(x, kernels, mode),
                               rtol=0, atol=1e-12)
    # one kernel shared by the batch
    torch.testing.assert_close(correlate2d(x, kernels[0], mode),
                               _direct_correlation(x, kernels[:1].expand(3, k, k), mode), rtol=0, atol=1e-12)


def test_banded_products_equal_the_dense_ones() -> None:
    x = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kernel = gaussian_kernel1d(1.3, 4.0, torch.float64, x.device)
    cols, rows = filter_matrix(90, kernel, "symmetric"), filter_matrix(70, kernel, "replicate")
    torch.testing.assert_close(band_matmul_last(x, cols), x @ cols.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(band_matmul_rows(rows, x), rows @ x, rtol=0, atol=1e-12)


def test_jpeg_chroma_resampling_follows_libjpeg() -> None:
    g = torch.Generator().manual_seed(4)
    plane = torch.randint(0, 256, (2, 6, 10), generator=g).float()
    # jcsample.c h2v2_downsample: (sum of the 2x2 block + bias) >> 2, bias 1, 2, 1, 2, ... along the row
    down = torch.zeros(2, 3, 5)
    for i in range(3):
        for j in range(5):
            total = plane[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].sum((1, 2))
            down[:, i, j] = torch.div(total + 1 + j % 2, 4, rounding_mode="floor")
    torch.testing.assert_close(_downsample_420(plane), down, rtol=0, atol=0)
    # jdsample.c h2v2_fancy_upsample: column sums 3 * nearer row + farther row, then
    # (3 * this + previous + 8) >> 4 for even outputs and (3 * this + next + 7) >> 4 for odd ones
    small = torch.randint(0, 256, (2, 4, 5), generator=g).float()
    h, w = small.shape[-2:]
    up = torch.zeros(2, 2 * h, 2 * w)
    for i in range(2 * h):
        near, far = i // 2, min(max(i // 2 + (1 if i % 2 else -1), 0), h - 1)
        column = 3 * small[:, near] + small[:, far]
        for j in range(2 * w):
            this, other = j // 2, min(max(j // 2 + (1 if j % 2 else -1), 0), w - 1)
            up[:, i, j] = torch.div(3 * column[:, this] + column[:, other] + (7 if j % 2 else 8), 16,
                                    rounding_mode="floor")
    torch.testing.assert_close(_upsample_420(small, (2 * h, 2 * w)), up, rtol=0, atol=0)
    torch.testing.assert_close(_upsample_420(small, (2 * h - 1, 2 * w - 1)), up[:, :-1, :-1], rtol=0, atol=0)


def test_fft_lengths_are_smooth_multiples_of_8() -> None:
    for n in range(16, 600):
        m = _fft_length(n)
        assert n <= m < 1.25 * n + 8 and m % 8 == 0
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert rest == 1
    assert _fft_length(248) == 256 and _fft_length(7) == 7
