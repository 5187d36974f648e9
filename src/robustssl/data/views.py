"""SSL views: the SimCLR augmentation pipeline, batched in torch, with per-sample random parameters.

SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations", App. A):
random resized crop (scale (0.08, 1), aspect ratio (3/4, 4/3)) resized back to the input size, horizontal
flip with p = 0.5, colour jitter with p = 0.8 (brightness, contrast, saturation 0.8 s, hue 0.2 s in a random
order; s = 0.5 for CIFAR gives 0.4 / 0.4 / 0.4 / 0.1), greyscale with p = 0.2, and on ImageNet a Gaussian blur
with p = 0.5 (sigma in [0.1, 2], kernel 10% of the image side).

Every sample draws its own parameters from one ``torch.Generator``, so the same generator state gives the same
views, on any device; all crops and flips of a batch are a single ``affine_grid`` + ``grid_sample``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from robustssl.data.colour import grayscale, hsv_to_rgb, rgb_to_hsv
from robustssl.runtime.validation import check_image

#: torchvision's RandomResizedCrop makes 10 attempts before falling back to a centre crop; so do we.
CROP_ATTEMPTS = 10


def _rand(generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device (so a CPU generator drives CUDA batches too)."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=where).to(device)


def _uniform(generator: torch.Generator | None, n: int, lo: float, hi: float,
             device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * _rand(generator, (n,), device)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Per-sample integer crop boxes ``(n, 4)`` = (top, left, h, w), drawn as torchvision's
    RandomResizedCrop does: up to 10 (area, log-aspect) attempts, else a centre crop with clamped aspect."""
    area = height * width
    draws = _rand(generator, (n, CROP_ATTEMPTS, 4), device)
    target = area * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)
    found = ok.any(dim=1)
    rows = torch.arange(n, device=device)
    h, w = h[rows, first], w[rows, first]
    top = torch.floor(draws[rows, first, 2] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(draws[rows, first, 3] * (width - w + 1)).clamp(max=width - w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], device=device)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(found[:, None], boxes, fallback)


def crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor,
              size: tuple[int, int]) -> torch.Tensor:
    """Crop ``boxes`` (top, left, h, w) out of ``x`` ``(B, C, H, W)``, mirror where ``flip``, resize to
    ``size`` with bilinear sampling: one ``affine_grid`` + ``grid_sample`` for the whole batch."""
    _, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    # align_corners=False: normalized -1 is the left edge of pixel 0, +1 the right edge of the last pixel.
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level (torchvision's definition)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(x)
    hue = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], 1)).clamp_(0, 1)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Blur each image with its own ``sigma`` (B,): separable depthwise convolution, reflect padding."""
    b, c, h, w = x.shape
    radius = kernel // 2
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, 0)
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, weights[:, None, None, :], groups=b * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, weights[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


@dataclass(frozen=True)
class SimCLRViews:
    """One random SimCLR view of a batch: ``views(x, generator=g)`` with ``x`` ``(B, 3, H, W)`` in [0, 1]
    returns ``(B, 3, *size)`` in [0, 1] (``size`` None keeps ``(H, W)``).

    Defaults are SimCLR's CIFAR settings; :meth:`preset` gives ``"imagenet"`` (stronger jitter, blur),
    ``"tiny"`` (weak augmentation for smoke tests and tiny models) and ``"none"`` (identity).
    """

    size: int | tuple[int, int] | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        def bad(what: str, value: object, accepted: str) -> ValueError:
            return ValueError(f"SimCLRViews: {what} must be {accepted}, got {value!r}")

        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise bad("scale", self.scale, "(lo, hi) with 0 < lo <= hi <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise bad("ratio", self.ratio, "(lo, hi) with 0 < lo <= hi")
        for key in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, getattr(self, key), "a probability in [0, 1]")
        for key in ("brightness", "contrast", "saturation"):
            if not getattr(self, key) >= 0:
                raise bad(key, getattr(self, key), ">= 0")
        if not 0 <= self.hue <= 0.5:
            raise bad("hue", self.hue, "in [0, 0.5]")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise bad("blur_sigma", self.blur_sigma, "(lo, hi) with 0 < lo <= hi")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> SimCLRViews:
        """``"cifar"`` (SimCLR s = 0.5, the defaults), ``"imagenet"`` (s = 1, blur), ``"tiny"``, ``"none"``"""
        presets = {
            "cifar": cls(),
            "imagenet": cls(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5),
            "tiny": cls(scale=(0.5, 1.0), brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05,
                        jitter_p=0.5, gray_p=0.1),
            "none": cls(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0),
        }
        if name not in presets:
            raise ValueError(f"unknown SimCLRViews preset {name!r}; accepted: {', '.join(presets)}")
        return replace(presets[name], **overrides)

    def _size(self, x: torch.Tensor) -> tuple[int, int]:
        if self.size is None:
            return int(x.shape[2]), int(x.shape[3])
        if isinstance(self.size, int):
            return self.size, self.size
        return int(self.size[0]), int(self.size[1])

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_image(x, "SimCLRViews")
        b, _, height, width = x.shape
        dev = x.device
        boxes = crop_boxes(b, height, width, self.scale, self.ratio, generator, dev).to(x.dtype)
        flip = _rand(generator, (b,), dev) < self.flip_p
        out = crop_flip(x, boxes, flip, self._size(x))
        out = self._jitter(out, generator)
        gray = _rand(generator, (b,), dev) < self.gray_p
        out = torch.where(gray[:, None, None, None], grayscale(out).expand_as(out), out)
        blur = _rand(generator, (b,), dev) < self.blur_p
        sigma = _uniform(generator, b, *self.blur_sigma, dev)
        if blur.any():
            # SimCLR: kernel 10% of the image side, odd.
            kernel = max(3, int(0.1 * min(out.shape[2:])) // 2 * 2 + 1)
            idx = torch.nonzero(blur).flatten()
            out[idx] = gaussian_blur(out[idx], sigma[idx].to(out.dtype), kernel)
        return out.clamp_(0, 1)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """torchvision ColorJitter semantics with p = ``jitter_p``; each sample applies the four adjustments
        in its own random order."""
        b, dev = x.shape[0], x.device
        apply = _rand(generator, (b,), dev) < self.jitter_p
        order = torch.argsort(_rand(generator, (b, 4), dev), dim=1)
        factors = [_uniform(generator, b, max(0.0, 1 - s), 1 + s, dev)
                   for s in (self.brightness, self.contrast, self.saturation)]
        factors.append(_uniform(generator, b, -self.hue, self.hue, dev))
        strengths = (self.brightness, self.contrast, self.saturation, self.hue)
        x = x.clone()
        for position in range(4):
            for op, (fn, factor, strength) in enumerate(zip(_JITTER_OPS, factors, strengths, strict=True)):
                if strength == 0:
                    continue
                idx = torch.nonzero(apply & (order[:, position] == op)).flatten()
                if len(idx):
                    x[idx] = fn(x[idx], factor[idx].to(x.dtype))
        return x


class TwoViews:
    """``TwoViews(views)(x, generator)`` -> ``(view_1, view_2)``: two independent draws of the augmentation
    (optionally a different ``second`` pipeline, as in BYOL's asymmetric views)."""

    def __init__(self, first: SimCLRViews | None = None, second: SimCLRViews | None = None):
        self.first = first or SimCLRViews()
        self.second = second or self.first

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(x, generator), self.second(x, generator)
