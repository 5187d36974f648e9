"""CIFAR ResNets: ``resnet18_cifar`` (basic blocks) and ``resnet50_cifar`` (bottlenecks).

The CIFAR variant of He et al. (2016) as used by SimCLR/solo-learn/ACL/AdvCL on 32x32 images: a 3x3 stride-1
stem and no max-pool, so the last stage is 1/8 of the input (4x4 at 32x32). Parameter names follow
torchvision (``conv1``, ``bn1``, ``layerN.M.downsample.0``), so solo-learn checkpoints load unchanged and
``shortcut.`` checkpoints (kuangliu layout, ACL, AdvCL) are renamed by ``checkpoints.load``.

``dual_bn=True`` gives every BN a clean and an adversarial branch (see ``batchnorm.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustssl.encoders.base import CIFAR10_MEAN, CIFAR10_STD, Encoder
from robustssl.encoders.batchnorm import DualBatchNorm2d, batch_norm
from robustssl.encoders.factory import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, dual_bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = batch_norm(planes, dual_bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = batch_norm(planes, dual_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes, stride, dual_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, "ResNet v1.5" as in torchvision) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, dual_bn: bool):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = batch_norm(planes, dual_bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = batch_norm(planes, dual_bn)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = batch_norm(out_planes, dual_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, out_planes, stride, dual_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_planes: int, out_planes: int, stride: int, dual_bn: bool) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    conv = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
    return nn.Sequential(conv, batch_norm(out_planes, dual_bn))


class CifarResNet(Encoder):
    """ResNet with a CIFAR stem. ``embed``: global average of the last stage, ``(B, 8 * width * expansion)``
    (512 · expansion at the original ``width`` 64); ``dense``: the last stage, ``(B, 8 * width * expansion,
    H / 8, W / 8)``. ``width`` scales every stage (16 makes a CPU-sized ResNet-18 for tests and benchmarks).
    """

    stride = 8

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], *,
                 dual_bn: bool = False, zero_init_residual: bool = False, width: int = 64,
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD):
        super().__init__(mean, std)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {tuple(layers)}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width (the first stage's channels; 64 in the original) must be an int >= 1, "
                             f"got {width!r}")
        self.dual_bn = dual_bn
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = batch_norm(width, dual_bn)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        stages = []
        stage_widths = (width, 2 * width, 4 * width, 8 * width)
        for i, (planes, n_blocks) in enumerate(zip(stage_widths, layers, strict=True)):
            blocks = []
            for j in range(int(n_blocks)):
                blocks.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1, dual_bn))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.embed_dim = self.dense_dim = in_planes
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He init for convs (fan_out, as torchvision); BN to identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity (Goyal et al., 2017).
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)):
                    bns = [last.clean, last.adv] if isinstance(last, DualBatchNorm2d) else [last]
                    for bn in bns:
                        nn.init.zeros_(bn.weight)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._dense(x).mean(dim=(2, 3))


@register("resnet18_cifar", description="ResNet-18, CIFAR stem (3x3 conv, no max-pool), 512-d, stride 8")
def resnet18_cifar(**kwargs: Any) -> CifarResNet:
    """Options: ``dual_bn``, ``zero_init_residual``, ``width`` (64), ``mean``/``std`` (None = no
    normalization)."""
    return CifarResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register("resnet50_cifar", description="ResNet-50, CIFAR stem (3x3 conv, no max-pool), 2048-d, stride 8")
def resnet50_cifar(**kwargs: Any) -> CifarResNet:
    """Options: ``dual_bn``, ``zero_init_residual``, ``width`` (64), ``mean``/``std`` (None = no
    normalization)."""
    return CifarResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
