"""Linear classification head: embeddings ``(B, D)`` -> logits ``(B, K)``."""

from __future__ import annotations

import torch
from torch import nn


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


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
        if z.dim() != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"LinearClassifier expects embeddings of shape (B, {self.in_dim}), "
                             f"got {tuple(z.shape)}")
        return self.linear(z)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}"
