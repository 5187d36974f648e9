"""Vision Transformers: ``vit_tiny`` (192 wide, 3 heads) and ``vit_small`` (384 wide, 6 heads), depth 12.

Dosovitskiy et al. (2021) with the DeiT widths (Touvron et al., 2021): pre-norm blocks, learned absolute
position embeddings, a CLS token. Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``, ``norm``), so timm, DINO and MAE ViT checkpoints load
with ``checkpoints.load(path, name="vit_small")``.

- ``embed(x)``: the CLS token after the final norm, ``(B, embed_dim)`` (``pool="mean"``: mean patch token);
- ``dense(x)``: patch tokens reshaped to ``(B, embed_dim, H / patch, W / patch)``; stride = patch size;
- ``tokens(x, keep=None)``: all tokens after the last block and final norm, ``(B, 1 + N, embed_dim)``;
  ``keep`` (``(B, K)`` patch indices) runs only those patches, as the MAE encoder does for visible patches.

Inputs whose size differs from ``img_size`` get bicubically resampled position embeddings (as timm does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustssl.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder
from robustssl.encoders.factory import register
from robustssl.runtime.validation import check_image

POOLS = ("cls", "mean")


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        # eps 1e-6 as in the original ViT and timm, so their weights reproduce their activations.
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def resample_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       num_prefix: int = 1) -> torch.Tensor:
    """Resample ``(1, prefix + gh*gw, D)`` position embeddings to another patch grid (anti-aliased bicubic).

    Prefix tokens (CLS) keep their embedding; only the grid part is interpolated.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} grid tokens, which is not the grid "
                         f"{old_grid[0]}x{old_grid[1]}")
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    # Anti-aliased bicubic, as timm resamples, so timm-trained weights see the embeddings they were tuned on.
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False,
                         antialias=True).to(pos.dtype)
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)], dim=1)


class VisionTransformer(Encoder):
    def __init__(self, *, img_size: int = 224, patch_size: int = 16, embed_dim: int = 192, depth: int = 12,
                 num_heads: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True, pool: str = "cls",
                 mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD):
        super().__init__(mean, std)
        if patch_size < 1 or img_size < patch_size or img_size % patch_size:
            raise ValueError(f"img_size must be a positive multiple of patch_size, got img_size={img_size}, "
                             f"patch_size={patch_size}")
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError("embed_dim must be a positive multiple of num_heads, got "
                             f"embed_dim={embed_dim}, num_heads={num_heads}")
        if depth < 1 or mlp_ratio <= 0:
            raise ValueError(f"depth must be >= 1 and mlp_ratio > 0, got depth={depth}, "
                             f"mlp_ratio={mlp_ratio}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; accepted: {', '.join(POOLS)}")
        self.img_size, self.patch_size, self.pool = img_size, patch_size, pool
        self.embed_dim = self.dense_dim = embed_dim
        self.stride = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's defaults: truncated normal (std 0.02) for position embeddings and linears, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an ``height x width`` input; both must be multiples of the patch size."""
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(f"{self.name}: input size {height}x{width} is not a positive multiple of the "
                             f"patch size {p}; resize or crop to a multiple of {p}")
        return height // p, width // p

    def _tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized images -> ``(B, 1 + N or 1 + K, D)`` tokens after the final norm."""
        grid = self.grid_size(x.shape[-2], x.shape[-1])
        pos = resample_pos_embed(self.pos_embed, self.grid, grid)
        patches = self.patch_embed(x) + pos[:, 1:]
        if keep is not None:
            patches = _gather_patches(patches, keep)
        cls = (self.cls_token + pos[:, :1]).expand(patches.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([cls, patches], dim=1)))

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens after the last block and the final norm.

        x: ``(B, 3, H, W)`` in [0, 1], H and W multiples of ``patch_size``. keep: optional ``(B, K)`` int64
        indices into the ``N = (H/p) * (W/p)`` patches (row-major) to run instead of all of them.
        Returns ``(B, 1 + N, D)`` (or ``(B, 1 + K, D)``); token 0 is CLS, the rest follow ``keep``'s order.
        """
        check_image(x, f"{self.name}.tokens", self.in_channels)
        return self._tokens(self.normalize(x), keep)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._tokens(x)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.grid_size(x.shape[-2], x.shape[-1])
        patches = self._tokens(x)[:, 1:]
        return patches.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)


def _gather_patches(patches: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    b, n, d = patches.shape
    if keep.dim() != 2 or keep.shape[0] != b or keep.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"keep must be a ({b}, K) integer tensor of patch indices, got shape "
                         f"{tuple(keep.shape)} and dtype {keep.dtype}")
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
        raise ValueError(f"keep indices must lie in [0, {n - 1}], got range "
                         f"[{int(keep.min())}, {int(keep.max())}]")
    return torch.gather(patches, 1, keep.long().unsqueeze(-1).expand(-1, -1, d))


@register("vit_tiny", description="ViT-Tiny (DeiT-Ti): 192 wide, 12 blocks, 3 heads; patch/img size options")
def vit_tiny(**kwargs: Any) -> VisionTransformer:
    """Options: ``img_size`` (224), ``patch_size`` (16), ``embed_dim``, ``depth``, ``num_heads``,
    ``mlp_ratio``, ``pool`` ("cls" or "mean"), ``mean``/``std``. CIFAR: ``img_size=32, patch_size=4``.
    """
    return VisionTransformer(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **kwargs})


@register("vit_small", description="ViT-Small (DeiT-S): 384 wide, 12 blocks, 6 heads; patch/img size options")
def vit_small(**kwargs: Any) -> VisionTransformer:
    """Options as ``vit_tiny``; defaults 384 wide, 12 blocks, 6 heads."""
    return VisionTransformer(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kwargs})
