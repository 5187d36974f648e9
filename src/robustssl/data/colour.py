"""Colour-space conversions on batched images, used by the SSL views (hue jitter) and the scene palettes.

All functions take and return ``(..., 3, H, W)``-style tensors with the channel axis at ``dim``; RGB and HSV
values lie in [0, 1] (hue as a fraction of a full turn).
"""

from __future__ import annotations

import torch

#: ITU-R BT.601 luma weights, the ones PIL's ``convert("L")`` uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def grayscale(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Luma of ``rgb`` (channel axis ``dim``), keeping a size-1 channel axis. Values stay in [0, 1]."""
    r, g, b = rgb.unbind(dim)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(dim)


def rgb_to_hsv(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """RGB in [0, 1] -> HSV in [0, 1] (same shape). Grey pixels get hue 0 and saturation 0."""
    r, g, b = rgb.unbind(dim)
    maxc = rgb.amax(dim)
    minc = rgb.amin(dim)
    delta = maxc - minc
    grey = delta == 0
    inv = 1.0 / torch.where(grey, torch.ones_like(delta), delta)
    # Hue sector: which channel is the maximum (the hexcone construction); red wins ties, then green.
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue = torch.where(is_r, (g - b) * inv, torch.where(is_g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv))
    hue = torch.where(grey, torch.zeros_like(hue), torch.remainder(hue / 6.0, 1.0))
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    return torch.stack((hue, sat, maxc), dim)


def hsv_to_rgb(hsv: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """HSV in [0, 1] -> RGB in [0, 1] (same shape), without branches: each channel is a clamped ramp."""
    h, s, v = hsv.unbind(dim)
    # f(n) = v - v*s*clamp(min(k, 4-k), 0, 1) with k = (n + 6h) mod 6, n = 5 (R), 3 (G), 1 (B).
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6.0 * h) % 6.0
        channels.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim)
