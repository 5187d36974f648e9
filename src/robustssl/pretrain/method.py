"""The pretraining-method contract.

A method is an ``nn.Module`` holding ``encoder`` (the part that is kept) and whatever else it trains
(projectors, pretext heads, decoders), with

- ``training_loss(batch, generator) -> (loss, logs)``: the scalar to minimize on one batch and a dict of
  floats to log. ``batch`` holds ``image`` (B, 3, H, W) in [0, 1], ``index`` (B,) — the samples' positions in
  the training set (for per-sample state such as AdvCL's pseudo-labels) — and the dataset's other targets.
  All randomness (views, random starts) comes from ``generator``.
- ``forward(batch, generator)`` = ``training_loss``: the trainer calls the module itself, so wrappers that
  hook ``__call__`` (DistributedDataParallel, forward hooks) see every step.
- ``setup(dataset, device, generator)``: optional, called once by the trainer before the first step (also
  when resuming; it must be deterministic or cached), e.g. to compute pseudo-labels.
- ``requirements``: what the method needs of its encoder, checked at construction with a clear error.

``build_method(name, encoder, **options)`` checks the options against the method's signature and lists the
accepted ones when a name is wrong.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.registry import Registry

METHODS: Registry[PretrainMethod] = Registry("pretraining method")


class PretrainMethod(nn.Module):
    #: for methods trained with two batch-norm branches (ACL, AdvCL): the branch the exported encoder uses
    #: downstream; None leaves the encoder as it is
    eval_bn_branch: str | None = None

    def __init__(self, encoder: Encoder):
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise TypeError(
                f"pretraining needs a robustssl Encoder (embed/dense), got {type(encoder).__name__}"
            )
        self.encoder = encoder

    def setup(self, dataset: Any, device: torch.device, generator: torch.Generator) -> None:
        """Called once before training (and again on resume); the default does nothing."""

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.training_loss(batch, generator)


def method_options(name: str) -> dict[str, Any]:
    """The keyword options of method ``name`` and their defaults (``inspect.Parameter.empty`` if none)."""
    cls = METHODS.get(name)
    params = list(inspect.signature(cls).parameters.values())[1:]  # skip the encoder
    return {p.name: p.default for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}


def build_method(name: str, encoder: Encoder, **options: Any) -> PretrainMethod:
    """``METHODS.get(name)(encoder, **options)``, refusing unknown options with the list of accepted ones."""
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(
            f"{k}={v!r}" if v is not inspect.Parameter.empty else k for k, v in accepted.items()
        )
        raise ValueError(
            f"pretraining method {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {listed or '(none)'}"
        )
    return METHODS.get(name)(encoder, **options)
