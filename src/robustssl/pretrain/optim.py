"""Optimizers for pretraining: SGD, AdamW, and LARS for large batches.

LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks"), in the form SimCLR
(Chen et al. 2020) and BYOL use: for each weight tensor, the weight-decayed gradient ``g = ∇ + λ w`` is scaled
by the trust ratio ``η ‖w‖ / ‖g‖`` (1 when either norm is 0), then heavy-ball momentum:
``v ← m v + lr · ratio · g``, ``w ← w − v``. Biases and normalization parameters (tensors of ≤ 1 dimension)
get neither weight decay nor the trust ratio (SimCLR's ``exclude_from_weight_decay`` / ``exclude_from_layer_
adaptation``). η = 0.001 as in SimCLR.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

OPTIMIZERS = ("sgd", "lars", "adamw")


class LARS(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        adapt: bool = True,
    ):
        if not lr > 0:
            raise ValueError(f"LARS: lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS: weight_decay must be >= 0 and trust_coefficient > 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            adapt=adapt,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                ratio = 1.0
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm.clamp_min(1e-30),
                        torch.ones_like(w_norm),
                    )
                update = g * (ratio * group["lr"])
                state = self.state[p]
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = update.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(update)
                    update = buf
                p.sub_(update)
        return loss


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``sgd`` (momentum, weight decay on every tensor), ``adamw``, or ``lars`` (biases and norm parameters
    excluded from weight decay and adaptation)."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        matrices = [p for p in params if p.dim() > 1]
        vectors = [p for p in params if p.dim() <= 1]
        groups = [{"params": matrices}, {"params": vectors, "weight_decay": 0.0, "adapt": False}]
        return LARS([g for g in groups if g["params"]], lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")
