"""``TaskModel`` = ``Encoder`` + head. The output shape depends on the task:

- ``classification``: ``(B, K)`` logits from ``head(encoder.embed(x))``,
- ``segmentation``: ``(B, K, H, W)`` logits from ``head(encoder.dense(x), size=(H, W))``,
- ``depth``: ``(B, 1, H, W)`` metric depth from ``head(encoder.dense(x), size=(H, W))``,
- ``embedding``: ``(B, D)``, the encoder's embedding itself (no head).
"""

from __future__ import annotations

import torch
from torch import nn

from robustssl.encoders.base import Encoder

TASKS = ("classification", "segmentation", "depth", "embedding")


class TaskModel(nn.Module):
    def __init__(self, encoder: Encoder, head: nn.Module | None, task: str):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
        if task == "embedding" and head is not None:
            raise ValueError("task 'embedding' takes no head")
        if task != "embedding" and head is None:
            raise ValueError(f"task {task!r} needs a head")
        self.encoder, self.head, self.task = encoder, head, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "embedding":
            return self.encoder.embed(x)
        if self.task == "classification":
            return self.head(self.encoder.embed(x))
        return self.head(self.encoder.dense(x), size=x.shape[-2:])
