"""``corrupt(x, name, severity)``: one call for every registered corruption."""

from __future__ import annotations

import hashlib

import torch

from robustssl.threats.corruptions.base import CORRUPTIONS, check_severity, resolve_params


def names(family: str | None = None) -> list[str]:
    """Registered corruption names, sorted; ``family`` (noise, blur, weather, digital, extra) filters them."""
    if family is None:
        return CORRUPTIONS.names()
    families = sorted({CORRUPTIONS.meta(n).get("family", "") for n in CORRUPTIONS.names()})
    if family not in families:
        raise ValueError(f"unknown corruption family {family!r}; accepted: {', '.join(families)}")
    return [n for n in CORRUPTIONS.names() if CORRUPTIONS.meta(n).get("family") == family]


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None,
            params: str = "auto") -> torch.Tensor:
    """Corrupt a batch ``(B, 3, H, W)`` (or one image ``(3, H, W)``) float in [0, 1] with corruption
    ``name`` at ``severity`` 1..5; returns the same shape, dtype and device, values in [0, 1].

    ``params`` picks the published parameter set: ``"cifar"`` (CIFAR-10-C), ``"imagenet"`` (ImageNet-C) or
    ``"auto"`` (``cifar`` when the shorter side is below 64 pixels). Random corruptions draw from
    ``generator`` (torch's default generator when None); pass one for reproducible output.
    """
    corruption = CORRUPTIONS.create(name)
    check_severity(severity)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"corrupt: expected a torch.Tensor image, got {type(x).__name__}")
    single = x.dim() == 3
    batch = x.unsqueeze(0) if single else x
    resolve_params(batch, params)
    out = corruption.corrupt(batch, severity, generator, params)
    return out.squeeze(0) if single else out


def derive_seed(seed: int, *parts: object) -> int:
    """A 60-bit seed from ``seed`` and ``parts`` (e.g. corruption name, severity, sample index) via SHA-256:
    stable across processes and machines (unlike ``hash``), so every cell of a corrupted dataset gets its own
    reproducible stream."""
    key = "/".join(str(p) for p in (seed, *parts)).encode()
    return int(hashlib.sha256(key).hexdigest()[:15], 16)
