"""``selfie``: masked patch position prediction (Trinh et al., 2019, "Selfie: Self-supervised Pretraining for
Image Embedding"); standard or adversarial (Chen et al., CVPR 2020).

A small faithful version. The image is cut into a ``grid`` x ``grid`` patch grid; ``num_masked`` positions
per image are masked out (drawn per image). Every patch is embedded by the shared encoder (the "patch
network", ``encoder.embed``) and projected to ``dim`` features ``h``. An attention-pooling network — a learned
query token followed by ``layers`` pre-norm transformer blocks over the *visible* patches — summarizes the
rest of the image into ``u``. For each masked position ``i`` the query ``v_i = u + pos_i`` (a learned position
embedding) scores each of the image's masked patches (the candidates) by ``v_i · h_j / sqrt(dim)``; the loss
is the cross-entropy of picking the patch that was really at ``i`` (chance is ``1 / num_masked``).

Differences from Trinh et al., kept deliberately small: the visible patches also carry their position
embedding (so the pooling knows the layout on tiny grids), the attention blocks are written with plain tensor
operations (twice differentiable, which ``pretext-ensemble``'s gradient regularizer needs), and the patch
network is the whole encoder rather than the first blocks of a ResNet. Adversarial examples are crafted on the
whole image before it is cut into patches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.pretrain.method import METHODS
from robustssl.pretrain.pretext import (
    PAPER_EPS,
    PAPER_STEP_SIZE,
    PAPER_STEPS,
    PretextMethod,
    PretextTask,
    check_int,
    cut_tiles,
    draw_on,
    embed_dim_of,
    embed_tiles,
    tile_size,
)


def mask_patches(
    batch: int,
    n_patches: int,
    num_masked: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``num_masked`` of ``n_patches`` positions per image, uniformly without replacement.

    Returns ``(masked (batch, num_masked), visible (batch, n_patches - num_masked))`` int64 position indices;
    per row the two are disjoint and together cover ``range(n_patches)``."""
    if not 1 <= num_masked < n_patches:
        raise ValueError(
            f"num_masked must be in [1, {n_patches - 1}] for {n_patches} patches, got {num_masked}"
        )
    order = draw_on(generator, torch.device(device), torch.rand, batch, n_patches).argsort(dim=1)
    return order[:, :num_masked], order[:, num_masked:]


class AttentionBlock(nn.Module):
    """Pre-norm transformer block (multi-head self-attention, then a GELU MLP) in plain tensor operations."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = (
            self.qkv(self.norm1(x)).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        )
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads), dim=-1)
        x = x + self.proj((weights @ v).transpose(1, 2).reshape(b, length, dim))
        return x + self.mlp(self.norm2(x))


class SelfieTask(PretextTask):
    name = "selfie"

    def __init__(
        self,
        embed_dim: int,
        grid: int = 4,
        num_masked: int = 4,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
    ):
        super().__init__()
        self.grid = check_int(self.name, "grid", grid, 2)
        self.n_patches = grid * grid
        self.num_masked = check_int(self.name, "num_masked", num_masked, 2, self.n_patches - 1)
        check_int(self.name, "dim", dim, 1)
        check_int(self.name, "layers", layers, 1)
        check_int(self.name, "heads", heads, 1)
        if dim % heads:
            raise ValueError(f"selfie: dim ({dim}) must be a multiple of heads ({heads})")
        self.project = nn.Linear(embed_dim, dim)
        self.position = nn.Parameter(torch.randn(self.n_patches, dim) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pooling = nn.Sequential(*(AttentionBlock(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"selfie expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        tile_size(x.shape[-2], x.shape[-1], self.grid, self.name)

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        masked, visible = mask_patches(x.shape[0], self.n_patches, self.num_masked, generator, x.device)
        return {"masked": masked, "visible": visible}

    def logits(
        self, encoder: Encoder, x: torch.Tensor, draw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        h = self.project(embed_tiles(encoder, cut_tiles(x, self.grid), self.name))  # (B, n, dim)
        rows = torch.arange(b, device=x.device)[:, None]
        masked, visible = draw["masked"], draw["visible"]
        tokens = torch.cat([self.query.expand(b, -1, -1), h[rows, visible] + self.position[visible]], dim=1)
        u = self.norm(self.pooling(tokens)[:, 0])  # (B, dim)
        queries = u[:, None, :] + self.position[masked]  # (B, m, dim)
        candidates = h[rows, masked]  # (B, m, dim), candidate j was at position masked[:, j]
        scores = queries @ candidates.transpose(1, 2) / math.sqrt(h.shape[-1])  # (B, m, m)
        targets = torch.arange(self.num_masked, device=x.device).expand(b, -1)
        return scores.reshape(b * self.num_masked, self.num_masked), targets.reshape(-1)


@METHODS.register("selfie")
class Selfie(PretextMethod):
    """Selfie. Options: ``grid`` (patches per side), ``num_masked``, pooling ``dim``/``layers``/``heads``,
    ``adversarial`` and its PGD ``eps``/``steps``/``step_size`` (Chen et al.: 8/255, 10, 2/255)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        grid: int = 4,
        num_masked: int = 4,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        augment: str = "padcrop",
        adversarial: bool = False,
        eps: float = PAPER_EPS,
        steps: int = PAPER_STEPS,
        step_size: float = PAPER_STEP_SIZE,
    ):
        task = SelfieTask(embed_dim_of(encoder, "selfie"), grid, num_masked, dim, layers, heads)
        super().__init__(
            encoder, task, augment=augment, adversarial=adversarial, eps=eps, steps=steps, step_size=step_size
        )
