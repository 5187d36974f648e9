"""The ``Attack`` contract: ``attack(forward, x, target, objective, threat, generator) -> x_adv``.

Every attack

- returns ``x_adv`` with ``threat.distance(x_adv, x) <= threat.eps (+1e-6)`` and ``x_adv`` in [0, 1],
- never changes the model's train/eval mode or its weights (it only calls ``forward``),
- takes all its randomness from the ``generator`` it is given (a fresh seeded one when None),
- counts the forward and backward passes it spends in ``self.counts`` (reset at every call).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from robustssl.registry import Registry
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel

Forward = Callable[[torch.Tensor], torch.Tensor]

ATTACKS: Registry[Attack] = Registry("attack")


class Attack:
    name: str = "attack"
    #: norms this attack supports
    norms: tuple[str, ...] = ("linf", "l2")

    def __init__(self) -> None:
        self.counts = {"fwd": 0, "bwd": 0}

    def attack(self, forward: Forward, x: torch.Tensor, target: torch.Tensor | None, objective: Objective,
               threat: ThreatModel, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    __call__ = attack

    def _check_norm(self, threat: ThreatModel) -> None:
        if threat.norm not in self.norms:
            raise ValueError(f"attack {self.name!r} supports norms {', '.join(self.norms)}; got {threat.norm!r}")
