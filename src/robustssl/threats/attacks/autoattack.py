"""AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"): a fixed cascade of attacks, each run only on the points still robust.

Versions (the published settings of the reference implementation, ``autoattack.py``'s ``set_version``):

==========  ==========================================================================================
version     cascade
==========  ==========================================================================================
standard    APGD-CE (1 restart), APGD-T (9 targets, targeted DLR), FAB-T (9 targets), Square (5000 q.)
plus        APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square (5000 queries, 1 restart),
            APGD-T (9 targets), FAB-T (9 targets)
rand        APGD-CE and APGD-DLR, each with EOT over 20 draws (for randomized defences)
==========  ==========================================================================================

All APGD/FAB runs take 100 iterations (``steps``). Registered as ``"autoattack"`` (``version=`` picks one,
default ``standard``), ``"autoattack-plus"`` and ``"autoattack-rand"``. ``attacks=[...]`` runs a custom
subset/order of the stage names above (``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``,
``square``).

Classifier-only: ``forward`` returns logits ``(B, K)``, ``target`` holds labels ``(B,)``. A point is robust
while the model classifies it correctly; each stage's own losses are fixed by the paper (CE, DLR, targeted
DLR, FAB's boundary distance, the margin for Square), so the call's ``objective`` only lends its way of
reading outputs (``Objective.lift``: wrapped in ``EOT``, every stage and the robustness check average over
the draws, and a point counts as broken when every draw misclassifies it).

After a call, ``last_report`` (an :class:`AutoAttackReport`) holds the per-stage breakdown: points
attacked, points broken, robust accuracy after the stage, seconds, forward/backward passes (in images).

Why it is cheaper than running the stages naively: every stage sees only the still-robust points, and
inside APGD, APGD-T, FAB and Square a sample leaves the batch as soon as it is broken within ``eps`` (FAB
stops minimizing the norm once inside the ball; the verdict within the threat model is the same), FAB's
check of a step shares its forward pass with the next step's gradient, and APGD-T and FAB-T run their 9
target classes side by side in one batch (each target keeps its own full run; larger batches make each
model pass cheaper per image). ``batch_size`` bounds the points per chunk, so a chunk of the targeted
stages holds up to ``9 · batch_size`` images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from robustssl.runtime.logging import get_logger
from robustssl.runtime.seeding import split_generator
from robustssl.threats.attacks.apgd import APGD, APGDTargeted
from robustssl.threats.attacks.base import ATTACKS, Attack, Forward
from robustssl.threats.attacks.eot import EOT, accepts_generator
from robustssl.threats.attacks.fab import FAB
from robustssl.threats.attacks.square import Square
from robustssl.threats.objectives import DLR, CrossEntropy, CWMargin, Objective
from robustssl.threats.threat_model import ThreatModel

_LOG = get_logger(__name__)

VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# Restarts of the untargeted APGD and FAB per version (targeted stages always use 1; Square 1).
_RESTARTS = {"standard": 1, "plus": 5, "rand": 1}


@dataclass(frozen=True)
class StageResult:
    """One stage of the cascade: ``attacked`` points (robust before it), ``broken`` by it, robust accuracy
    over all ``n`` points after it, wall seconds, forward/backward passes in images."""

    attack: str
    attacked: int
    broken: int
    robust_accuracy: float
    seconds: float
    fwd: int
    bwd: int


@dataclass
class AutoAttackReport:
    """Per-stage breakdown of one AutoAttack call. ``robust``: (n,) bool, robust after the whole cascade."""

    version: str
    norm: str
    eps: float
    n: int
    clean_accuracy: float
    stages: list[StageResult] = field(default_factory=list)
    robust: torch.Tensor | None = None

    @property
    def robust_accuracy(self) -> float:
        return self.stages[-1].robust_accuracy if self.stages else self.clean_accuracy

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def table(self) -> str:
        """A plain-text table: one row per stage, robust accuracy in percent."""
        lines = [f"AutoAttack-{self.version} {self.norm} eps={self.eps:.5g} n={self.n} "
                 f"clean={100 * self.clean_accuracy:.2f}%",
                 f"{'stage':<10} {'attacked':>8} {'broken':>7} {'robust %':>9} {'seconds':>8} {'fwd':>10} "
                 f"{'bwd':>10}"]
        for s in self.stages:
            lines.append(f"{s.attack:<10} {s.attacked:>8} {s.broken:>7} {100 * s.robust_accuracy:>9.2f} "
                         f"{s.seconds:>8.2f} {s.fwd:>10} {s.bwd:>10}")
        return "\n".join(lines)


def _check_count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"AutoAttack {name} must be an int >= 1, got {value!r}")
    return value


class AutoAttack(Attack):
    """The AutoAttack cascade. See the module docstring for versions and stages.

    Args:
        version: ``standard``, ``plus`` or ``rand``.
        n_classes: number of classes, checked against the logits when given (the targeted stages attack
            ``min(n_target_classes, K − 1)`` classes).
        steps: iterations of every APGD and FAB run (100 in the paper).
        n_queries: Square's query budget (5000 in the paper).
        n_target_classes: targets of APGD-T and FAB-T (9 in the paper).
        restarts: restarts of the untargeted APGD/FAB stages; None = the version's (1, or 5 for ``plus``).
        eot_samples: EOT draws per gradient in the ``rand`` version (20 in the paper).
        attacks: a custom list of stage names, replacing the version's cascade.
        batch_size: attack the robust points in chunks of this size (None: all at once).
    """

    name = "autoattack"
    norms = ("linf", "l2")

    def __init__(self, version: str = "standard", n_classes: int | None = None, steps: int = 100,
                 n_queries: int = 5000, n_target_classes: int = 9, restarts: int | None = None,
                 eot_samples: int = 20, attacks: list[str] | tuple[str, ...] | None = None,
                 batch_size: int | None = None):
        super().__init__()
        if version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {version!r}; accepted: {', '.join(VERSIONS)}")
        stages = tuple(VERSIONS[version] if attacks is None else attacks)
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"unknown AutoAttack stages {unknown or stages!r}; "
                             f"accepted: {', '.join(STAGES)}")
        if n_classes is not None and (_check_count("n_classes", n_classes) < 2):
            raise ValueError(f"AutoAttack n_classes must be >= 2, got {n_classes!r}")
        self.version, self.stages, self.n_classes = version, stages, n_classes
        self.steps = _check_count("steps", steps)
        self.n_queries = _check_count("n_queries", n_queries)
        self.n_target_classes = _check_count("n_target_classes", n_target_classes)
        self.restarts = _RESTARTS[version] if restarts is None else _check_count("restarts", restarts)
        self.eot_samples = _check_count("eot_samples", eot_samples)
        self.batch_size = None if batch_size is None else _check_count("batch_size", batch_size)
        self.last_report: AutoAttackReport | None = None
        if version != "standard":
            self.name = f"autoattack-{version}"

    def __repr__(self) -> str:
        return (f"AutoAttack(version={self.version!r}, stages={list(self.stages)}, steps={self.steps}, "
                f"n_queries={self.n_queries}, n_target_classes={self.n_target_classes}, "
                f"restarts={self.restarts})")

    def build_stage(self, stage: str) -> tuple[Attack, Objective]:
        """The attack of one stage and the objective it is called with (success = misclassified)."""
        objective: Objective = CrossEntropy()
        if stage == "apgd-ce":
            attack: Attack = APGD(steps=self.steps, restarts=self.restarts)
        elif stage == "apgd-dlr":
            # Ascend DLR, judge by misclassification (under EOT the override is lifted over the draws).
            attack = APGD(steps=self.steps, restarts=self.restarts, objective_override=DLR())
        elif stage == "apgd-t":
            attack = APGDTargeted(steps=self.steps, restarts=1, n_target_classes=self.n_target_classes)
        elif stage == "fab":
            attack = FAB(steps=self.steps, restarts=self.restarts)
        elif stage == "fab-t":
            attack = FAB(steps=self.steps, restarts=1, targeted=True, n_target_classes=self.n_target_classes)
        else:
            # The paper's Square: p_init 0.8, the unscaled p schedule, the margin loss.
            return Square(n_queries=self.n_queries, restarts=1, p_init=0.8), CWMargin()
        if self.version == "rand":
            attack = EOT(attack, samples=self.eot_samples)
        return attack, objective

    def attack(self, forward: Forward, x: torch.Tensor, target: torch.Tensor | None,
               objective: Objective | None, threat: ThreatModel,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``: (B, C, H, W) in [0, 1]; ``target``: (B,) labels. Returns ``x_adv`` (B, C, H, W); the
        per-stage breakdown is in ``self.last_report``."""
        generator = self._new_call(threat, x, generator)
        x = x.detach()
        y = self._labels(x, target)
        # The stages' objectives read outputs as the call's does (EOT's draws): lifted through it.
        lift = objective.lift if objective is not None else (lambda other: other)
        judge = lift(CrossEntropy())
        stage_gens = split_generator(generator, len(self.stages))
        evaluate = forward
        if accepts_generator(forward):
            # A randomized model's draws for the clean and check forwards come from the call's generator too.
            judge_gen = split_generator(generator, 1)[0]

            def evaluate(images: torch.Tensor) -> Any:
                return forward(images, generator=judge_gen)

        clean = self._output(evaluate, x)
        logits = self._as_logits(clean)
        if self.n_classes is not None and logits.shape[1] != self.n_classes:
            raise ValueError(f"AutoAttack was built for n_classes={self.n_classes}, but the model returns "
                             f"{logits.shape[1]} logits")
        robust = ~judge.success(clean, y)
        n = x.shape[0]
        report = AutoAttackReport(self.version, threat.norm, threat.eps, n, float(robust.float().mean()))
        x_adv = x.clone()
        for stage, stage_gen in zip(self.stages, stage_gens, strict=True):
            attacked = int(robust.sum())
            started = _clock(x)
            fwd = bwd = broken = 0
            if attacked:
                attack, stage_objective = self.build_stage(stage)
                stage_objective = lift(stage_objective)
                rows_all = robust.nonzero()[:, 0]
                chunk = self.batch_size or attacked
                for begin in range(0, attacked, chunk):
                    rows = rows_all[begin:begin + chunk]
                    adv = attack.attack(forward, x[rows], y[rows], stage_objective, threat, stage_gen)
                    with torch.no_grad():
                        check = evaluate(adv)
                    # Broken = misclassified *and* inside the threat model (a defensive re-check).
                    inside = threat.distance(adv, x[rows]) <= threat.eps + 1e-6
                    hit = judge.success(check, y[rows]).to(inside.device) & inside
                    robust[rows[hit]] = False
                    x_adv[rows[hit]] = adv[hit]
                    broken += int(hit.sum())
                    fwd += attack.counts["fwd"] + rows.numel()
                    bwd += attack.counts["bwd"]
            result = StageResult(stage, attacked, broken, float(robust.float().mean()), _clock(x) - started,
                                 fwd, bwd)
            report.stages.append(result)
            self.counts["fwd"] += fwd
            self.counts["bwd"] += bwd
            _LOG.info("autoattack %s: %d/%d broken, robust accuracy %.2f%% (%.1f s)", stage, broken, attacked,
                      100 * result.robust_accuracy, result.seconds)
        report.robust = robust.cpu()
        self.last_report = report
        return x_adv


def _clock(x: torch.Tensor) -> float:
    """Wall time, after waiting for queued GPU work so stage timings are not shifted."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter()


@ATTACKS.register("autoattack", kind="ensemble", task="classification")
def _autoattack(version: str = "standard", **kwargs: Any) -> AutoAttack:
    return AutoAttack(version=version, **kwargs)


@ATTACKS.register("autoattack-plus", kind="ensemble", task="classification")
def _autoattack_plus(**kwargs: Any) -> AutoAttack:
    return AutoAttack(version="plus", **kwargs)


@ATTACKS.register("autoattack-rand", kind="ensemble", task="classification")
def _autoattack_rand(**kwargs: Any) -> AutoAttack:
    return AutoAttack(version="rand", **kwargs)
