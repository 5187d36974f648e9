"""The ``Encoder`` contract: an ``nn.Module`` that owns its normalization.

Subclasses implement ``_embed(x_normalized) -> (B, D)`` and ``_dense(x_normalized) -> (B, C, h, w)`` (ViTs:
CLS token and patch tokens); the base class checks the input and normalizes it first. Callers only use

- ``embed(x)`` -> ``(B, embed_dim)`` global embedding,
- ``dense(x)`` -> ``(B, dense_dim, H / stride, W / stride)`` feature map,

with ``x`` of shape ``(B, 3, H, W)`` in [0, 1]. ``forward`` is ``embed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustssl.runtime.validation import check_image

# torch.fx records the input check as one opaque call (it branches on the data), so an encoder traces whole
# and the check still runs in the traced graph (robustssl.threats.fusion folds batch norm that way).
torch.fx.wrap("check_image")

# Per-channel statistics used by the built-in encoders (None = identity).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as buffers so it follows ``.to(device)`` and is saved."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None and std is not None and (len(mean) != len(std) or len(mean) not in (1, 3)):
            raise ValueError(f"mean and std need 1 or 3 values each, got mean={tuple(mean)}, "
                             f"std={tuple(std)}")
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.identity = mean is None
        mean_t = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else (x - self.mean) / self.std


class Encoder(nn.Module):
    """Base class of every encoder. See the module docstring for the contract.

    Attributes every subclass sets: ``embed_dim``, ``dense_dim``, ``stride`` (input pixels per dense cell),
    ``name`` (registry name) and ``config`` (the keyword arguments that rebuild it with ``create``).
    """

    embed_dim: int
    dense_dim: int
    stride: int
    in_channels: int = 3

    def __init__(self, mean: Sequence[float] | None = IMAGENET_MEAN,
                 std: Sequence[float] | None = IMAGENET_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.name: str = type(self).__name__
        self.config: dict[str, Any] = {}

    # --- what subclasses implement -------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images -> (B, embed_dim)."""
        raise NotImplementedError

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images -> (B, dense_dim, h, w)."""
        raise NotImplementedError

    # --- the public contract --------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, f"{self.name}.embed", self.in_channels)
        return self._embed(self.normalize(x))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, f"{self.name}.dense", self.in_channels)
        return self._dense(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, embed_dim={self.embed_dim}, dense_dim={self.dense_dim}, "
                f"stride={self.stride}")
