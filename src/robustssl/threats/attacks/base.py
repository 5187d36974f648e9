"""The ``Attack`` contract: ``attack(forward, x, target, objective, threat, generator) -> x_adv``.

Every attack

- returns ``x_adv`` with ``threat.distance(x_adv, x) <= threat.eps (+1e-6)`` and ``x_adv`` in [0, 1],
- never changes the model's train/eval mode or its weights (it only calls ``forward``),
- takes all its randomness from the ``generator`` it is given (a fresh seeded one when None),
- counts the forward and backward passes it spends in ``self.counts`` (reset at every call), in images:
  a forward of a batch of B images adds B to ``fwd``, a backward through it adds B to ``bwd`` (so early
  stopping, which shrinks the batch, shows up as saved work).

Shared machinery for gradient attacks (``_new_call``, ``_begin``, ``_output``, ``_loss_and_grad``,
``BestPoints``, ``select``, ``build_attack``; ``_labels`` and ``_classifier_logits`` for the classifier-only
attacks) lives here so every attack counts and differentiates alike.

Randomized models under EOT (``eot.py``): ``forward`` then returns ``Draws``, the outputs of K random draws.
Attacks reach outputs only through objectives (EOT hands them ``ExpectedObjective``, and any objective an
attack builds itself, e.g. APGD-T's targeted DLR, must be made with ``objective.lift(...)``) or through
``mean_output``/``_classifier_logits``, which average the draws (logit differences, FAB's boundary, are
linear, so their gradient under the mean is EOT's mean gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from robustssl.registry import Registry
from robustssl.runtime.seeding import make_generator
from robustssl.threats.objectives import Objective
from robustssl.threats.threat_model import ThreatModel

Forward = Callable[[torch.Tensor], torch.Tensor]


class Draws(tuple):
    """The outputs of one input batch under ``K`` random draws of a randomized model (EOT's forward returns
    one; a tuple, so ``select`` and ``detach`` handle it)."""


def mean_output(output: Any) -> Any:
    """``output`` itself, or for ``Draws`` (nested too) the float mean of the draws; differentiable, dicts
    averaged per key."""
    if not isinstance(output, Draws):
        return output
    return _average([mean_output(o) for o in output])


def _average(items: list[Any]) -> Any:
    if isinstance(items[0], Mapping):
        return {k: _average([item[k] for item in items]) for k in items[0]}
    return torch.stack([item.float() for item in items]).mean(dim=0)


ATTACKS: Registry[Attack] = Registry("attack")


class Attack:
    name: str = "attack"
    #: norms this attack supports
    norms: tuple[str, ...] = ("linf", "l2")

    def __init__(self) -> None:
        self.counts = {"fwd": 0, "bwd": 0}

    def attack(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: torch.Tensor | None,
        objective: Objective,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # A method, not ``__call__ = attack``: the alias would bind the base class's ``attack`` forever.
        return self.attack(*args, **kwargs)

    def _check_norm(self, threat: ThreatModel) -> None:
        if threat.norm not in self.norms:
            raise ValueError(
                f"attack {self.name!r} supports norms {', '.join(self.norms)}; got {threat.norm!r}"
            )

    def target_forward(self, forward: Forward) -> Forward:
        """The system whose outputs decide success for ``forward`` (BPDA prepends its preprocessing)."""
        return forward

    # --- shared machinery -----------------------------------------------------------------------------------
    def _new_call(
        self, threat: ThreatModel, x: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Generator:
        """Start an attack call: check the norm, reset the counts, return the generator to draw from."""
        self._check_norm(threat)
        self.counts = {"fwd": 0, "bwd": 0}
        return generator if generator is not None else make_generator(0, x.device)

    def _output(self, forward: Forward, x: torch.Tensor) -> Any:
        """``forward(x)`` without a graph, counted."""
        with torch.no_grad():
            out = forward(x)
        self.counts["fwd"] += x.shape[0]
        return out

    def _labels(self, x: torch.Tensor, target: Any) -> torch.Tensor:
        """``target`` checked to hold one label per image of ``x``; as long on ``x``'s device."""
        if not isinstance(target, torch.Tensor) or target.shape != x.shape[:1]:
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(f"{self.name} needs integer labels of shape ({x.shape[0]},); got {got}")
        return target.to(device=x.device, dtype=torch.long)

    def _classifier_logits(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` as ``_output`` (the mean over draws under EOT), checked to be logits (B, K)."""
        return self._as_logits(self._output(forward, x))

    def _as_logits(self, output: Any) -> torch.Tensor:
        """``output`` (the mean over draws under EOT) checked to be a classifier's logits (B, K)."""
        logits = mean_output(output)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"{self.name} attacks classifiers: forward must return logits (B, K), got {got}")
        return logits

    def _begin(
        self, forward: Forward, x: torch.Tensor, target: Any, objective: Objective
    ) -> tuple[Any, BestPoints]:
        """(clean output or None, initial ``BestPoints``) of an attack call.

        The clean forward is spent only when the objective needs the clean output as reference (embedding,
        multi-task): otherwise the caller (``robustssl.threats.attack``) has judged the clean point already,
        and the attack's first evaluated point replaces the clean one (loss -inf).
        """
        if not objective.needs_reference:
            return None, BestPoints.empty(x)
        clean = self._output(forward, x)
        loss = self._tracking_loss(objective, clean, target, clean, objective.loss(clean, target, clean, 0.0))
        return clean, BestPoints(x, loss, self._success(objective, clean, target, clean))

    def _tracking_loss(
        self, objective: Objective, output: Any, target: Any, reference: Any, loss: torch.Tensor
    ) -> torch.Tensor:
        """The loss by which points are compared: ``loss`` itself unless the objective is scheduled."""
        if not objective.scheduled:
            return loss
        return objective.tracking_loss(detach(output), target, reference).detach()

    def _success(self, objective: Objective, output: Any, target: Any, reference: Any) -> torch.Tensor:
        """(B,) bool success; all False for objectives without a success criterion."""
        first = first_tensor(output)
        if not objective.has_success:
            return torch.zeros(first.shape[0], dtype=torch.bool, device=first.device)
        return objective.success(detach(output), target, reference).to(first.device)

    def _loss_and_grad(
        self,
        forward: Forward,
        x: torch.Tensor,
        target: Any,
        reference: Any,
        objective: Objective,
        progress: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(loss (B,), d loss / d x (B, ...), output) at ``x``; counted.

        ``torch.autograd.grad`` w.r.t. the input only, so the model's ``.grad`` fields are never touched.
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = forward(x)
            loss = objective.loss(out, target, reference, progress)
            grad = None
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        if grad is None:
            raise RuntimeError(
                f"attack {self.name!r}: the loss does not depend differentiably on the input (the model "
                "detaches it, e.g. a numpy or no_grad preprocessing); attack it with 'bpda' and that "
                "preprocessing, or with a score-based attack ('square')"
            )
        self.counts["fwd"] += x.shape[0]
        self.counts["bwd"] += x.shape[0]
        return loss.detach(), grad.detach(), detach(out)


class BestPoints:
    """Per-sample best point of an attack: a successful point first, else the one with the largest loss.

    Starts at the clean input (``x``, its loss and success). ``update`` takes candidates for the samples
    ``index`` (a (n,) long tensor into the batch); once a sample has succeeded its point is frozen.
    """

    def __init__(self, x: torch.Tensor, loss: torch.Tensor, success: torch.Tensor):
        self.x = x.detach().clone()
        self.loss = loss.detach().float().clone()
        self.success = success.detach().clone()

    @classmethod
    def empty(cls, x: torch.Tensor) -> BestPoints:
        """No point judged yet: the clean input with loss -inf, so any evaluated point replaces it."""
        n = x.shape[0]
        return cls(
            x,
            torch.full((n,), float("-inf"), device=x.device),
            torch.zeros(n, dtype=torch.bool, device=x.device),
        )

    def update(
        self,
        index: torch.Tensor,
        x: torch.Tensor,
        loss: torch.Tensor,
        success: torch.Tensor,
        unique: bool = True,
    ) -> None:
        """``unique=False`` when ``index`` may repeat a sample (several runs of it in one batch, as APGD-T's
        targets): of its candidates only the best one (successful first, then the largest loss) is kept."""
        loss = loss.float()
        if not unique:
            chosen = first_best_per_group(index, torch.where(success, float("inf"), loss), self.x.shape[0])
            index, x, loss, success = index[chosen], x[chosen], loss[chosen], success[chosen]
        frozen = self.success[index]
        take = ~frozen & (success | (loss > self.loss[index]))
        rows = index[take]
        self.x[rows] = x[take].detach()
        self.loss[rows] = torch.maximum(self.loss[rows], loss[take])
        self.success[rows] = success[take]


#: Images per pass, at most, when target classes run side by side on the CPU (``target_batch=None``): past
#: about this size a CPU's caches rather than the batch set the speed, and larger batches got slower.
CPU_TARGET_BATCH = 128


def check_target_batch(target_batch: Any) -> int | None:
    if target_batch is not None and (
        not isinstance(target_batch, int) or isinstance(target_batch, bool) or target_batch < 1
    ):
        raise ValueError(f"target_batch must be an int >= 1 (images per pass) or None (automatic), got "
                         f"{target_batch!r}")
    return target_batch


def targets_side_by_side(
    target_batch: int | None, n_points: int, n_targets: int, device: torch.device
) -> int:
    """How many target classes to run side by side on ``n_points`` points so that one pass holds at most
    ``target_batch`` images (at least one target). ``target_batch=None``: all targets at once on an
    accelerator, at most ``CPU_TARGET_BATCH`` images per pass on the CPU."""
    if target_batch is None:
        if device.type != "cpu":
            return n_targets
        target_batch = CPU_TARGET_BATCH
    return max(1, min(n_targets, target_batch // max(n_points, 1)))


def first_best_per_group(index: torch.Tensor, score: torch.Tensor, size: int) -> torch.Tensor:
    """(N,) bool choosing, for every distinct value of ``index`` (N,) in [0, size), its first row with the
    largest ``score`` (N,) (NaN counts as -inf)."""
    n = index.shape[0]
    score = torch.where(score.isnan(), float("-inf"), score)
    top = torch.full((size,), float("-inf"), dtype=score.dtype, device=score.device)
    top = top.scatter_reduce(0, index, score, "amax")
    at_top = score == top[index]
    position = torch.arange(n, device=index.device)
    first = torch.full((size,), n, dtype=torch.long, device=index.device)
    first = first.scatter_reduce(0, index[at_top], position[at_top], "amin")
    return at_top & (first[index] == position)


def build_attack(spec: Attack | str, **kwargs: Any) -> Attack:
    """An ``Attack`` from a registered name (``kwargs`` go to its constructor) or an instance as is."""
    if isinstance(spec, str):
        return ATTACKS.create(spec, **kwargs)
    if isinstance(spec, Attack):
        if kwargs:
            raise ValueError(
                f"keyword arguments {sorted(kwargs)} given with an attack instance {spec!r}; "
                "configure the instance instead"
            )
        return spec
    raise ValueError(f"expected an attack name or an Attack instance, got {spec!r}")


def select(batch: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of a batched structure: a tensor, a tuple/list or dict of them, or None."""
    if batch is None:
        return None
    if isinstance(batch, torch.Tensor):
        return batch[index]
    if isinstance(batch, Mapping):
        return {k: select(v, index) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(select(v, index) for v in batch)
    raise TypeError(f"cannot select samples from a {type(batch).__name__}; use tensors, tuples or dicts")


def first_tensor(batch: Any) -> torch.Tensor:
    """The first tensor of a batched structure (its leading dim is the batch size)."""
    if isinstance(batch, torch.Tensor):
        return batch
    values = list(batch.values()) if isinstance(batch, Mapping) else list(batch)
    if not values:
        raise ValueError("empty output structure")
    return first_tensor(values[0])


def detach(batch: Any) -> Any:
    """``batch`` with every tensor detached (same structure)."""
    if isinstance(batch, torch.Tensor):
        return batch.detach()
    if isinstance(batch, Mapping):
        return {k: detach(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(detach(v) for v in batch)
    return batch
