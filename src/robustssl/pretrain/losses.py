"""Self-supervised losses, usable without any trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustssl.runtime import distributed


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True
) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020): each of the 2B projections must pick its partner view among the
    2B − 1 others. ``z1``, ``z2``: (B, D) projections of two views of the same B images. Returns a scalar.

    Under DDP (``gather=True``) the projections of every rank are gathered with gradients first, so the
    negatives are the global batch's, as in SimCLR's multi-device training.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"nt_xent expects two (B, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"nt_xent needs a batch of at least 2 images, got {z1.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if gather:
        z1, z2 = distributed.all_gather_with_grad(z1), distributed.all_gather_with_grad(z2)
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    partner = torch.arange(2 * batch, device=z.device).roll(batch)
    return F.cross_entropy(logits, partner)


def multi_view_nt_xent(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent with V >= 2 views per image (SupCon's unsupervised form, Khosla et al. 2020, as AdvCL uses it
    with its four views). ``z``: (B, V, D) projections, view ``v`` of image ``i`` at ``z[i, v]``.

    Each of the B·V projections is an anchor; its positives are the V − 1 other views of the same image, its
    candidates all B·V − 1 other projections. The anchor's loss is the mean over its positives of
    ``−log softmax``; the result is the mean over anchors. With V = 2 it equals :func:`nt_xent`. (SupCon's
    code also scales by ``temperature / 0.07``; we do not, so the loss is on NT-Xent's scale.)
    """
    if z.dim() != 3 or z.shape[1] < 2:
        raise ValueError(f"multi_view_nt_xent expects (B, V, D) with V >= 2 views, got {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"multi_view_nt_xent needs a batch of at least 2 images, got {z.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, views = z.shape[:2]
    flat = F.normalize(z.transpose(0, 1).reshape(batch * views, -1).float(), dim=1)  # view-major rows
    logits = flat @ flat.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    log_prob = torch.log_softmax(logits, dim=1)
    image = torch.arange(batch, device=z.device).repeat(views)
    positive = image[:, None] == image[None, :]
    positive.fill_diagonal_(False)
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / (views - 1)).mean()
