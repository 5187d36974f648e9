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
    draw_below,
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


def draw_swap_offsets(b: int, h: int, w: int, max_delta: int, generator: torch.Generator | None,
                      device: torch.device) -> torch.Tensor:
    """The partners of one glass-blur pass: ``(B, H * W)`` int32 flat offsets ``dy * W + dx`` from each pixel
    to the pixel it swaps with, ``dy, dx`` independent and uniform on ``[-max_delta, max_delta)`` (numpy's
    ``randint(-max_delta, max_delta)``) for the pixels the reference visits, ``max_delta < row <= H -
    max_delta`` (same for columns), and 0 elsewhere.

    Each visited pixel draws one of the ``(2 max_delta)²`` offset pairs with one random byte (rejection keeps
    the pairs equally likely when their number does not divide 256).
    """
    lo, hi_h, hi_w = max_delta + 1, h - max_delta, w - max_delta
    offsets = torch.zeros(b, h, w, dtype=torch.int32, device=device)
    if hi_h >= lo and hi_w >= lo:
        side = 2 * max_delta
        steps = torch.arange(-max_delta, max_delta, device=device, dtype=torch.int32)
        pairs = (steps[:, None] * w + steps[None, :]).reshape(-1)
        shape = (b, hi_h - lo + 1, hi_w - lo + 1)
        if side * side <= 256:
            pick = draw_below(shape, side * side, generator, device)
        else:
            pick = draw_integers(shape, 0, side * side, generator, device)
        offsets[:, lo:hi_h + 1, lo:hi_w + 1] = pairs.index_select(0, pick.view(-1).int()).view(shape)
    return offsets.view(b, h * w)


def _batch_sources(offsets: torch.Tensor) -> torch.Tensor:
    """``shuffle_sources`` as int32 indices into the whole batch's ``B * N`` pixels, ``(B * N,)``: 1-D
    ``index_select`` with int32 indices moves half the bytes of a per-sample int64 ``gather``."""
    b, n = offsets.shape
    own = torch.arange(b * n, device=offsets.device, dtype=torch.int32)
    flat = offsets.reshape(-1)
    reads = own + flat
    forward = flat > 0
    if not bool(forward.any()):  # no pixel copies a visited one (max_delta 1 draws only dy, dx <= 0)
        return reads
    link = torch.where(forward, reads, own)
    while True:
        jumped = link.index_select(0, link)
        if torch.equal(jumped, link):
            return reads.index_select(0, link)
        link = jumped


def shuffle_sources(offsets: torch.Tensor) -> torch.Tensor:
    """Where each pixel's value comes from after one sequential glass-blur pass with the swap ``offsets``
    (``draw_swap_offsets``): ``(B, N)`` int64 flat indices into each image before the pass.

    The reference visits pixels from the last to the first in row-major order and executes
    ``x[p], x[q] = x[q], x[p]`` (``q = p + offset``) on numpy views; that statement copies ``x[q]`` into
    ``x[p]`` and leaves ``x[q]`` as it was, so each pixel takes the value its partner holds at that moment.
    When ``q > p`` the partner was visited before (or never is) and already holds its final value; when
    ``q <= p`` it still holds its original value. So a pixel either reads the original image (at ``q`` if
    ``q <= p``, at itself if never visited) or copies the final value of ``q > p``; following those copy links
    to their end gives the result of the whole pass. Pointer jumping resolves every chain in O(log length)
    batched gathers, and with the same offsets this equals the sequential loop exactly.
    """
    b, n = offsets.shape
    base = torch.arange(0, b * n, n, device=offsets.device)[:, None]
    return _batch_sources(offsets).view(b, n).long() - base


def local_shuffle(x: torch.Tensor, max_delta: int, generator: torch.Generator | None,
                  iterations: int = 1) -> torch.Tensor:
    """``iterations`` passes of ImageNet-C's glass-blur pixel "swaps" (``shuffle_sources``) on ``(B, C, H,
    W)``; the passes are composed as index maps, so the image is gathered once."""
    b, c, h, w = x.shape
    if iterations < 1:
        return x
    sources = None
    for _ in range(iterations):
        step = _batch_sources(draw_swap_offsets(b, h, w, max_delta, generator, x.device))
        sources = step if sources is None else sources.index_select(0, step)
    base = torch.arange(0, b * h * w, h * w, device=x.device)[:, None]
    local = sources.view(b, h * w).long() - base
    return x.reshape(b, c, h * w).gather(2, local[:, None].expand(b, c, h * w)).view(b, c, h, w)


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
        x = gaussian_filter(x, sigma).clamp_(0, 1).mul_(255).floor_().div_(255)
        return gaussian_filter(local_shuffle(x, max_delta, generator, iterations), sigma)


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
            if z == 1:  # the reference's zoom by 1 is the identity; skip the resampling
                out += x
                continue
            # pixel coordinates -> grid_sample's [-1, 1] with corner pixels at +-1 (align_corners=True)
            ys = zoom_grid(h, z, centre, x.device) * (2 / max(h - 1, 1)) - 1
            xs = zoom_grid(w, z, centre, x.device) * (2 / max(w - 1, 1)) - 1
            grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), -1).to(x.dtype)
            # every sample point lies inside the image (a centre crop, enlarged): no border handling needed
            out += F.grid_sample(x, grid.expand(b, h, w, 2), mode="bilinear", padding_mode="zeros",
                                 align_corners=True)
        return out.div_(len(zooms) + 1)
