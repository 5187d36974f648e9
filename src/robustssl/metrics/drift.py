"""How far an attack or corruption moves an embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_drift(clean: torch.Tensor, perturbed: torch.Tensor,
                    eps: float = 1e-12) -> dict[str, torch.Tensor]:
    """Per-sample drift between ``clean`` and ``perturbed`` embeddings, both ``(B, D)``.

    Returns ``(B,)`` tensors: ``cosine`` in [-1, 1] (1 = same direction) and ``relative_l2`` =
    ``||perturbed - clean|| / ||clean||`` (>= 0; ``eps`` guards an all-zero clean embedding).
    Average them over a dataset with ``.mean()``: both are per-sample, so the mean is the dataset value.
    """
    if clean.shape != perturbed.shape or clean.dim() != 2:
        raise ValueError(f"clean and perturbed embeddings must both be (B, D), got {tuple(clean.shape)} "
                         f"and {tuple(perturbed.shape)}")
    c, p = clean.detach().float(), perturbed.detach().float()
    if torch.isnan(c).any() or torch.isnan(p).any():
        raise ValueError("embeddings contain NaN")
    cosine = F.cosine_similarity(c, p, dim=1, eps=eps)
    relative_l2 = (p - c).norm(dim=1) / c.norm(dim=1).clamp_min(eps)
    return {"cosine": cosine, "relative_l2": relative_l2}
