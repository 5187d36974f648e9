"""``convnet_small``: a small fast ConvNet for tests and demos (about 0.4 M parameters, 15 MFLOPs at 32x32).

Four conv3x3-BN-ReLU blocks (widths 32, 64, 128, 256; strides 1, 2, 2, 2): ``embed`` is the global average of
the last block, ``(B, 256)``; ``dense`` the last block itself, ``(B, 256, H / 8, W / 8)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustssl.encoders.base import CIFAR10_MEAN, CIFAR10_STD, Encoder
from robustssl.encoders.batchnorm import batch_norm
from robustssl.encoders.factory import register


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, dual_bn: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn = batch_norm(out_ch, dual_bn)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ConvNetSmall(Encoder):
    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), strides: Sequence[int] = (1, 2, 2, 2), *,
                 dual_bn: bool = False, mean: Sequence[float] | None = CIFAR10_MEAN,
                 std: Sequence[float] | None = CIFAR10_STD):
        super().__init__(mean, std)
        widths, strides = [int(w) for w in widths], [int(s) for s in strides]
        if not widths or len(widths) != len(strides):
            raise ValueError("widths and strides must be non-empty and of equal length, got "
                             f"widths={widths}, strides={strides}")
        if any(w < 1 for w in widths) or any(s not in (1, 2) for s in strides):
            raise ValueError(f"widths must be positive and strides 1 or 2, got widths={widths}, "
                             f"strides={strides}")
        self.dual_bn = dual_bn
        chans = [3, *widths]
        self.blocks = nn.Sequential(*(ConvBlock(chans[i], chans[i + 1], s, dual_bn)
                                      for i, s in enumerate(strides)))
        self.embed_dim = self.dense_dim = widths[-1]
        self.stride = math.prod(strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))


@register("convnet_small", description="4 conv-BN-ReLU blocks (32-256 wide), 256-d, stride 8; fast on CPU")
def convnet_small(**kwargs: Any) -> ConvNetSmall:
    """Options: ``widths``, ``strides`` (1 or 2 each), ``dual_bn``, ``mean``/``std`` (None: identity)."""
    return ConvNetSmall(**kwargs)
