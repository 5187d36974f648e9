"""The held-out "extra" corruptions of ImageNet-C / CIFAR-10-C that this file owns: speckle_noise,
gaussian_blur, saturate (spatter, the fourth, lives with the weather corruptions).

Parameter tables: ``cifar`` from hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py, ``imagenet`` from
imagecorruptions 1.1.2 (imagecorruptions/corruptions.py; the values of
ImageNet-C/create_c/make_imagenet_c.py).
"""

from __future__ import annotations

import torch

from robustssl.threats.corruptions.base import CORRUPTIONS
from robustssl.threats.corruptions.colour import scale_saturation
from robustssl.threats.corruptions.kernels import draw_normal, gaussian_filter
from robustssl.threats.corruptions.tabulated import TabulatedCorruption


@CORRUPTIONS.register("speckle_noise", family="extra")
class SpeckleNoise(TabulatedCorruption):
    """Multiplicative noise ``x + x · N(0, c²)``: stronger in bright regions, none on black."""

    name, family = "speckle_noise", "extra"
    TABLE = {"cifar": (0.06, 0.1, 0.12, 0.16, 0.2), "imagenet": (0.15, 0.2, 0.35, 0.45, 0.6)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        return draw_normal(tuple(x.shape), generator, x.device, std=c, dtype=x.dtype).mul_(x).add_(x)


@CORRUPTIONS.register("gaussian_blur", family="extra")
class GaussianBlur(TabulatedCorruption):
    """``skimage.filters.gaussian`` with standard deviation ``c`` px (truncated at 4σ, replicated border)."""

    name, family, deterministic = "gaussian_blur", "extra", True
    TABLE = {"cifar": (0.4, 0.6, 0.7, 0.8, 1.0), "imagenet": (1, 2, 3, 4, 6)}

    def apply(self, x: torch.Tensor, c: float, generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        return gaussian_filter(x, float(c))


@CORRUPTIONS.register("saturate", family="extra")
class Saturate(TabulatedCorruption):
    """HSV saturation ``s -> clip(s · a + b, 0, 1)``: (de)saturation; ``b`` > 0 also tints grey pixels
    red, as in the reference."""

    name, family, deterministic, needs_rgb = "saturate", "extra", True, True
    # (scale a, offset b)
    TABLE = {"cifar": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
             "imagenet": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))}

    def apply(self, x: torch.Tensor, c: tuple[float, float], generator: torch.Generator | None,
              params: str) -> torch.Tensor:
        return scale_saturation(x, c[0], c[1])
