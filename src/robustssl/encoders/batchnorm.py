"""Dual batch norm: separate statistics and affine parameters for clean and adversarial inputs.

ACL (Jiang et al., NeurIPS 2020) and AdvCL (Fan et al., NeurIPS 2021) pretrain with two BN branches, because
clean and adversarial activations have different statistics and one shared BN hurts both. Every
``DualBatchNorm2d`` in a network reads the module attribute ``branch``; ``bn_branch(encoder, "adv")``
switches all of them at once for a block and restores the previous branch afterwards.

State-dict layout: ``<bn>.clean.*`` and ``<bn>.adv.*`` (foreign ``bn_list.0``/``bn_list.1`` keys, the ACL
layout, are mapped onto these by ``checkpoints.load``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

BN_BRANCHES = ("clean", "adv")


class DualBatchNorm2d(nn.Module):
    """Two ``BatchNorm2d`` branches; ``branch`` (``"clean"`` or ``"adv"``) selects the one used."""

    def __init__(self, num_features: int):
        super().__init__()
        self.clean = nn.BatchNorm2d(num_features)
        self.adv = nn.BatchNorm2d(num_features)
        self.branch = "clean"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adv(x) if self.branch == "adv" else self.clean(x)

    def extra_repr(self) -> str:
        return f"branch={self.branch!r}"


def batch_norm(num_features: int, dual: bool) -> nn.Module:
    """A plain ``BatchNorm2d`` or, with ``dual``, a ``DualBatchNorm2d``."""
    return DualBatchNorm2d(num_features) if dual else nn.BatchNorm2d(num_features)


def _dual_layers(module: nn.Module) -> list[DualBatchNorm2d]:
    layers = [m for m in module.modules() if isinstance(m, DualBatchNorm2d)]
    if not layers:
        raise ValueError(f"{type(module).__name__} has no dual batch-norm layers; build it with dual_bn=True "
                         "(e.g. create('resnet18_cifar', dual_bn=True))")
    return layers


def set_bn_branch(module: nn.Module, branch: str) -> None:
    """Route every ``DualBatchNorm2d`` inside ``module`` through ``branch`` (``"clean"`` or ``"adv"``)."""
    if branch not in BN_BRANCHES:
        raise ValueError(f"unknown batch-norm branch {branch!r}; accepted: {', '.join(BN_BRANCHES)}")
    for layer in _dual_layers(module):
        layer.branch = branch


def get_bn_branch(module: nn.Module) -> str:
    """The branch the dual BN layers of ``module`` currently use."""
    branches = {layer.branch for layer in _dual_layers(module)}
    if len(branches) != 1:
        raise ValueError(f"dual batch-norm layers disagree on the branch: {sorted(branches)}")
    return branches.pop()


@contextlib.contextmanager
def bn_branch(module: nn.Module, branch: str) -> Iterator[nn.Module]:
    """``with bn_branch(encoder, "adv"): encoder.embed(x_adv)``; the previous branch is restored on exit."""
    previous = [(layer, layer.branch) for layer in _dual_layers(module)]
    set_bn_branch(module, branch)
    try:
        yield module
    finally:
        for layer, old in previous:
            layer.branch = old
