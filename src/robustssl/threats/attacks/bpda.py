"""BPDA, backward pass differentiable approximation (Athalye, Carlini & Wagner, ICML 2018).

A defense ``model(preprocess(x))`` whose ``preprocess`` is non-differentiable (quantization, JPEG, a
purifier with discrete steps) or shatters gradients: the forward pass runs the real ``preprocess``, the
backward pass goes through ``approximation`` (identity when None, the paper's choice when
``preprocess(x) ≈ x``). Implemented as ``g(x) + (preprocess(x) − g(x)).detach()``: its value is
``preprocess(x)``, its gradient that of ``g``.

``BPDA(preprocess, approximation=None, inner="pgd", **inner_kw)``; ``attack(forward, ...)`` takes the model
**after** the preprocessing (the classifier); ``target_forward(forward)`` is the defended system
``forward(preprocess(x))``, which ``robustssl.threats.attack`` uses to judge success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from robustssl.threats.attacks.base import ATTACKS, Attack, Forward, build_attack
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel

Preprocess = Callable[[torch.Tensor], torch.Tensor]


@ATTACKS.register("bpda", kind="wrapper")
class BPDA(Attack):
    name = "bpda"

    def __init__(
        self,
        preprocess: Preprocess,
        approximation: Preprocess | None = None,
        inner: Attack | str = "pgd",
        **inner_kw: Any,
    ):
        super().__init__()
        if not callable(preprocess):
            raise ValueError(f"preprocess must be a callable images -> images, got {preprocess!r}")
        if approximation is not None and not callable(approximation):
            raise ValueError(
                f"approximation must be a callable images -> images or None, got {approximation!r}"
            )
        self.preprocess, self.approximation = preprocess, approximation
        self.inner = build_attack(inner, **inner_kw)
        self.norms = self.inner.norms

    def __repr__(self) -> str:
        return (f"BPDA(preprocess={self.preprocess!r}, approximation={self.approximation!r}, "
                f"inner={self.inner!r})")

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        """Value ``preprocess(x)``, gradient of ``approximation`` (identity when None)."""
        with torch.no_grad():
            value = self.preprocess(x.detach())
        approx = x if self.approximation is None else self.approximation(x)
        if value.shape != approx.shape:
            raise ValueError(
                f"preprocess returned shape {tuple(value.shape)} but the approximation "
                f"{tuple(approx.shape)}; they must match"
            )
        return approx + (value - approx).detach()

    def target_forward(self, forward: Forward) -> Forward:
        def defended(x: torch.Tensor) -> Any:
            with torch.no_grad():
                return forward(self.preprocess(x))

        return defended

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]; ``forward``: the model after the preprocessing."""
        generator = self._new_call(threat, x, generator)
        x_adv = self.inner.attack(
            lambda images: forward(self.bypass(images)), x, target, objective, threat, generator
        )
        self.counts = dict(self.inner.counts)
        return x_adv
