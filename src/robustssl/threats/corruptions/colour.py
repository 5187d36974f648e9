"""Batched RGB <-> HSV with scikit-image's conventions (``skimage.color.rgb2hsv`` / ``hsv2rgb``).

All three HSV channels lie in [0, 1] (hue as a fraction of a turn). Conventions that matter for matching the
references: where several channels share the maximum, blue wins over green over red; grey pixels (max == min)
get hue 0 and saturation 0, so raising their saturation tints them red, as in ImageNet-C's ``saturate``.
"""

from __future__ import annotations

import torch


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> ``(B, 3, H, W)`` HSV in [0, 1]."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    grey = delta == 0
    safe = delta.masked_fill(grey, 1.0)
    # delta = 0 wherever v = 0, so grey and black pixels get saturation 0 without a special case
    s = delta / v.masked_fill(v == 0, 1.0)
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = (h / 6.0).remainder_(1.0).masked_fill_(grey, 0.0)
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` HSV in [0, 1] -> ``(B, 3, H, W)`` RGB in [0, 1].

    Closed form of the six-sector table: channel ``n`` (R: 5, G: 3, B: 1) is
    ``v - v·s·clip(min(k, 4 - k), 0, 1)``
    with ``k = (n + 6h) mod 6``; one fused pass instead of building all six candidates.
    """
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (n + 6 * h).remainder(6)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def scale_saturation(x: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """Set the HSV saturation of ``(B, 3, H, W)`` RGB in [0, 1] to ``clip(s * scale + offset, 0, 1)``, keeping
    hue and value: ``hsv_to_rgb`` of the edited ``rgb_to_hsv``, computed without the round trip.

    With hue and value fixed, a channel sits at ``v - v * s * f`` where ``f = (v - c) / (v - min)`` is its
    distance below the maximum in units of the pixel's range, so the new channel is ``v + k * (c - v)`` with
    ``k = v * s' / (v - min)``. Grey pixels (``v == min``) have hue 0 (red): a positive offset gives them
    ``f = (0, 1, 1)``, as ``hsv_to_rgb`` does.
    """
    v = x.amax(1, keepdim=True)
    delta = v - x.amin(1, keepdim=True)
    # black pixels have delta = 0 too: saturation 0, without dividing by 0
    saturation = delta / torch.where(v > 0, v, 1.0)
    saturation = saturation.mul_(scale).add_(offset).clamp_(0, 1)
    grey = delta == 0
    gain = v * saturation
    out = torch.addcmul(v, gain / torch.where(grey, 1.0, delta), x - v)
    if offset > 0:
        out[:, 1:] -= torch.where(grey, gain, 0.0)
    return out
