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

    __call__ = corrupt
