"""Digital corruptions: contrast, elastic_transform, pixelate, jpeg_compression, and brightness (which
ImageNet-C files under "weather" but is a photometric edit like these).

Parameter tables: ``cifar`` from hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py, ``imagenet`` from
imagecorruptions 1.1.2 (imagecorruptions/corruptions.py; the values of
ImageNet-C/create_c/make_imagenet_c.py).
Method differences between the two reference scripts that the sets keep:

* pixelate: imagenet enlarges with Pillow NEAREST, cifar with Pillow BOX.
* elastic_transform: cifar is make_cifar_c.py's random affine warp (OpenCV ``warpAffine``, reflect-101 border)
  followed by a Gaussian-smoothed random displacement field; imagenet is imagecorruptions' displacement-only
  version whose smoothing (1 % of the image side) and amplitude (0.5 % of the height) scale with the image.
  Both sample with bilinear interpolation and scipy's ``reflect`` border, as ``map_coordinates(order=1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustssl.threats.corruptions.base import CORRUPTIONS
from robustssl.threats.corruptions.jpeg import jpeg_round_trip
from robustssl.threats.corruptions.kernels import (
    band_matmul_last,
    band_matmul_rows,
    draw_uniform,
    gaussian_filter,
    pil_resample_plan,
)
from robustssl.threats.corruptions.tabulated import TabulatedCorruption

#: the grey that black pixels are lifted to before scaling (see Brightness)
_TINY = 1e-30


@CORRUPTIONS.register("brightness", family="weather")
class Brightness(TabulatedCorruption):
    """Add ``c`` to the HSV value channel (clipped to 1): brighter, with hue and saturation kept.

    Computed without the HSV round trip, which it equals exactly: with hue and saturation fixed every RGB
    channel is proportional to the value ``v = max(r, g, b)``, so the pixel scales by ``v' / v`` with
    ``v' = min(v + c, 1)``; black (v = 0, hue and saturation 0) becomes the grey ``v'``.
    """

    name, family, deterministic, needs_rgb = "brightness", "weather", True, True
    TABLE = {"cifar": (0.05, 0.1, 0.15, 0.2, 0.3), "imagenet": (0.1, 0.2, 0.3, 0.4, 0.5)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        v = x.amax(1, keepdim=True)
        # black pixels are lifted to a tiny grey first: the same scaling then turns them into the grey
        # min(c, 1), and it moves zero channels of other pixels by at most 1e-27 (two passes fewer than a
        # separate case for black)
        scale = (v + c).clamp_(max=1).div_(v.clamp(min=_TINY))
        return x.clamp(min=_TINY).mul_(scale)


@CORRUPTIONS.register("contrast", family="digital")
class Contrast(TabulatedCorruption):
    """Scale each channel's deviation from its image mean by ``c`` < 1."""

    name, family, deterministic = "contrast", "digital", True
    TABLE = {"cifar": (0.75, 0.5, 0.4, 0.3, 0.15), "imagenet": (0.4, 0.3, 0.2, 0.1, 0.05)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        means = x.mean((2, 3), keepdim=True)
        # (x - mean) * c + mean in one pass over the image
        return torch.add(means * (1 - c), x, alpha=c)


@CORRUPTIONS.register("pixelate", family="digital")
class Pixelate(TabulatedCorruption):
    """Pillow BOX downscale to ``int(side · c)`` and upscale back (NEAREST for imagenet, BOX for cifar)."""

    name, family, deterministic = "pixelate", "digital", True
    TABLE = {"cifar": (0.95, 0.9, 0.85, 0.75, 0.65), "imagenet": (0.6, 0.5, 0.4, 0.3, 0.25)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        h, w = x.shape[-2:]
        small_h, small_w = max(int(h * c), 1), max(int(w * c), 1)
        # every resampling matrix here is a band (each output reads a few neighbouring inputs): blocked
        # products skip the zeros
        small = _resample(x, (small_h, small_w), "box")
        # imagenet enlarges with NEAREST, one source pixel per output pixel: as products with one-hot
        # matrices (each output sums its source times 1 and zeros: the exact value) it runs 3-10x faster on
        # CPU than a gather over the flattened image, whose strided index_select is slow
        return _resample(small, (h, w), "box" if params == "cifar" else "nearest")


def _resample(x: torch.Tensor, size: tuple[int, int], filter_name: str) -> torch.Tensor:
    """Pillow's ``resize`` of ``(..., H, W)`` to ``size`` with ``filter_name``, as two banded products."""
    rows, row_spans = pil_resample_plan(x.shape[-2], size[0], filter_name, x.device, x.dtype)
    cols, col_spans = pil_resample_plan(x.shape[-1], size[1], filter_name, x.device, x.dtype)
    return band_matmul_rows(rows, band_matmul_last(x, cols, col_spans), row_spans)


@CORRUPTIONS.register("jpeg_compression", family="digital")
class JpegCompression(TabulatedCorruption):
    """Baseline JPEG at ``quality`` c with 4:2:0 chroma subsampling (Pillow's defaults), see ``jpeg.py``."""

    name, family, deterministic, needs_rgb = "jpeg_compression", "digital", True, True
    TABLE = {"cifar": (80, 65, 58, 50, 40), "imagenet": (25, 18, 15, 10, 7)}

    def apply(self, x: torch.Tensor, c: int, generator: torch.Generator | None, params: str) -> torch.Tensor:
        return jpeg_round_trip(x, c)


def _pixel_grid(y: torch.Tensor, x: torch.Tensor, h: int, w: int, align_corners: bool) -> torch.Tensor:
    """Pixel coordinates ``(B, H, W)`` -> a ``grid_sample`` grid ``(B, H, W, 2)``."""
    if align_corners:
        gx, gy = 2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1
    else:
        gx, gy = (2 * x + 1) / w - 1, (2 * y + 1) / h - 1
    return torch.stack((gx, gy), -1)


def _affine_source_coords(b: int, h: int, w: int, jitter: float, generator: torch.Generator | None,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """make_cifar_c.py's random affine: three points around the centre, each moved uniformly by up to
    ``jitter`` px; the output samples the source at the inverse map. Returns source ``(y, x)``, each
    (B, H, W)."""
    cy, cx, half = float(h // 2), float(w // 2), float(min(h, w) // 3)
    # OpenCV points are (x, y)
    pts1 = torch.tensor([[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]],
                        dtype=torch.float64, device=device)
    pts2 = pts1 + draw_uniform((b, 3, 2), generator, device, -jitter, jitter, dtype=torch.float64)
    ones = torch.ones(3, 1, dtype=torch.float64, device=device)
    # forward map A (B, 3, 2) with [pts1, 1] @ A = pts2; output pixel p comes from the source at A^-1(p)
    forward = torch.linalg.solve(torch.cat((pts1, ones), 1).expand(b, 3, 3), pts2)
    lin, shift = forward[:, :2], forward[:, 2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=device),
                            torch.arange(w, dtype=torch.float64, device=device), indexing="ij")
    dst = torch.stack((xs, ys), -1).view(1, h * w, 2) - shift[:, None]
    src = torch.linalg.solve(lin.transpose(1, 2), dst.transpose(1, 2)).transpose(1, 2)
    return src[..., 1].view(b, h, w), src[..., 0].view(b, h, w)


@CORRUPTIONS.register("elastic_transform", family="digital")
class ElasticTransform(TabulatedCorruption):
    """Warp by a smooth random displacement field (cifar: after a random affine warp), bilinear sampling."""

    name, family = "elastic_transform", "digital"
    # cifar: (alpha, sigma, affine jitter) as fractions of the image side (make_cifar_c.py multiplies by 32);
    # imagenet: alpha; sigma is 1 % of each side and the raw field amplitude 0.5 % of the height
    TABLE = {"cifar": ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                       (0.1, 0.03, 0.03)),
             "imagenet": (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)}

    def apply(self, x: torch.Tensor, c: float | tuple[float, float, float], generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        if params == "cifar":
            side = min(h, w)
            alpha, sigma, jitter = (v * side for v in c)
            src_y, src_x = _affine_source_coords(b, h, w, jitter, generator, dev)
            grid = _pixel_grid(src_y, src_x, h, w, align_corners=True).to(x.dtype)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
            sigma_yx, amplitude = (sigma, sigma), 1.0
        else:
            alpha, sigma_yx, amplitude = c, (0.01 * h, 0.01 * w), 0.005 * h
        field = draw_uniform((b, 2, h, w), generator, dev, -amplitude, amplitude)
        field = gaussian_filter(field, sigma_yx, mode="symmetric", truncate=3.0) * alpha
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=dev),
                                torch.arange(w, dtype=torch.float32, device=dev), indexing="ij")
        grid = _pixel_grid(ys + field[:, 1], xs + field[:, 0], h, w, align_corners=False).to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
