"""The pretraining-method contract: an ``nn.Module`` holding ``encoder`` (the part that is kept) and whatever
else the method trains (projectors, pretext heads), with ``training_loss(batch, generator) -> (loss, logs)``.
"""

from __future__ import annotations

import torch
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.registry import Registry

METHODS: Registry[PretrainMethod] = Registry("pretraining method")


class PretrainMethod(nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise TypeError(
                f"pretraining needs a robustssl Encoder (embed/dense), got {type(encoder).__name__}"
            )
        self.encoder = encoder

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError
