"""EOT, expectation over transformation (Athalye, Carlini & Wagner, ICML 2018): attack a randomized model
by ascending the loss averaged over ``samples`` random forward passes.

``EOT(inner="pgd", samples=8, **inner_kw)`` wraps any attack (a registered name with its keyword
arguments, or an instance): every forward the inner attack asks for becomes ``samples`` forwards, and the
objective becomes the mean of the per-draw losses, so each gradient is the mean of ``samples`` gradients.

How a randomized model receives its randomness: when ``forward`` accepts a ``generator`` keyword (e.g.
``def forward(self, x, generator=None)``), EOT passes a generator split off the attack's own, so the whole
attack is reproducible from one seed. Otherwise ``forward(x)`` is called plainly (its randomness then
comes from wherever the model takes it, e.g. dropout's global RNG).

Success under EOT: the objective's success must hold in **every** draw (a point that fools the model only
sometimes is not yet a success, and attacking it further costs little). Clean references (embedding
objectives) are the mean clean output over the draws. Counts: ``samples`` forwards per inner forward.

Any attack can be wrapped: objectives an inner attack builds itself (APGD's ``objective_override``, APGD-T's
targeted DLR per class, AutoAttack's stage losses) are made with ``objective.lift(...)``, which
``ExpectedObjective`` answers with another expectation over the draws, at any depth of nesting (EOT of EOT);
classifier attacks that read logits directly (FAB's boundary, APGD-T's choice of target classes) read the
mean logits over the draws (``base.mean_output``), for FAB the exact EOT gradient since logit differences
are linear.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustssl.runtime.seeding import split_generator
from robustssl.threats.attacks.base import ATTACKS, Attack, Draws, Forward, build_attack, detach, mean_output
from robustssl.threats.objectives import Objective, Target
from robustssl.threats.threat_model import ThreatModel


def accepts_generator(forward: Callable[..., Any]) -> bool:
    """True when ``forward`` (a module's ``forward`` for modules) names a ``generator`` parameter.

    ``**kwargs`` alone does not count: a wrapper that forwards them to a deterministic model would fail.
    """
    target = forward.forward if isinstance(forward, nn.Module) else forward
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params


class ExpectedObjective(Objective):
    """``objective`` averaged over the draws of a ``Draws`` output."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.name = f"eot({objective.name})"
        self.needs_reference = objective.needs_reference
        self.has_success = objective.has_success
        self.scheduled = objective.scheduled

    @staticmethod
    def _reference(reference: Any) -> Any:
        return detach(mean_output(reference))

    def lift(self, other: Objective) -> Objective:
        # Lifted through the inner objective first, so an EOT nested in another reads draws of draws.
        return ExpectedObjective(self.objective.lift(other))

    def validate(self, output: Any, target: Target) -> None:
        for out in output:
            self.objective.validate(out, target)

    def loss(
        self, output: Draws, target: Target, reference: Any = None, progress: float = 0.0
    ) -> torch.Tensor:
        ref = self._reference(reference)
        return torch.stack([self.objective.loss(o, target, ref, progress) for o in output]).mean(dim=0)

    def tracking_loss(self, output: Draws, target: Target, reference: Any = None) -> torch.Tensor:
        ref = self._reference(reference)
        return torch.stack([self.objective.tracking_loss(o, target, ref) for o in output]).mean(dim=0)

    def success(self, output: Draws, target: Target, reference: Any = None) -> torch.Tensor:
        ref = self._reference(reference)
        return torch.stack([self.objective.success(o, target, ref) for o in output]).all(dim=0)


@ATTACKS.register("eot", kind="wrapper")
class EOT(Attack):
    name = "eot"

    def __init__(self, inner: Attack | str = "pgd", samples: int = 8, **inner_kw: Any):
        super().__init__()
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        self.inner, self.samples = build_attack(inner, **inner_kw), samples
        self.norms = self.inner.norms

    def __repr__(self) -> str:
        return f"EOT(inner={self.inner!r}, samples={self.samples})"

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]. Returns the inner attack's ``x_adv`` against the expectation."""
        generator = self._new_call(threat, x, generator)
        forward_gen, inner_gen = split_generator(generator, 2)
        with_generator = accepts_generator(forward)

        def expected_forward(images: torch.Tensor) -> Draws:
            if with_generator:
                return Draws(forward(images, generator=forward_gen) for _ in range(self.samples))
            return Draws(forward(images) for _ in range(self.samples))

        x_adv = self.inner.attack(
            expected_forward, x, target, ExpectedObjective(objective), threat, inner_gen
        )
        self.counts = {k: v * self.samples for k, v in self.inner.counts.items()}
        return x_adv
