"""The ``Corruption`` contract: ``corrupt(x, severity, generator) -> x'``.

Batched ``(B, 3, H, W)`` float images in [0, 1] in, same shape/dtype/device out, values in [0, 1].
``severity`` is an int in 1..5. ``params`` picks the published parameter set: ``"cifar"`` (CIFAR-10-C),
``"imagenet"`` (ImageNet-C) or ``"auto"`` (by image size: the shorter side < 64 -> cifar).
"""

from __future__ import annotations

import torch

from robustssl.registry import Registry

CORRUPTIONS: Registry[Corruption] = Registry("corruption")
PARAM_SETS = ("cifar", "imagenet", "auto")


class Corruption:
    name: str = "corruption"
    family: str = "noise"  # noise | blur | weather | digital | extra
    #: True when the output does not depend on the generator
    deterministic: bool = False

    def corrupt(self, x: torch.Tensor, severity: int, generator: torch.Generator | None = None,
                params: str = "auto") -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, severity: int, generator: torch.Generator | None = None,
                 params: str = "auto") -> torch.Tensor:
        # delegate at call time: a class-level alias would bind the base method and ignore subclass overrides
        return self.corrupt(x, severity, generator, params)


def resolve_params(x: torch.Tensor, params: str) -> str:
    """``"auto"`` -> ``"cifar"`` when the shorter image side is below 64 pixels, else ``"imagenet"``."""
    if params not in PARAM_SETS:
        raise ValueError(f"unknown corruption parameter set {params!r}; accepted: {', '.join(PARAM_SETS)}")
    if params != "auto":
        return params
    return "cifar" if min(x.shape[-2:]) < 64 else "imagenet"


def check_severity(severity: object) -> int:
    """Severities are the ints 1..5 (ImageNet-C's levels)."""
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    return severity
