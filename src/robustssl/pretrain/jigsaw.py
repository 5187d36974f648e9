"""``jigsaw``: solve a jigsaw puzzle (Noroozi & Favaro, ECCV 2016); standard or adversarial (Chen et al., CVPR
2020).

The image is cut into a ``grid`` x ``grid`` tile grid (3x3 by default; 2x2 suits 32-px images), the tiles are
shuffled by one of ``num_permutations`` permutations, each shuffled tile is embedded by the shared encoder
(``encoder.embed``, a siamese "context-free network"), a shared layer maps each embedding to ``tile_dim``
features, the features are concatenated in the shuffled order and an MLP classifies the permutation index.

The permutation set is chosen greedily for a large minimum Hamming distance (each new permutation is one of
those farthest, in minimum Hamming distance, from the ones already chosen; ties broken by a generator seeded
with ``permutation_seed``), from all ``n!`` permutations of ``n <= 9`` tiles or from a seeded pool of 100,000
random ones for larger grids. It is a registered buffer, so it is saved in the training state and a resumed
run uses the checkpoint's set even if the method was rebuilt with different options (a set of another shape,
or rows that are not distinct permutations, is refused with a clear error).

``tile_crop`` < 1 takes each tile as a random crop of that fraction of its cell (Noroozi & Favaro crop 64 px
of 75-px cells, 0.85) so that edge continuity between tiles cannot give the answer away. Images whose side is
not a multiple of ``grid`` lose their outer remainder (see ``pretext.cut_tiles``). Adversarial examples are
crafted on the whole image before tiling.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.pretrain.method import METHODS
from robustssl.pretrain.pretext import (
    MIN_TILE,
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
    mlp_head,
    tile_size,
)

#: up to this many tiles every permutation is a candidate (9! = 362,880); beyond, a random pool
ENUMERATE_UP_TO = 9
POOL_SIZE = 100_000


@functools.lru_cache(maxsize=4)
def all_permutations(n: int) -> torch.Tensor:
    """Every permutation of ``range(n)`` as an (n!, n) int8 tensor, built by inserting ``m`` into every
    position of each permutation of ``range(m)`` (vectorized; 9! = 362,880 rows in well under a second)."""
    perms = torch.zeros(1, 0, dtype=torch.int8)
    for m in range(n):
        count = len(perms)
        grown = torch.empty(count * (m + 1), m + 1, dtype=torch.int8)
        for pos in range(m + 1):
            block = grown[pos * count : (pos + 1) * count]
            block[:, :pos], block[:, pos], block[:, pos + 1 :] = perms[:, :pos], m, perms[:, pos:]
        perms = grown
    return perms


def _candidates(n: int, generator: torch.Generator) -> torch.Tensor:
    """All permutations of ``n`` items (n <= 9), or a pool of distinct random ones, as (M, n) int8."""
    if n <= ENUMERATE_UP_TO:
        return all_permutations(n)
    pool = torch.rand(POOL_SIZE, n, generator=generator).argsort(dim=1).to(torch.int8)
    return torch.unique(pool, dim=0)


@functools.lru_cache(maxsize=8)
def _permutation_set(n: int, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    candidates = _candidates(n, generator)
    if count > len(candidates):
        raise ValueError(
            f"jigsaw: cannot choose {count} distinct permutations from a pool of {len(candidates)}"
        )
    columns = candidates.t().contiguous()  # (n, M): one pass per tile position is the fast layout

    def distance_to(index: int) -> torch.Tensor:
        row = candidates[index].tolist()
        out = torch.zeros(columns.shape[1], dtype=torch.uint8)
        for position, value in enumerate(row):
            out += columns[position] != value
        return out

    # Integer distances plus a random priority in [0, 1): argmax = farthest, ties broken at random.
    priority = torch.rand(len(candidates), generator=generator)
    chosen = [int(priority.argmax())]
    nearest = distance_to(chosen[0])
    for _ in range(count - 1):
        index = int((nearest + priority).argmax())
        chosen.append(index)
        nearest = torch.minimum(nearest, distance_to(index))
    return candidates[chosen].long()


def permutation_set(n_tiles: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct permutations of ``range(n_tiles)`` with a large minimum pairwise Hamming distance,
    (count, n_tiles) int64, deterministic in ``seed`` (see the module docstring for the selection)."""
    check_int("jigsaw", "n_tiles", n_tiles, 2)
    check_int("jigsaw", "seed", seed, 0)
    available = math.factorial(n_tiles)
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= available:
        grid = math.isqrt(n_tiles)
        layout = f"a {grid}x{grid} grid" if grid * grid == n_tiles else f"{n_tiles} tiles"
        raise ValueError(
            f"jigsaw: num_permutations must be an int in [2, {available}] ({layout} has "
            f"{available} permutations), got {count!r}"
        )
    return _permutation_set(n_tiles, count, seed).clone()


def min_hamming_distance(permutations: torch.Tensor) -> int:
    """Smallest Hamming distance between two rows of ``permutations`` (P, n)."""
    distances = (permutations[:, None, :] != permutations[None, :, :]).sum(dim=2)
    distances.fill_diagonal_(permutations.shape[1] + 1)
    return int(distances.min())


def check_permutation_set(permutations: torch.Tensor, n_tiles: int, where: str) -> None:
    """Raise unless ``permutations`` is a (P, n_tiles) set of distinct permutations of ``range(n_tiles)``."""
    if permutations.dim() != 2 or permutations.shape[1] != n_tiles:
        raise ValueError(
            f"{where}: expected a (P, {n_tiles}) permutation set, got shape {tuple(permutations.shape)}"
        )
    expected = torch.arange(n_tiles, device=permutations.device).expand_as(permutations)
    if not torch.equal(permutations.sort(dim=1).values, expected):
        raise ValueError(f"{where}: some rows are not permutations of 0..{n_tiles - 1}")
    if len(torch.unique(permutations, dim=0)) != len(permutations):
        raise ValueError(f"{where}: the permutations are not distinct")


def crop_tiles(
    tiles: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Per-tile crops: ``out[b, i] = tiles[b, i, :, top[b,i]:top[b,i]+height, left[b,i]:left[b,i]+width]``.

    ``tiles`` (B, n, C, th, tw); ``top``, ``left`` (B, n) int offsets. Returns (B, n, C, height, width)."""
    b, n = tiles.shape[:2]
    device = tiles.device
    rows = (top[..., None] + torch.arange(height, device=device))[..., :, None]  # (B, n, h, 1)
    cols = (left[..., None] + torch.arange(width, device=device))[..., None, :]  # (B, n, 1, w)
    ib = torch.arange(b, device=device).view(b, 1, 1, 1)
    it = torch.arange(n, device=device).view(1, n, 1, 1)
    return tiles[ib, it, :, rows, cols].permute(0, 1, 4, 2, 3)  # advanced dims first: (B, n, h, w, C)


class JigsawTask(PretextTask):
    name = "jigsaw"

    def __init__(
        self,
        embed_dim: int,
        grid: int = 3,
        num_permutations: int = 30,
        permutation_seed: int = 0,
        tile_crop: float = 1.0,
        tile_dim: int = 64,
        hidden_dim: int = 256,
    ):
        super().__init__()
        self.grid = check_int(self.name, "grid", grid, 2)
        check_int(self.name, "tile_dim", tile_dim, 1)
        check_int(self.name, "hidden_dim", hidden_dim, 0)
        if isinstance(tile_crop, bool) or not isinstance(tile_crop, (int, float)) or not 0 < tile_crop <= 1:
            raise ValueError(f"jigsaw: tile_crop must be a fraction in (0, 1], got {tile_crop!r}")
        self.tile_crop = float(tile_crop)
        self.n_tiles = grid * grid
        self.register_buffer(
            "permutations", permutation_set(self.n_tiles, num_permutations, permutation_seed)
        )
        self.tile_features = nn.Sequential(nn.Linear(embed_dim, tile_dim), nn.ReLU())
        self.classifier = mlp_head(self.n_tiles * tile_dim, hidden_dim, num_permutations)

    @property
    def min_hamming_distance(self) -> int:
        """The minimum pairwise Hamming distance of the permutation set in use."""
        return min_hamming_distance(self.permutations)

    def _crop_size(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        th, tw = tile_size(x.shape[-2], x.shape[-1], self.grid, self.name)
        ch, cw = max(1, round(th * self.tile_crop)), max(1, round(tw * self.tile_crop))
        if min(ch, cw) < MIN_TILE:
            raise ValueError(
                f"jigsaw: tile_crop={self.tile_crop} leaves {ch}x{cw}-px crops of {th}x{tw} tiles, "
                f"under the {MIN_TILE}x{MIN_TILE} minimum; raise tile_crop or use larger images"
            )
        return th, tw, ch, cw

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"jigsaw expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        self._crop_size(x)

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        out = {"label": draw_on(generator, x.device, torch.randint, len(self.permutations), (b,))}
        if self.tile_crop < 1:
            th, tw, ch, cw = self._crop_size(x)
            out["top"] = draw_on(generator, x.device, torch.randint, th - ch + 1, (b, self.n_tiles))
            out["left"] = draw_on(generator, x.device, torch.randint, tw - cw + 1, (b, self.n_tiles))
        return out

    def shuffled_tiles(self, x: torch.Tensor, draw: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n, C, h, w): position ``j`` of image ``b`` holds tile ``permutations[label[b], j]``."""
        tiles = cut_tiles(x, self.grid)
        if self.tile_crop < 1:
            _, _, ch, cw = self._crop_size(x)
            tiles = crop_tiles(tiles, draw["top"], draw["left"], ch, cw)
        order = self.permutations[draw["label"]]
        return tiles[torch.arange(x.shape[0], device=x.device)[:, None], order]

    def logits(
        self, encoder: Encoder, x: torch.Tensor, draw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.tile_features(embed_tiles(encoder, self.shuffled_tiles(x, draw), self.name))
        return self.classifier(features.flatten(1)), draw["label"]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kw: Any) -> None:
        # Refuse, with a message a user can act on, a checkpoint whose permutation set cannot be this task's.
        key = prefix + "permutations"
        if key in state_dict:
            loaded = state_dict[key]
            if tuple(loaded.shape) != tuple(self.permutations.shape):
                raise ValueError(
                    f"jigsaw: the checkpoint's permutation set has shape {tuple(loaded.shape)} but this "
                    f"method was built for {tuple(self.permutations.shape)} "
                    f"(num_permutations={len(self.permutations)}, "
                    f"grid={self.grid}); rebuild it with the options the checkpoint was trained with"
                )
            check_permutation_set(loaded, self.n_tiles, "jigsaw: the checkpoint's permutation set")
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)


@METHODS.register("jigsaw")
class Jigsaw(PretextMethod):
    """Jigsaw puzzles. Options: ``grid`` (tiles per side), ``num_permutations`` (P classes),
    ``permutation_seed``, ``tile_crop``, head sizes ``tile_dim``/``hidden_dim``, ``adversarial`` and its PGD
    ``eps``/``steps``/``step_size`` (Chen et al.: 8/255, 10, 2/255)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        grid: int = 3,
        num_permutations: int = 30,
        permutation_seed: int = 0,
        tile_crop: float = 1.0,
        tile_dim: int = 64,
        hidden_dim: int = 256,
        augment: str = "padcrop",
        adversarial: bool = False,
        eps: float = PAPER_EPS,
        steps: int = PAPER_STEPS,
        step_size: float = PAPER_STEP_SIZE,
    ):
        task = JigsawTask(
            embed_dim_of(encoder, "jigsaw"),
            grid,
            num_permutations,
            permutation_seed,
            tile_crop,
            tile_dim,
            hidden_dim,
        )
        super().__init__(
            encoder, task, augment=augment, adversarial=adversarial, eps=eps, steps=steps, step_size=step_size
        )
