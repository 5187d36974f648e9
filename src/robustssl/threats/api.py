"""``robustssl.threats.attack``: one call from a model and a batch to adversarial examples and their metrics.

>>> res = attack(model, x, y, "pgd", eps=8/255, steps=20)             # AttackResult
>>> res.x_adv, res.success, res.robust_accuracy, res.fwd, res.seconds
>>> sweep = attack(model, x, y, "apgd", eps=[2/255, 4/255, 8/255])    # SweepResult, one result per eps
>>> print(sweep.table())

Epsilon sweeps reuse work (Foolbox-style): one clean forward for all radii; radii run in increasing order
and a sample that succeeded at a smaller radius is a success at every larger one (its adversarial point
lies in every larger ball), so it is not attacked again and keeps that point. Objectives without a success
criterion (embedding distances, depth) attack every sample at every radius. Robust accuracy therefore
never rises with eps within one sweep.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from robustssl.registry import UnknownNameError
from robustssl.runtime.precision import autocast
from robustssl.runtime.seeding import make_generator
from robustssl.runtime.validation import check_image
from robustssl.threats.attacks import ATTACKS, Attack
from robustssl.threats.attacks.base import build_attack, detach, first_tensor, select
from robustssl.threats.attacks.eot import accepts_generator
from robustssl.threats.fusion import fold_batch_norm
from robustssl.threats.objectives import OBJECTIVES, Objective, objective_for_task
from robustssl.threats.threat_model import ThreatModel


@dataclass
class AttackResult:
    """One attack at one radius on a batch of ``n`` samples.

    ``x_adv`` (B, C, H, W) in [0, 1]; ``success``/``clean_success`` (B,) bool (all False when the
    objective has no success criterion, ``has_success``); ``loss``/``clean_loss`` (B,) the objective's loss
    on the evaluated model; ``distance`` (B,) ``‖x_adv − x‖``; ``fwd``/``bwd`` images through the model's
    forward/backward (the attack's plus the evaluation forwards); ``seconds`` wall time.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    clean_success: torch.Tensor
    loss: torch.Tensor
    clean_loss: torch.Tensor
    distance: torch.Tensor
    eps: float
    norm: str
    attack: str
    objective: str
    has_success: bool
    fwd: int = 0
    bwd: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.success.shape[0])

    @property
    def success_rate(self) -> float | None:
        """Fraction of samples where the attack's goal holds (clean failures included); None without a
        success criterion."""
        return float(self.success.float().mean()) if self.has_success and self.n else None

    @property
    def robust_accuracy(self) -> float | None:
        """Classification: fraction still correct under attack (``1 − success_rate``)."""
        rate = self.success_rate
        return None if rate is None else 1.0 - rate

    @property
    def clean_accuracy(self) -> float | None:
        return 1.0 - float(self.clean_success.float().mean()) if self.has_success and self.n else None

    @property
    def mean_loss(self) -> float:
        return float(self.loss.float().mean()) if self.n else float("nan")

    def row(self) -> dict[str, Any]:
        """A flat record (for tables and the result store)."""
        return {
            "attack": self.attack,
            "objective": self.objective,
            "norm": self.norm,
            "eps": self.eps,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "clean_loss": float(self.clean_loss.float().mean()) if self.n else float("nan"),
            "loss": self.mean_loss,
            "max_distance": float(self.distance.max()) if self.n else 0.0,
            "fwd": self.fwd,
            "bwd": self.bwd,
            "seconds": round(self.seconds, 4),
        }


class SweepResult(list):
    """``AttackResult`` per eps, in increasing eps order."""

    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self]

    @property
    def eps(self) -> list[float]:
        return [r.eps for r in self]

    def table(self) -> str:
        """A plain-text table, one line per eps."""
        cols = ("eps", "n", "clean_accuracy", "robust_accuracy", "loss", "fwd", "bwd", "seconds")
        lines = ["  ".join(f"{c:>15}" for c in cols)]
        for row in self.rows():
            cells = []
            for c in cols:
                v = row[c]
                cells.append(
                    f"{'-':>15}" if v is None else f"{v:>15.4f}" if isinstance(v, float) else f"{v:>15}"
                )
            lines.append("  ".join(cells))
        return "\n".join(lines)


def resolve_objective(objective: Objective | str | None, model: Any, target: Any) -> Objective:
    """The objective to use: given, by name, from ``model.task`` (a ``TaskModel``), or inferred from
    ``target`` for plain modules (None -> ``embed-l2``, int (B,) -> ``ce``, int (B, H, W) -> ``seg-ce``,
    float (B, H, W) -> ``depth-silog``)."""
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, str):
        if objective == "multitask":
            raise ValueError(
                "objective 'multitask' needs its tasks: pass "
                "MultiTaskObjective({task: (objective, weight), ...}) instead of the name"
            )
        return OBJECTIVES.create(objective)
    if objective is not None:
        raise ValueError(
            f"objective must be an Objective, a name or None, got {objective!r}; "
            f"valid names: {', '.join(OBJECTIVES.names())}"
        )
    task = getattr(model, "task", None)
    if isinstance(task, str):
        return objective_for_task(task)
    if target is None:
        return OBJECTIVES.create("embed-l2")
    if isinstance(target, torch.Tensor):
        if not target.dtype.is_floating_point and target.dim() == 1:
            return OBJECTIVES.create("ce")
        if not target.dtype.is_floating_point and target.dim() == 3:
            return OBJECTIVES.create("seg-ce")
        if target.dtype.is_floating_point and target.dim() in (3, 4):
            return OBJECTIVES.create("depth-silog")
    raise ValueError(
        "cannot infer the objective from this model and target; pass objective=, one of "
        f"{', '.join(OBJECTIVES.names())}"
    )


def _eps_list(eps: float | Sequence[float]) -> tuple[list[float], bool]:
    if isinstance(eps, torch.Tensor):
        eps = eps.tolist()
    if isinstance(eps, (list, tuple)):
        if not eps:
            raise ValueError("eps is an empty list; give at least one radius")
        return [float(e) for e in eps], True
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise ValueError(f"eps must be a number or a list of numbers, got {eps!r}")
    return [float(eps)], False


def _check_batch(x: torch.Tensor, target: Any) -> None:
    check_image(x, "robustssl.threats.attack", channels=None, force=True)
    if target is None:
        return
    for part in (
        target.values()
        if isinstance(target, dict)
        else target
        if isinstance(target, (tuple, list))
        else (target,)
    ):
        if part is None:
            continue
        if not isinstance(part, torch.Tensor):
            raise ValueError(
                f"targets must be tensors with a leading batch dimension, got {type(part).__name__}"
            )
        if part.dim() == 0 or part.shape[0] != x.shape[0]:
            raise ValueError(
                f"target of shape {tuple(part.shape)} does not match the batch of {x.shape[0]} "
                f"images; expected a leading dimension of {x.shape[0]}"
            )


def _with_precision(model: Any, precision: str, device: torch.device) -> Any:
    """``model`` itself for fp32, else a forward under autocast that keeps ``generator`` passing (EOT)."""
    autocast(device, precision)  # raises on an unknown precision, fp32 included
    if precision == "fp32":
        return model
    if accepts_generator(model):

        def forward_with_generator(x: torch.Tensor, generator: torch.Generator | None = None) -> Any:
            with autocast(device, precision):
                return model(x) if generator is None else model(x, generator=generator)

        return forward_with_generator

    def forward(x: torch.Tensor) -> Any:
        with autocast(device, precision):
            return model(x)

    return forward


def attack(
    model: Any,
    x: torch.Tensor,
    target: Any = None,
    name: str | Attack = "pgd",
    *,
    eps: float | Sequence[float] = 8 / 255,
    norm: str = "linf",
    objective: Objective | str | None = None,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    fold_bn: bool = True,
    **kwargs: Any,
) -> AttackResult | SweepResult:
    """Attack ``model`` on ``x`` (B, C, H, W) in [0, 1] with attack ``name`` (registered name or instance;
    ``kwargs`` go to its constructor) under ``norm`` at radius ``eps`` (or each radius of a list).

    ``target``: labels (B,), masks (B, H, W), depth (B, H, W), a dict for multi-task models, or None for
    embeddings. ``objective`` None picks it from ``model.task`` (see ``resolve_objective``). ``generator``
    None uses a fresh generator seeded 0 (results are reproducible either way). ``precision`` (fp32, bf16,
    fp16) runs the model's forward passes under autocast; losses are computed in fp32. ``fold_bn`` lets the
    attack's own passes run on a view of the model with eval-mode batch norm folded into the layer before it
    (``robustssl.threats.fusion``: the same function up to rounding, cheaper to differentiate); clean and
    adversarial outputs, and so every verdict, come from the model as given. Returns an ``AttackResult`` for
    one eps, a ``SweepResult`` for a list. The model's mode and weights are untouched.
    """
    if isinstance(name, str) and name not in ATTACKS:
        raise UnknownNameError("attack", name, ATTACKS.names())
    radii, is_sweep = _eps_list(eps)
    threats = [ThreatModel(norm, e) for e in radii]
    _check_batch(x, target)
    attacker = build_attack(name, **kwargs)
    objective = resolve_objective(objective, model, target)
    folded = fold_batch_norm(model) if fold_bn else model
    attacked = _with_precision(folded, precision, x.device)
    model = attacked if folded is model else _with_precision(model, precision, x.device)
    evaluate = attacker.target_forward(model)
    generator = generator if generator is not None else make_generator(0, x.device)
    label = name if isinstance(name, str) else attacker.name

    start = time.perf_counter()
    with torch.no_grad():
        clean = detach(evaluate(x))
    objective.validate(clean, target)
    clean_loss = objective.tracking_loss(clean, target, clean).detach()
    first = first_tensor(clean)
    no_success = torch.zeros(x.shape[0], dtype=torch.bool, device=first.device)
    clean_success = objective.success(clean, target, clean).detach() if objective.has_success else no_success
    clean_seconds = time.perf_counter() - start

    results = SweepResult()
    x_adv, success, loss = x.detach().clone(), clean_success.clone(), clean_loss.clone()
    for position, threat in enumerate(sorted(threats, key=lambda t: t.eps)):
        start = time.perf_counter()
        rows = (
            (~success).nonzero()[:, 0] if objective.has_success else torch.arange(x.shape[0], device=x.device)
        )
        fwd, bwd = (x.shape[0], 0) if position == 0 else (0, 0)
        if rows.numel():
            tgt = select(target, rows)
            x_rows = attacker.attack(attacked, x[rows], tgt, objective, threat, generator).detach()
            with torch.no_grad():
                out = detach(evaluate(x_rows))
            fwd += attacker.counts["fwd"] + int(rows.numel())
            bwd += attacker.counts["bwd"]
            ref = select(clean, rows)
            new_loss = objective.tracking_loss(out, tgt, ref).detach().to(loss.dtype)
            new_success = (
                objective.success(out, tgt, ref).detach() if objective.has_success else no_success[rows]
            )
            # A point found at a smaller radius lies in this ball too: keep it unless the new one is better.
            better = new_success | (new_loss >= loss[rows])
            take = rows[better]
            x_adv[take], loss[take], success[take] = x_rows[better], new_loss[better], new_success[better]
        seconds = time.perf_counter() - start + (clean_seconds if position == 0 else 0.0)
        results.append(
            AttackResult(
                x_adv=x_adv.clone(),
                success=success.clone(),
                clean_success=clean_success,
                loss=loss.clone(),
                clean_loss=clean_loss,
                distance=threat.distance(x_adv, x),
                eps=threat.eps,
                norm=norm,
                attack=label,
                objective=objective.name,
                has_success=objective.has_success,
                fwd=fwd,
                bwd=bwd,
                seconds=seconds,
            )
        )
    return results if is_sweep else results[0]
