"""From a spec to cells and units of work.

A **cell** is one ``(encoder, task, threat)`` of the result grid (a threat with several radii or severities is
several threats: ``pgd-linf-8/255``, ``fog-3``); its results are a few rows (one per metric) of the store.
A **unit** groups the cells that share their inputs, and is computed (and written) as a whole:

- ``forward``: one clean, corrupted or shifted test set, evaluated by every encoder's models of every task on
  that set (the corrupted images are made once and shared by all encoders and tasks);
- ``attack``: one attack entry (all its radii in one sweep) against one encoder's model of one task;
- ``embedding``: one embedding attack (all radii) on one encoder: drift rows plus every task on that test set;
- ``transfer``: images crafted once on the surrogate's model of one task, evaluated on every other encoder's.

Every cell carries a hash of everything its values depend on; a resumed run skips a unit when all of its
cells are finished with the same hashes. Randomness is seeded from the spec seed and the unit's key (never
from the order units run in), per chunk of ``batch_size`` samples, so chunks can go to any rank.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from robustssl.bench.spec import BenchSpec, TaskSpec, ThreatSpec

EMBEDDING_TASK = "embedding"
#: order in which unit kinds run (cheap and most informative first)
UNIT_ORDER = ("clean", "embedding", "attack", "transfer", "shift", "corruptions")


@dataclass(frozen=True)
class Variant:
    """One concrete threat: ``label`` is the ``threat`` column of its rows."""

    label: str
    kind: str
    attack: str | None = None
    norm: str | None = None
    eps: float | None = None
    corruption: str | None = None
    severity: int | None = None
    data: str | None = None

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Cell:
    encoder: str
    task: str
    threat: str
    config_hash: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.encoder, self.task, self.threat


@dataclass
class Unit:
    kind: str
    key: str
    threat: ThreatSpec
    variants: list[Variant]
    encoders: list[str]
    tasks: list[str]
    data: str
    n: int
    drift: bool = False
    surrogate: str | None = None
    cells: list[Cell] = field(default_factory=list)

    def describe(self) -> str:
        what = (
            self.variants[0].label
            if len(self.variants) == 1
            else f"{self.threat.name} ({len(self.variants)} radii)"
        )
        return f"{self.kind} {what} on {'/'.join(self.encoders)} x {'/'.join(self.tasks) or '-'}"


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eps_text(eps: float, norm: str) -> str:
    """``8/255`` for L-inf radii that are a round number of 1/255 steps, else the number (``0.5``)."""
    scaled = eps * 255
    if norm == "linf" and eps > 0 and abs(scaled - round(scaled, 2)) < 1e-6:
        return f"{round(scaled, 2):g}/255"
    return f"{eps:.6g}"


def threat_variants(threat: ThreatSpec) -> list[Variant]:
    """The concrete threats of one spec entry, in a fixed order."""
    if threat.kind == "clean":
        return [Variant("clean", "clean")]
    if threat.kind in ("embedding", "attack", "transfer"):
        return [
            Variant(
                f"{threat.name}-{threat.norm}-{eps_text(e, threat.norm)}",
                threat.kind,
                attack=threat.attack,
                norm=threat.norm,
                eps=e,
            )
            for e in threat.eps
        ]
    if threat.kind == "corruptions":
        return [
            Variant(f"{c}-{s}", "corruptions", corruption=c, severity=s)
            for c in threat.corruptions
            for s in threat.severities
        ]
    return [Variant(threat.name, "shift", data=threat.data)]


def _threat_config(threat: ThreatSpec) -> dict[str, Any]:
    out = dataclasses.asdict(threat)
    out.pop("where")
    return out


def task_config(task: TaskSpec) -> dict[str, Any]:
    out = dataclasses.asdict(task)
    out.pop("where")
    return out


def head_hash(spec: BenchSpec, encoder_identity: dict[str, Any], task: TaskSpec, encoder: str) -> str:
    """Everything a fitted head depends on: the encoder's weights, the task, the data budgets, the seed."""
    b = spec.budgets
    return digest(
        {
            "encoder": encoder_identity,
            "encoder_label": encoder,
            "task": task_config(task),
            "n_train": b.n_train,
            "n_val": b.n_val,
            "val_fraction": b.val_fraction,
            "seed": spec.seed,
            "precision": spec.precision,
        }
    )


def build_plan(spec: BenchSpec, encoder_ids: dict[str, dict[str, Any]]) -> list[Unit]:
    """Every unit of ``spec`` with its cells and their hashes; ``encoder_ids`` identify each encoder's weights
    (see ``resources.Resources.identities``)."""
    heads = {
        (e.label, t.label): head_hash(spec, encoder_ids[e.label], t, e.label)
        for e in spec.encoders
        for t in spec.tasks
    }
    b = spec.budgets
    common = {"seed": spec.seed, "batch_size": b.batch_size, "steps": b.steps, "precision": spec.precision}
    n_attack = b.n_attack or b.n_test
    encoders = [e.label for e in spec.encoders]
    emb_data = spec.embedding_task().dataset_key()
    units: list[Unit] = []
    for threat in spec.threats:
        tasks = spec.threat_tasks(threat)
        config = {**common, "threat": _threat_config(threat)}
        variants = threat_variants(threat)
        if threat.kind in ("clean", "corruptions", "shift"):
            groups: dict[str, list[TaskSpec]] = {}
            for task in tasks:
                groups.setdefault(task.dataset_key(), []).append(task)
            n = threat.n or b.n_test
            for data_key, group in groups.items():
                drift = threat.kind == "corruptions" and data_key == emb_data
                for variant in variants:
                    unit = Unit(
                        "forward",
                        f"{threat.kind}/{variant.label}/{data_key}",
                        threat,
                        [variant],
                        encoders,
                        [t.label for t in group],
                        group[0].label,
                        n,
                        drift=drift,
                    )
                    for enc in encoders:
                        for task in group:
                            unit.cells.append(
                                _cell(enc, task.label, variant, heads[enc, task.label], config, n)
                            )
                        if drift:
                            unit.cells.append(
                                _cell(enc, EMBEDDING_TASK, variant, encoder_ids[enc], config, n)
                            )
                    units.append(unit)
        elif threat.kind == "attack":
            n = threat.n or n_attack
            for enc in encoders:
                for task in tasks:
                    unit = Unit(
                        "attack",
                        f"attack/{threat.name}/{enc}/{task.label}",
                        threat,
                        variants,
                        [enc],
                        [task.label],
                        task.label,
                        n,
                    )
                    unit.cells = [
                        _cell(enc, task.label, v, heads[enc, task.label], config, n) for v in variants
                    ]
                    units.append(unit)
        elif threat.kind == "embedding":
            n = threat.n or n_attack
            reference = spec.embedding_task(threat)
            for enc in encoders:
                unit = Unit(
                    "embedding",
                    f"embedding/{threat.name}/{enc}",
                    threat,
                    variants,
                    [enc],
                    [t.label for t in tasks],
                    reference.label,
                    n,
                    drift=True,
                )
                for v in variants:
                    unit.cells.append(_cell(enc, EMBEDDING_TASK, v, encoder_ids[enc], config, n))
                    unit.cells += [_cell(enc, t.label, v, heads[enc, t.label], config, n) for t in tasks]
                units.append(unit)
        else:
            n = threat.n or n_attack
            targets = [e for e in encoders if e != threat.surrogate]
            for task in tasks:
                unit = Unit(
                    "transfer",
                    f"transfer/{threat.name}/{task.label}",
                    threat,
                    variants,
                    targets,
                    [task.label],
                    task.label,
                    n,
                    surrogate=threat.surrogate,
                )
                source = heads[threat.surrogate, task.label]
                for v in variants:
                    unit.cells += [
                        _cell(e, task.label, v, [heads[e, task.label], source], config, n) for e in targets
                    ]
                units.append(unit)
    units.sort(key=lambda u: UNIT_ORDER.index(u.threat.kind))
    return units


def _cell(encoder: str, task: str, variant: Variant, depends: Any, config: dict[str, Any], n: int) -> Cell:
    return Cell(
        encoder,
        task,
        variant.label,
        digest({"depends": depends, "variant": variant.describe(), "config": config, "n": n}),
    )


def pending(units: list[Unit], finished: dict[tuple[str, str, str], str]) -> list[Unit]:
    """Units with at least one cell not finished with the same hash."""
    return [u for u in units if any(finished.get(c.key) != c.config_hash for c in u.cells)]


def chunks(n: int, batch_size: int) -> list[range]:
    """Sample indices ``0..n-1`` in fixed chunks of ``batch_size``: the unit of seeding and of sharding."""
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
