"""SimCLR (Chen et al. 2020): two augmented views, an MLP projector, NT-Xent."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from robustssl.data.views import SimCLRViews
from robustssl.encoders.base import Encoder
from robustssl.pretrain.losses import nt_xent
from robustssl.pretrain.method import METHODS, PretrainMethod


def projector(in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> nn.Sequential:
    """The 2-layer MLP projection head of SimCLR (its output feeds the loss; the encoder is what we keep)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def resolve_views(
    views: SimCLRViews | str | None, crop_scale: tuple[float, float] | list[float] | None = None
) -> SimCLRViews:
    """A ``SimCLRViews`` from an instance, a preset name (``cifar``, ``imagenet``, ``tiny``, ``none``) or None
    (the default pipeline); ``crop_scale`` overrides the random-resized-crop area range."""
    overrides = {} if crop_scale is None else {"scale": tuple(float(v) for v in crop_scale)}
    if isinstance(views, SimCLRViews):
        return dataclasses.replace(views, **overrides) if overrides else views
    if views is None:
        return SimCLRViews(**overrides)
    if isinstance(views, str):
        return SimCLRViews.preset(views, **overrides)
    raise TypeError(f"views must be a SimCLRViews, a preset name or None, got {type(views).__name__}")


@METHODS.register("simclr")
class SimCLR(PretrainMethod):
    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = 0.5,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        views: SimCLRViews | str | None = None,
        crop_scale: tuple[float, float] | list[float] | None = None,
    ):
        super().__init__(encoder)
        if not temperature > 0:
            raise ValueError(f"simclr: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.projector = projector(encoder.embed_dim, proj_hidden_dim, proj_dim)
        self.views = resolve_views(views, crop_scale)

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = (
            self.views(batch["image"], generator=generator),
            self.views(batch["image"], generator=generator),
        )
        z1, z2 = self.projector(self.encoder.embed(x1)), self.projector(self.encoder.embed(x2))
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"nt_xent": float(loss.detach())}
