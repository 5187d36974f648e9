"""Frequency filters for views: the high-frequency component (HFC) that AdvCL uses as an extra positive.

AdvCL (Fan et al., NeurIPS 2021, Sec. 3.2) takes the 2-D FFT of each channel, zeroes the frequencies inside a
disc of radius ``r`` around the zero frequency (``r = 8`` on 32-px CIFAR) and transforms back: what is left is
the edge and texture content that adversarial perturbations live in.
"""

from __future__ import annotations

import torch


def low_frequency_disc(height: int, width: int, radius: float, device: torch.device | None = None
                       ) -> torch.Tensor:
    """Boolean mask ``(height, width // 2 + 1)`` over ``rfft2`` frequencies: True where the integer frequency
    ``(fy, fx)`` (cycles per image, signed along the full axis) has ``sqrt(fy² + fx²) < radius``."""
    fy = torch.fft.fftfreq(height, d=1.0 / height, device=device)
    fx = torch.fft.rfftfreq(width, d=1.0 / width, device=device)
    return fy[:, None] ** 2 + fx[None, :] ** 2 < radius**2


def high_pass(x: torch.Tensor, radius: float) -> torch.Tensor:
    """High-frequency component of ``x`` ``(..., H, W)``: every frequency strictly inside the disc of
    ``radius`` (in cycles per image; the zero frequency included as soon as ``radius > 0``) is set to 0.

    Real in, real out, same shape and dtype; values are signed (a constant image maps to 0). ``radius = 0``
    returns ``x`` unchanged; a radius beyond the largest frequency returns zeros.
    """
    if x.dim() < 2:
        raise ValueError(f"high_pass expects (..., H, W), got shape {tuple(x.shape)}")
    if not radius >= 0:
        raise ValueError(f"high_pass: radius must be >= 0 (cycles per image), got {radius!r}")
    height, width = x.shape[-2:]
    spectrum = torch.fft.rfft2(x.float())
    keep = ~low_frequency_disc(height, width, radius, x.device)
    return torch.fft.irfft2(spectrum * keep, s=(height, width)).to(x.dtype)


def high_frequency_view(x: torch.Tensor, radius: float) -> torch.Tensor:
    """The HFC of images ``x`` ``(B, C, H, W)`` in [0, 1], made an image again: ``high_pass(x, radius)`` on
    the per-image, per-channel mean (the zero frequency the filter removed), clipped to [0, 1].

    AdvCL feeds the signed HFC straight to its network; our encoders take [0, 1] images and normalize inside,
    so the HFC is shown around each image's own mean colour instead of around 0.
    """
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (high_pass(x, radius) + mean).clamp(0.0, 1.0)
