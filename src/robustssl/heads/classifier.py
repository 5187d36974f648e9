"""Linear classification head: embeddings ``(B, D)`` -> logits ``(B, K)``."""

from __future__ import annotations

import torch
from torch import nn


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_embeddings(z: torch.Tensor, in_dim: int) -> None:
    """Raise unless ``z`` is ``(B, in_dim)``."""
    if z.dim() != 2 or z.shape[1] != in_dim:
        raise ValueError(f"LinearClassifier expects embeddings of shape (B, {in_dim}), got {tuple(z.shape)}")


torch.fx.wrap("check_embeddings")  # an opaque call for torch.fx (robustssl.threats.fusion traces TaskModels)


class LinearClassifier(nn.Module):
    """One affine layer on a frozen embedding (the standard linear probe).

    ``forward(z)``: ``z`` of shape ``(B, in_dim)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        _check_dims(in_dim=in_dim, num_classes=num_classes)
        self.in_dim, self.num_classes = in_dim, num_classes
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_embeddings(z, self.in_dim)
        return self.linear(z)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}"
