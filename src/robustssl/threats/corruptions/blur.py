"""Blur corruptions: defocus_blur, glass_blur, motion_blur, zoom_blur (ImageNet-C's blur family).

Parameter tables: ``cifar`` from hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py, ``imagenet`` from
imagecorruptions 1.1.2 (imagecorruptions/corruptions.py; the values of
ImageNet-C/create_c/make_imagenet_c.py).
Where the two reference scripts differ in method (not only in values) the ``imagenet`` set follows
imagecorruptions, the library people run today, and the ``cifar`` set follows make_cifar_c.py:

* motion blur: both sets use imagecorruptions' re-implementation of ImageMagick's ``MotionBlurImage`` (a
  one-sided Gaussian line kernel of ``2·radius+1`` taps along a random angle in [-45°, 45°], edge-replicated
  shifts); make_cifar_c.py called ImageMagick itself.
* zoom blur: imagecorruptions keeps the top-left ``H x W`` of each zoomed crop, make_cifar_c.py the centre.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustssl.threats.corruptions.base import CORRUPTIONS
from robustssl.threats.corruptions.kernels import (
    correlate2d,
    disk_kernel,
    draw_integers,
    draw_uniform,
    gaussian_filter,
    motion_taps,
)
from robustssl.threats.corruptions.tabulated import TabulatedCorruption


@CORRUPTIONS.register("defocus_blur", family="blur")
class DefocusBlur(TabulatedCorruption):
    """Convolution with an antialiased disk of ``radius`` (px), OpenCV ``filter2D`` border (reflect-101).

    For radii of 8 px and more the disk touches the edge of its grid, where the reference's antialiasing blur
    reflects it back in; those kernels sum to about 1.01 and brighten images by ~1 %, as the reference does.
    """

    name, family, deterministic = "defocus_blur", "blur", True
    # (disk radius, alias blur sigma)
    TABLE = {"cifar": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
             "imagenet": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))}

    def apply(self, x: torch.Tensor, c: tuple[float, float], generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        return correlate2d(x, disk_kernel(c[0], c[1], x.device), mode="reflect101")


def local_shuffle(x: torch.Tensor, max_delta: int, generator: torch.Generator | None) -> torch.Tensor:
    """One pass of ImageNet-C's glass-blur pixel "swaps", vectorized. ``(B, C, H, W)`` -> same.

    The reference visits pixels (h, w) from bottom-right to top-left, for ``max_delta < h <= H - max_delta``
    (same for w), draws ``dy, dx`` uniform on ``[-max_delta, max_delta)`` and executes
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views; that statement copies ``x[h', w']`` into
    ``x[h, w]`` and leaves ``x[h', w']`` as it was, so each pixel takes the value its source holds at that
    moment: the already-updated value when the source was visited earlier in the scan, else the original.
    Following those "visited earlier" links to their end gives the result of the whole sequential pass;
    pointer jumping resolves every chain in O(log length) batched gathers. With the same offsets this equals
    the sequential loop exactly, so the output matches the reference in distribution.
    """
    b, c, h, w = x.shape
    lo, hi_h, hi_w = max_delta + 1, h - max_delta, w - max_delta
    if hi_h < lo or hi_w < lo:
        return x
    dev = x.device
    # work on the visited region only: node (i, j) is pixel (lo + i, lo + j); offsets are drawn for it alone
    rh, rw = hi_h - lo + 1, hi_w - lo + 1
    dy, dx = draw_integers((2, b, rh, rw), -max_delta, max_delta, generator, dev).unbind(0)
    i = torch.arange(rh, device=dev).view(1, rh, 1)
    j = torch.arange(rw, device=dev).view(1, 1, rw)
    src_i, src_j = i + dy, j + dx
    inside_cols = (src_j >= 0) & (src_j < rw)
    follow = ((dy > 0) & (src_i < rh) & inside_cols) | ((dy == 0) & (dx > 0) & inside_cols)
    node = (i * rw + j).expand(b, rh, rw)
    # a followed node points at its source node, every other node at itself (a root of its chain)
    pointer = torch.where(follow, src_i * rw + src_j, node).reshape(b, rh * rw)
    while True:
        jumped = pointer.gather(1, pointer)
        if torch.equal(jumped, pointer):
            break
        pointer = jumped
    # a root reads the original pixel at its own source
    reads = ((src_i + lo) * w + (src_j + lo)).reshape(b, rh * rw).gather(1, pointer)
    index = torch.arange(h * w, device=dev).repeat(b, 1)
    index.view(b, h, w)[:, lo:hi_h + 1, lo:hi_w + 1] = reads.view(b, rh, rw)
    flat = x.reshape(b, c, h * w)
    return flat.gather(2, index.unsqueeze(1).expand(b, c, h * w)).reshape(b, c, h, w)


@CORRUPTIONS.register("glass_blur", family="blur")
class GlassBlur(TabulatedCorruption):
    """Gaussian blur, local pixel shuffling within ``max_delta`` px (``iterations`` passes), Gaussian blur.

    As in the reference, the first blur is truncated to 8 bits (``np.uint8(blur * 255)``, a floor) before
    shuffling.
    """

    name, family = "glass_blur", "blur"
    # (blur sigma, max delta, iterations)
    TABLE = {"cifar": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
             "imagenet": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))}

    def apply(self, x: torch.Tensor, c: tuple[float, int, int], generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        sigma, max_delta, iterations = c
        x = torch.floor(gaussian_filter(x, sigma).clamp(0, 1) * 255) / 255
        for _ in range(iterations):
            x = local_shuffle(x, max_delta, generator)
        return gaussian_filter(x, sigma)


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``(B, C, H, W)`` along its own ``angle`` (degrees, ``(B,)``) with ImageMagick's
    one-sided line kernel (``motion_taps``); shifted copies replicate the border.

    Tap ``i`` samples the image shifted by ``(-ceil(i·sin a - 0.5), -ceil(i·cos a - 0.5))``; like the
    reference, the sum stops at the first tap that would shift by a whole image side, without renormalizing.
    The taps of each image are drawn into its own sparse 2-D kernel and applied in one batched FFT correlation
    with an edge-replicated border, which equals the reference's sum of edge-clamped shifts.
    """
    b, _, h, w = x.shape
    taps = motion_taps(radius, sigma)
    rad = torch.deg2rad(angle.double().cpu())
    i = torch.arange(len(taps), dtype=torch.float64)[:, None]
    dy = (-torch.ceil(i * torch.sin(rad)[None] - 0.5)).long()
    dx = (-torch.ceil(i * torch.cos(rad)[None] - 0.5)).long()
    inside = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(0).bool()
    weights = taps[:, None] * inside
    pad = int(torch.maximum(dy.abs(), dx.abs()).max())
    kernels = torch.zeros(b, 2 * pad + 1, 2 * pad + 1, dtype=torch.float64)
    # out[y, x] = sum_i w_i · image[y - dy_i, x - dx_i]: correlation weight at offset (-dy_i, -dx_i)
    sample = torch.arange(b).expand_as(dy)
    kernels.index_put_((sample, pad - dy, pad - dx), weights, accumulate=True)
    return correlate2d(x, kernels.to(x.device), mode="replicate")


@CORRUPTIONS.register("motion_blur", family="blur")
class MotionBlur(TabulatedCorruption):
    """Linear motion blur (``radius`` px, Gaussian falloff ``sigma``) at a random angle in [-45°, 45°]."""

    name, family = "motion_blur", "blur"
    # (radius, sigma)
    TABLE = {"cifar": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
             "imagenet": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))}

    def apply(self, x: torch.Tensor, c: tuple[int, float], generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        angle = draw_uniform((x.shape[0],), generator, x.device, -45.0, 45.0, dtype=torch.float64)
        return motion_blur(x, c[0], c[1], angle)


def zoom_grid(n: int, zoom: float, centre_trim: bool, device: torch.device) -> torch.Tensor:
    """Source coordinates (float64, ``(n,)``) of ImageNet-C's ``clipped_zoom`` along one axis of length ``n``.

    The reference crops the centre ``ceil(n / zoom)`` samples, enlarges them with
    ``scipy.ndimage.zoom(order=1)``
    (output length ``round(crop · zoom)``, corner samples aligned) and keeps ``n`` samples from the top
    (imagecorruptions) or the centre (``centre_trim``, make_cifar_c.py).
    """
    crop = math.ceil(n / zoom)
    top = (n - crop) // 2
    size = round(crop * zoom)
    first = (size - n) // 2 if centre_trim else 0
    step = (crop - 1) / (size - 1) if size > 1 else 0.0
    return top + (torch.arange(n, dtype=torch.float64, device=device) + first) * step


@CORRUPTIONS.register("zoom_blur", family="blur")
class ZoomBlur(TabulatedCorruption):
    """Average of the image and centre zooms of it by each factor in the severity's range (radial blur)."""

    name, family, deterministic = "zoom_blur", "blur", True
    # (start, stop, step) of numpy.arange of zoom factors; a float arange can include its stop (1.11 for
    # arange(1, 1.11, .01)), and torch.arange in float64 counts the same way
    TABLE = {"cifar": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
             "imagenet": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02),
                          (1, 1.31, 0.03))}

    def apply(self, x: torch.Tensor, c: tuple[float, float, float], generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        b, _, h, w = x.shape
        zooms = torch.arange(*c, dtype=torch.float64).tolist()
        centre = params == "cifar"
        out = x.clone()
        for z in zooms:
            # pixel coordinates -> grid_sample's [-1, 1] with corner pixels at +-1 (align_corners=True)
            ys = zoom_grid(h, z, centre, x.device) * (2 / max(h - 1, 1)) - 1
            xs = zoom_grid(w, z, centre, x.device) * (2 / max(w - 1, 1)) - 1
            grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), -1).to(x.dtype)
            out += F.grid_sample(x, grid.expand(b, h, w, 2), mode="bilinear", padding_mode="border",
                                 align_corners=True)
        return out / (len(zooms) + 1)
