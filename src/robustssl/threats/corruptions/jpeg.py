"""A batched baseline-JPEG round trip in torch that follows what Pillow's ``save(format="JPEG", quality=q)``
followed by decoding does (libjpeg / libjpeg-turbo defaults):

1. 8-bit RGB -> YCbCr (JFIF / ITU-R BT.601 full range, rounded to 8 bits);
2. 4:2:0 chroma: 2x2 averages with libjpeg's alternating rounding bias (jcsample.c ``h2v2_downsample``);
3. 8x8 orthonormal DCT of the level-shifted samples, division by the IJG quality-scaled tables, rounding;
4. dequantization, inverse DCT, rounding and clipping to 8 bits;
5. "fancy" triangle-filter chroma upsampling (jdsample.c ``h2v2_fancy_upsample``) and YCbCr -> RGB.

The DCTs are exact floating-point transforms where libjpeg uses its integer ("islow") approximation, so an
occasional coefficient lands one quantization step away; the decoded images agree with Pillow to well under
one grey level on average. Everything is batched ``(B, 3, H, W)`` on the input's device.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from robustssl.threats.corruptions.kernels import band_matmul_last, band_matmul_rows, pad2d

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), in row-major order
LUMA_QUANT = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMA_QUANT = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)


def quantization_table(base: tuple[int, ...], quality: int) -> torch.Tensor:
    """IJG ``jpeg_set_quality`` scaling of a base table (jcparam.c), clamped to [1, 255]. (8, 8) float64."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an int in 1..100, got {quality!r}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = (torch.tensor(base, dtype=torch.int64) * scale + 50) // 100
    return table.clamp(1, 255).double().view(8, 8)


def dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix ``D`` (coefficients = ``D @ block @ D.T``). (8, 8)"""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _code_plane(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Encode and decode one level-shifted 8-bit plane ``(B, H, W)`` (values in [-128, 127], sides multiples
    of 8) with quantization ``table``.

    Each 8x8 block, flattened to 64 values, is transformed by the Kronecker product ``D ⊗ D`` of the 1-D DCT,
    with the quantization steps folded into that matrix: one large matrix product each way instead of many
    tiny ones.
    """
    b, h, w = plane.shape
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3).reshape(-1, 64)
    basis = torch.kron(dct, dct)
    steps = table.reshape(64)
    levels = (blocks @ (basis.T / steps)).round_()
    decoded = levels @ (steps[:, None] * basis)
    decoded = decoded.reshape(b, h // 8, w // 8, 8, 8).transpose(2, 3).reshape(b, h, w)
    return decoded.round_().clamp_(-128, 127)


def _downsample_420(plane: torch.Tensor) -> torch.Tensor:
    """libjpeg's 2x2 average with bias 1, 2, 1, 2, ... per output row (truncating division). (N, H/2, W/2)"""
    # floor((sum + bias) / 4) = floor(mean + bias / 4): the mean of four integers and bias / 4 are exact
    bias = (1 + torch.arange(plane.shape[-1] // 2, device=plane.device) % 2) / 4
    return F.avg_pool2d(plane[:, None], 2)[:, 0].add_(bias).floor_()


@functools.lru_cache(maxsize=16)
def _upsample_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` integer weights of libjpeg's "fancy" 2x upsampling along one axis: output ``2i``
    is ``3 x[i] + x[i - 1]``, output ``2i + 1`` is ``3 x[i] + x[i + 1]``, edges replicated (jdsample.c
    ``h2v2_fancy_upsample``); the first ``n_out`` of the ``2 n_in`` rows."""
    i = torch.arange(n_in)
    out = torch.zeros(2 * n_in, n_in, dtype=torch.float64)
    out[2 * i, i] += 3
    out[2 * i, (i - 1).clamp(min=0)] += 1
    out[2 * i + 1, i] += 3
    out[2 * i + 1, (i + 1).clamp(max=n_in - 1)] += 1
    return out[:n_out]


def _upsample_420(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """libjpeg's "fancy" 2x upsampling of ``(N, h, w)`` chroma to ``size`` (at most ``(2h, 2w)``):
    ``floor((rows · 3/4-1/4 · columns + 8 or 7) / 16)``. The triangle weights are integer matrices (products
    of integers below 2**24 are exact in float32), applied as banded products; level-shifted input (integers
    in [-128, 127]) gives the same result shifted, as floor commutes with integer shifts."""
    rows = _upsample_matrix(plane.shape[-2], size[0]).to(device=plane.device, dtype=plane.dtype)
    cols = _upsample_matrix(plane.shape[-1], size[1]).to(device=plane.device, dtype=plane.dtype)
    # even output columns round with +8, odd ones with +7
    bias = 8.0 - torch.arange(size[1], device=plane.device, dtype=plane.dtype).remainder(2)
    return band_matmul_rows(rows, band_matmul_last(plane, cols)).add_(bias).mul_(1 / 16).floor_()


# JFIF colour transforms (ITU-R BT.601, full range), rows = output channels
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
# the chroma columns of the inverse; every output takes luma with weight 1
_CHROMA_TO_RGB = ((0.0, 1.402), (-0.344136, -0.714136), (1.772, 0.0))


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress and decompress ``(B, 3, H, W)`` in [0, 1] at ``quality`` 1..100 (4:2:0). Same shape,
    values on the 8-bit grid ``k / 255``."""
    b, _, h, w = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    rgb = x.to(work).mul(255).round_()
    # libjpeg pads the image to whole 16x16 MCUs by repeating the last column and row
    if h % 16 or w % 16:
        rgb = pad2d(rgb, 0, -h % 16, 0, -w % 16, "replicate")
    hp, wp = rgb.shape[-2:]
    # per-pixel 3x3 colour transform, as one batched product (on CPU ~100x faster than the equivalent 1x1
    # convolution); the codec works on level-shifted samples (value - 128: luma shifted here, chroma,
    # centred on 128, by leaving out JFIF's +128), and integer shifts commute with its rounding steps
    to_ycc = torch.tensor(_RGB_TO_YCBCR, dtype=work, device=x.device).expand(b, 3, 3)
    offset = torch.tensor([-128.0, 0.0, 0.0], dtype=work, device=x.device).view(1, 3, 1)
    ycc = torch.baddbmm(offset, to_ycc, rgb.view(b, 3, hp * wp)).round_().clamp_(-128, 127)
    ycc = ycc.view(b, 3, hp, wp)
    dct = dct_matrix(x.device, work)
    luma_q = quantization_table(LUMA_QUANT, quality).to(device=x.device, dtype=work)
    chroma_q = quantization_table(CHROMA_QUANT, quality).to(device=x.device, dtype=work)
    y = _code_plane(ycc[:, 0], luma_q, dct)[:, :h, :w]
    ch, cw = (h + 1) // 2, (w + 1) // 2
    chroma = _code_plane(_downsample_420(ycc[:, 1:].reshape(2 * b, hp, wp)), chroma_q, dct)
    # the decoder upsamples only the real chroma samples, replicating the last one at the edges
    chroma = _upsample_420(chroma[:, :ch, :cw], (h, w)).view(b, 2, h * w)
    to_rgb = torch.tensor(_CHROMA_TO_RGB, dtype=work, device=x.device).expand(b, 3, 2)
    out = torch.baddbmm(y.reshape(b, 1, h * w), to_rgb, chroma).round_().clamp_(-128, 127)
    return out.add_(128).div_(255).view(b, 3, h, w).to(x.dtype)
