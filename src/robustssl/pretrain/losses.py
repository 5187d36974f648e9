"""Self-supervised losses, usable without any trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020): each of the 2B projections must pick its partner view among the
    2B − 1 others. ``z1``, ``z2``: (B, D) projections of two views of the same B images. Returns a scalar.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"nt_xent expects two (B, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"nt_xent needs a batch of at least 2 images, got {z1.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    partner = torch.arange(2 * batch, device=z.device).roll(batch)
    return F.cross_entropy(logits, partner)
