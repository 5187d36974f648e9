"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise (ImageNet-C's noise family).

Per-element noise for the whole batch in one draw, independent across pixels, channels and samples, as the
references draw it per image. Parameter tables: ``cifar`` from hendrycks/robustness
ImageNet-C/create_c/make_cifar_c.py, ``imagenet`` from ImageNet-C/create_c/make_imagenet_c.py (the same values
as imagecorruptions 1.1.2, imagecorruptions/corruptions.py).
"""

from __future__ import annotations

import math

import torch

from robustssl.threats.corruptions.base import CORRUPTIONS
from robustssl.threats.corruptions.kernels import draw_bytes, draw_normal
from robustssl.threats.corruptions.poisson import draw_poisson
from robustssl.threats.corruptions.tabulated import TabulatedCorruption


@CORRUPTIONS.register("gaussian_noise", family="noise")
class GaussianNoise(TabulatedCorruption):
    """Additive white noise ``x + N(0, c²)``; ``c`` is the standard deviation in [0, 1] units."""

    name, family = "gaussian_noise", "noise"
    TABLE = {"cifar": (0.04, 0.06, 0.08, 0.09, 0.10), "imagenet": (0.08, 0.12, 0.18, 0.26, 0.38)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        return draw_normal(tuple(x.shape), generator, x.device, std=c, dtype=x.dtype).add_(x)


@CORRUPTIONS.register("shot_noise", family="noise")
class ShotNoise(TabulatedCorruption):
    """Photon (Poisson) noise ``Poisson(x·c) / c``; ``c`` is the photon count of a white pixel."""

    name, family = "shot_noise", "noise"
    TABLE = {"cifar": (500, 250, 100, 75, 50), "imagenet": (60, 25, 12, 5, 3)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        # an exact vectorized sampler: torch.poisson draws one value at a time on the CPU (see poisson.py)
        return draw_poisson(x * c, generator).div_(c).to(x.dtype)


@CORRUPTIONS.register("impulse_noise", family="noise")
class ImpulseNoise(TabulatedCorruption):
    """Salt-and-pepper noise: each value is replaced with probability ``c``, by 1 or 0 with equal odds.

    As ``skimage.util.random_noise(mode="s&p", amount=c)``: the choice is made per channel value, not per
    pixel.
    """

    name, family = "impulse_noise", "noise"
    TABLE = {"cifar": (0.01, 0.02, 0.03, 0.05, 0.07), "imagenet": (0.03, 0.06, 0.09, 0.17, 0.27)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        # one uniform per value, as a 32-bit integer u (probability (u + 2**31) / 2**32): below c it is
        # replaced, and below c / 2 (half of those) by salt; exact to 2**-32, 8 values per generator step
        u = draw_bytes(4 * x.numel(), generator, x.device).view(torch.int32).view(x.shape)
        replaced, salt = (math.ceil(p * 2 ** 32) - 2 ** 31 for p in (c, c / 2))
        return torch.where(u < replaced, (u < salt).to(x.dtype), x)
