"""Transfer (gray-box) attack: craft on a surrogate model, evaluate on the target.

``Transfer(surrogate, inner="pgd", **inner_kw)``: ``attack(forward, ...)`` ignores ``forward`` (the
target) while crafting: the inner attack (any registered attack or an instance) runs entirely on
``surrogate``, which must map the same images to outputs of the same kind (logits over the same classes,
embeddings the objective can compare, ...). ``robustssl.threats.attack`` then judges success on the target.
``counts`` are the surrogate's passes; the target is not queried at all while crafting.
"""

from __future__ import annotations

from typing import Any

import torch

from robustssl.threats.attacks.base import ATTACKS, Attack, Forward, build_attack
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel


@ATTACKS.register("transfer", kind="wrapper")
class Transfer(Attack):
    name = "transfer"

    def __init__(self, surrogate: Forward, inner: Attack | str = "pgd", **inner_kw: Any):
        super().__init__()
        if not callable(surrogate):
            raise ValueError(f"surrogate must be a model (callable images -> outputs), got {surrogate!r}")
        self.surrogate = surrogate
        self.inner = build_attack(inner, **inner_kw)
        self.norms = self.inner.norms

    def __repr__(self) -> str:
        return f"Transfer(surrogate={type(self.surrogate).__name__}, inner={self.inner!r})"

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]. Returns ``x_adv`` crafted on the surrogate."""
        generator = self._new_call(threat, x, generator)
        x_adv = self.inner.attack(self.surrogate, x, target, objective, threat, generator)
        self.counts = dict(self.inner.counts)
        return x_adv
