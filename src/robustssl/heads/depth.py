"""Linear depth head on a dense feature map, in metres.

``mode="bins"`` follows DINOv2's linear depth head (Oquab et al. 2023, Sec. 7.5; ``DepthBaseDecodeHead`` in
facebookresearch/dinov2 with ``classify=True, n_bins=256, norm_strategy="linear"``, after AdaBins):
a BN + 1x1 conv gives ``n_bins`` scores per cell, the scores are normalized as
``p_k = (relu(s_k) + 0.1) / sum_j (relu(s_j) + 0.1)`` and depth is ``sum_k p_k * bin_k`` with the bin
centres spread uniformly ("UD") over ``[min_depth, max_depth]``. ``bin_spacing="log"`` spreads them
geometrically instead (DINOv2's "SID" option; its code calls ``torch.logspace`` on the raw depths, which
we read as intended to mean log-uniform spacing).

``mode="regression"`` is a BN + 1x1 conv to one channel squashed into the range:
``min_depth + (max_depth - min_depth) * sigmoid(s)``.

Depth is computed at feature resolution and then upsampled bilinearly. For bins this equals taking the
expectation under bilinearly upsampled normalized scores (interpolation is linear and weights sum to one),
so every output pixel is still a convex combination of bin centres, inside ``[min_depth, max_depth]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustssl.heads.classifier import _check_dims
from robustssl.heads.segmentation import check_features, check_size, resize_to

# opaque calls for torch.fx (see heads/segmentation.py)
torch.fx.wrap("check_features")
torch.fx.wrap("check_size")
torch.fx.wrap("resize_to")

DEPTH_MODES = ("bins", "regression")
BIN_SPACINGS = ("linear", "log")
#: added to the rectified scores before normalizing (DINOv2 / AdaBins "linear" norm strategy)
BIN_SCORE_EPS = 0.1


def depth_bins(min_depth: float, max_depth: float, n_bins: int, spacing: str = "linear") -> torch.Tensor:
    """``(n_bins,)`` bin centres from ``min_depth`` to ``max_depth`` inclusive, uniform or log-uniform."""
    if spacing not in BIN_SPACINGS:
        raise ValueError(f"unknown bin_spacing {spacing!r}; accepted: {', '.join(BIN_SPACINGS)}")
    if spacing == "log":
        logs = torch.linspace(math.log(min_depth), math.log(max_depth), n_bins, dtype=torch.float64)
        return torch.exp(logs).float()
    return torch.linspace(min_depth, max_depth, n_bins, dtype=torch.float64).float()


class DepthHead(nn.Module):
    """``forward(features (B, in_dim, h, w), size=(H, W))`` -> depth ``(B, 1, H, W)`` in metres,
    always inside ``[min_depth, max_depth]``."""

    def __init__(self, in_dim: int, mode: str = "bins", n_bins: int = 256, min_depth: float = 1e-3,
                 max_depth: float = 10.0, bin_spacing: str = "linear"):
        super().__init__()
        _check_dims(in_dim=in_dim, n_bins=n_bins)
        if mode not in DEPTH_MODES:
            raise ValueError(f"unknown depth head mode {mode!r}; accepted: {', '.join(DEPTH_MODES)}")
        if not (math.isfinite(min_depth) and math.isfinite(max_depth) and 0 < min_depth < max_depth):
            raise ValueError(f"depth range must satisfy 0 < min_depth < max_depth (finite), "
                             f"got min_depth={min_depth!r}, max_depth={max_depth!r}")
        if mode == "bins" and n_bins < 2:
            raise ValueError(f"mode 'bins' needs n_bins >= 2, got {n_bins}")
        self.in_dim, self.mode, self.bin_spacing = in_dim, mode, bin_spacing
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.n_bins = n_bins if mode == "bins" else 1
        self.norm = nn.BatchNorm2d(in_dim)
        self.predictor = nn.Conv2d(in_dim, self.n_bins, kernel_size=1)
        # validate bin_spacing in both modes so a typo never passes silently
        bins = depth_bins(self.min_depth, self.max_depth, max(self.n_bins, 2), bin_spacing)
        self.register_buffer("bins", bins if mode == "bins" else torch.empty(0), persistent=False)

    def forward(self, features: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        check_features(features, self.in_dim, "DepthHead")
        out_size = check_size(size, features, "DepthHead")
        scores = self.predictor(self.norm(features))
        if self.mode == "bins":
            weights = torch.relu(scores) + BIN_SCORE_EPS
            weights = weights / weights.sum(dim=1, keepdim=True)
            depth = torch.einsum("bkhw,k->bhw", weights, self.bins.to(weights.dtype)).unsqueeze(1)
        else:
            depth = self.min_depth + (self.max_depth - self.min_depth) * torch.sigmoid(scores)
        return resize_to(depth, out_size)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, mode={self.mode!r}, n_bins={self.n_bins}, "
                f"range=({self.min_depth}, {self.max_depth}), bin_spacing={self.bin_spacing!r}")
