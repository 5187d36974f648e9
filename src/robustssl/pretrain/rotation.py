"""``rotation``: predict which of 0°, 90°, 180°, 270° an image was rotated by (Gidaris et al., ICLR 2018),
from ``encoder.embed`` through a linear or MLP head; standard or adversarial (Chen et al., CVPR 2020).

By default each image gets one rotation, the four labels balanced within the batch (Chen et al.'s setting);
``all_rotations=True`` feeds all four rotations of every image (Gidaris et al.'s, four times the compute).
"""

from __future__ import annotations

import torch

from robustssl.encoders.base import Encoder
from robustssl.pretrain.method import METHODS
from robustssl.pretrain.pretext import (
    PAPER_EPS,
    PAPER_STEP_SIZE,
    PAPER_STEPS,
    PretextMethod,
    PretextTask,
    check_int,
    draw_on,
    embed_dim_of,
    mlp_head,
)

NUM_ROTATIONS = 4


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``out[i] = torch.rot90(x[i], k[i], dims=(1, 2))``: image ``i`` turned by ``k[i]`` quarter turns
    (counter-clockwise as ``torch.rot90``). ``x`` (B, C, H, W) with ``H == W``; ``k`` (B,) ints in 0..3."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    turned = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(NUM_ROTATIONS)])
    return turned[k, torch.arange(x.shape[0], device=x.device)]


class RotationTask(PretextTask):
    name = "rotation"

    def __init__(self, embed_dim: int, hidden_dim: int = 256, all_rotations: bool = False):
        super().__init__()
        check_int(self.name, "hidden_dim", hidden_dim, 0)
        self.all_rotations = bool(all_rotations)
        self.head = mlp_head(embed_dim, hidden_dim, NUM_ROTATIONS)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotation needs square images (B, 3, S, S), got shape {tuple(x.shape)}")

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        if self.all_rotations:
            k = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(b)
        else:  # balanced labels: 0, 1, 2, 3, 0, 1, ... shuffled
            k = draw_on(generator, x.device, torch.randperm, b) % NUM_ROTATIONS
        return {"k": k}

    def logits(
        self, encoder: Encoder, x: torch.Tensor, draw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = draw["k"]
        images = x.repeat(NUM_ROTATIONS, 1, 1, 1) if self.all_rotations else x
        return self.head(encoder.embed(rotate(images, k))), k


@METHODS.register("rotation")
class Rotation(PretextMethod):
    """Rotation prediction. Options: ``hidden_dim`` of the head (0 = linear), ``all_rotations``,
    ``adversarial`` and its PGD ``eps``/``steps``/``step_size`` (Chen et al.: 8/255, 10, 2/255)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        hidden_dim: int = 256,
        all_rotations: bool = False,
        augment: str = "padcrop",
        adversarial: bool = False,
        eps: float = PAPER_EPS,
        steps: int = PAPER_STEPS,
        step_size: float = PAPER_STEP_SIZE,
    ):
        super().__init__(
            encoder,
            RotationTask(embed_dim_of(encoder, "rotation"), hidden_dim, all_rotations),
            augment=augment,
            adversarial=adversarial,
            eps=eps,
            steps=steps,
            step_size=step_size,
        )
