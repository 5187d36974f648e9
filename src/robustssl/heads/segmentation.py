"""Linear segmentation head: BatchNorm + 1x1 conv on a dense feature map, bilinearly upsampled.

This is the "linear" protocol of DINOv2 (Oquab et al. 2023, Sec. 7.4): a BN and a linear layer on the patch
tokens, with logits upsampled to the label resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustssl.heads.classifier import _check_dims


def check_features(features: torch.Tensor, in_dim: int, where: str) -> None:
    """Raise unless ``features`` is ``(B, in_dim, h, w)``."""
    if features.dim() != 4 or features.shape[1] != in_dim:
        raise ValueError(f"{where} expects dense features of shape (B, {in_dim}, h, w), "
                         f"got {tuple(features.shape)}")


def resize_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``maps`` (B, C, h, w) bilinearly resized to ``size`` (returned as is when it already has that size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


# torch.fx records these as opaque calls (they branch on shapes), so a TaskModel traces whole
# (robustssl.threats.fusion) and its traced graph still checks and resizes.
torch.fx.wrap("check_features")
torch.fx.wrap("check_size")
torch.fx.wrap("resize_to")


def check_size(size: Sequence[int] | None, features: torch.Tensor, where: str) -> tuple[int, int]:
    """``size`` as a ``(H, W)`` tuple of positive ints (``None`` keeps the feature map's size)."""
    if size is None:
        return int(features.shape[-2]), int(features.shape[-1])
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{where}: size must be (H, W) with positive entries, got {size!r}")
    return size


class SegmentationHead(nn.Module):
    """``forward(features (B, in_dim, h, w), size=(H, W))`` -> logits ``(B, num_classes, H, W)``."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        _check_dims(in_dim=in_dim, num_classes=num_classes)
        self.in_dim, self.num_classes = in_dim, num_classes
        self.norm = nn.BatchNorm2d(in_dim)
        self.classifier = nn.Conv2d(in_dim, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        check_features(features, self.in_dim, "SegmentationHead")
        out_size = check_size(size, features, "SegmentationHead")
        # A 1x1 conv commutes with bilinear upsampling, so classifying first is exact and K/C times cheaper.
        return resize_to(self.classifier(self.norm(features)), out_size)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}"
