"""The benchmark spec: a YAML file naming encoders, tasks, threats and budgets, validated before any work.

Shipped specs live in ``robustssl/configs/bench/<name>.yaml`` (``list_specs()``); any other YAML file with the
same keys works by path. A spec::

    name: quickstart                 # results go to runs/<name>/ (default: the file's stem)
    seed: 0                          # every generator of the run is derived from it and a cell's identity
    device: auto                     # auto | cpu | cuda | cuda:N | mps
    precision: fp32                  # fp32 | bf16 | fp16 (forward passes under autocast)
    budgets: {n_train: 4000, n_val: 500, n_test: 500, n_attack: 500, batch_size: 250, steps: 10}
    encoders:
      - convnet_small                            # a registry name: random init from the spec seed
      - runs/advcl/encoder.safetensors           # a checkpoint (label: its stem, or its folder's name)
      - {name: simclr, preset: simclr-scenes-tiny}          # pretrained into runs/<name>/encoders/simclr/
      - {name: random-init, preset: simclr-scenes-tiny, random_init: true}   # the preset's initial weights
      - {name: mine, checkpoint: w.pth, arch: resnet18_cifar, options: {}, strict: true}
      - {name: wide, encoder: convnet_small, options: {widths: [64, 128, 256, 512]}, init_seed: 3}
    tasks:
      - {task: classification, data: scenes, data_options: {size: 32}, protocol: slf}
      - {task: segmentation, data: scenes, protocol: slf, options: {epochs: 15}}
      - {name: depth-nyu, task: depth, data: nyu, root: ~/data/nyu, protocol: slf}
    threats:
      - clean                                                      # always evaluated, listed or not
      - {kind: embedding, attack: pgd, objective: embed-mse, eps: [2/255, 8/255]}
      - {kind: attack, attack: pgd, eps: [2/255, 4/255, 8/255], steps: 10, tasks: [classification]}
      - {kind: attack, attack: autoattack, eps: [8/255], options: {version: standard}}
      - {kind: transfer, surrogate: simclr, attack: pgd, eps: [8/255]}
      - {kind: corruptions, names: all, severities: [1, 2, 3, 4, 5]}
      - {kind: shift, data: scenes-shift}

Threat kinds:

- ``clean``: the test images as they are.
- ``embedding``: an attack on the encoder's embedding (an ``embed-*`` objective) on the test images of the
  first task (or ``data: <task name>``); rows report the embedding drift (task ``embedding``) and every task
  on the same test set evaluated on the attacked images.
- ``attack``: a registered attack against each task's model (``tasks:`` restricts them; classifier-only
  attacks such as ``autoattack``, ``apgd-t``, ``fab``, ``square`` apply to classification tasks only).
- ``transfer``: adversarial images crafted on the ``surrogate`` encoder's model for the task, evaluated on
  every other encoder's model.
- ``corruptions``: the registered corruptions (``names: all`` = all 19) at ``severities``.
- ``shift``: the test split of another dataset carrying the task's targets (e.g. ``scenes-shift``).

``eps`` values are numbers or fractions (``8/255``). ``steps`` (threat, else ``budgets.steps``) goes to
attacks that take it; ``options`` go to the attack's constructor. Every error names the file and the key.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robustssl.registry import UnknownNameError

TASK_KINDS = ("classification", "segmentation", "depth")
#: the sample key each task is evaluated against
TASK_TARGET = {"classification": "label", "segmentation": "mask", "depth": "depth"}
THREAT_KINDS = ("clean", "embedding", "attack", "transfer", "corruptions", "shift")
#: the objective output kind each task's model produces (``OBJECTIVES`` metadata ``output``)
TASK_OUTPUT = {"classification": "logits", "segmentation": "segmentation", "depth": "depth"}
#: attacks built for classifiers only, beyond those whose registry metadata says ``task: classification``
CLASSIFIER_ATTACK_KINDS = ("minimum-norm", "score-based")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".tar")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
NORMS = ("linf", "l2", "l1")

TOP_KEYS = ("name", "description", "seed", "device", "precision", "budgets", "encoders", "tasks", "threats")
BUDGET_KEYS = ("n_train", "n_val", "n_test", "n_attack", "batch_size", "steps", "val_fraction")
ENCODER_KEYS = (
    "name",
    "encoder",
    "checkpoint",
    "preset",
    "options",
    "init_seed",
    "random_init",
    "set",
    "arch",
    "strict",
)
TASK_KEYS = ("name", "task", "data", "root", "data_options", "protocol", "options")
_ATTACK_KEYS = ("kind", "name", "attack", "objective", "eps", "norm", "steps", "options", "n")
THREAT_KEYS = {
    "clean": ("kind",),
    "embedding": (*_ATTACK_KEYS, "data"),
    "attack": (*_ATTACK_KEYS, "tasks"),
    "transfer": (*_ATTACK_KEYS, "tasks", "surrogate"),
    "corruptions": ("kind", "names", "severities", "params", "tasks", "n"),
    "shift": ("kind", "name", "data", "root", "data_options", "tasks", "n"),
}
CORRUPTION_PARAMS = ("auto", "cifar", "imagenet")


class SpecError(ValueError):
    """A benchmark spec that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class Budgets:
    """Sample and step budgets (``n_train``, ``n_val`` None: whole split; ``n_attack`` None: ``n_test``)."""

    n_train: int | None = None
    n_val: int | None = None
    n_test: int = 500
    n_attack: int | None = None
    batch_size: int = 128
    steps: int = 10
    val_fraction: float = 0.1


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder. ``source``: ``registry`` (``name`` + ``options``, random init from ``init_seed``),
    ``checkpoint`` (``path``, ``arch``/``options`` for foreign files) or ``preset`` (``path`` = preset name or
    file, ``overrides``; ``random_init`` = the preset's encoder at its initial weights, untrained)."""

    label: str
    source: str
    where: str
    name: str | None = None
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    init_seed: int | None = None
    random_init: bool = False
    overrides: tuple[str, ...] = ()
    strict: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: ``kind`` on dataset ``data``, fine-tuned by ``protocol`` with ``options``."""

    label: str
    kind: str
    data: str
    where: str
    root: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    protocol: str = "slf"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return TASK_TARGET[self.kind]

    def dataset_key(self) -> str:
        """Tasks with the same key share their test images (and so their corrupted copies)."""
        return _digest({"data": self.data, "root": self.root, "options": self.data_options})


@dataclass(frozen=True)
class ThreatSpec:
    """One threat entry of the spec (an attack entry with several ``eps`` expands into several variants)."""

    kind: str
    where: str
    name: str = ""
    attack: str | None = None
    objective: str | None = None
    eps: tuple[float, ...] = ()
    norm: str = "linf"
    steps: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    n: int | None = None
    surrogate: str | None = None
    data: str | None = None
    root: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()
    params: str = "auto"


@dataclass
class BenchSpec:
    name: str
    encoders: list[EncoderSpec]
    tasks: list[TaskSpec]
    threats: list[ThreatSpec]
    budgets: Budgets = field(default_factory=Budgets)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    description: str = ""
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """Hash of everything that changes results (not the name, description or file location)."""
        body = {k: v for k, v in self.raw.items() if k not in ("name", "description")}
        return _digest(body)

    def encoder(self, label: str) -> EncoderSpec:
        return next(e for e in self.encoders if e.label == label)

    def task(self, label: str) -> TaskSpec:
        return next(t for t in self.tasks if t.label == label)

    def threat_tasks(self, threat: ThreatSpec) -> list[TaskSpec]:
        """The tasks ``threat`` applies to (the listed ones, else every task it can apply to)."""
        if threat.kind == "embedding":
            reference = self.embedding_task(threat)
            return [t for t in self.tasks if t.dataset_key() == reference.dataset_key()]
        if threat.tasks:
            return [self.task(label) for label in threat.tasks]
        return [t for t in self.tasks if _applies(threat, t)]

    def embedding_task(self, threat: ThreatSpec | None = None) -> TaskSpec:
        """The task whose test images embedding threats attack (``data:``, else the first task)."""
        if threat is not None and threat.data:
            return self.task(threat.data)
        return self.tasks[0]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- loading ------------------------------------------------------------------------------------------------
def _spec_dir() -> Path:
    return Path(str(resources.files("robustssl") / "configs" / "bench"))


def list_specs() -> list[str]:
    """Names of the shipped specs (file names without ``.yaml``)."""
    folder = _spec_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def spec_path(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped spec name or a path."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"benchmark spec {str(path)!r} does not exist")
        return path
    shipped = _spec_dir() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise UnknownNameError("benchmark spec", str(name_or_path), list_specs())
    return shipped


def load_spec(name_or_path: str | Path, overrides: list[str] | None = None) -> BenchSpec:
    """Read and validate a spec (shipped name or YAML path); ``overrides`` are ``KEY=VALUE`` assignments on
    top-level keys and ``budgets.KEY`` (e.g. ``budgets.n_test=64``)."""
    path = spec_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"spec {path}: not valid YAML: {exc}") from exc
    if isinstance(raw, dict) and "name" not in raw:
        raw["name"] = path.stem
    if overrides:
        raw = apply_overrides(raw, overrides, str(path))
    return from_dict(raw, source=str(path))


def apply_overrides(raw: Any, assignments: list[str], source: str = "<dict>") -> dict[str, Any]:
    """A copy of ``raw`` with ``KEY=VALUE`` / ``budgets.KEY=VALUE`` assignments (JSON values) applied."""
    from robustssl.runtime.options import option_value

    if not isinstance(raw, dict):
        raise SpecError(f"spec {source}: expected a mapping of keys, got {type(raw).__name__}")
    out = copy.deepcopy(raw)
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set expects KEY=VALUE or budgets.KEY=VALUE, got {text!r}")
        section, dot, sub = key.partition(".")
        if dot:
            if section != "budgets":
                raise SpecError(
                    f"--set {text!r}: only budgets.KEY can be set inside a section; lists "
                    "(encoders, tasks, threats) are edited in the spec file"
                )
            if not isinstance(out.get("budgets") or {}, dict):
                raise SpecError(f"spec {source}: 'budgets' must be a mapping")
            out["budgets"] = {**(out.get("budgets") or {}), sub: option_value(value)}
        else:
            out[section] = option_value(value)
    return out


# --- validation helpers -------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> SpecError:
        return SpecError(f"spec {self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {value!r}")
        if keys is not None:
            unknown = sorted(set(value) - set(keys), key=str)
            if unknown:
                raise self.fail(
                    where, f"unknown key(s) {', '.join(map(str, unknown))}; accepted: {', '.join(keys)}"
                )
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def label(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if not LABEL_PATTERN.match(text):
            raise self.fail(
                where,
                f"{text!r} is not a valid name: use letters, digits and . _ + = - "
                "(it names files and report rows)",
            )
        return text

    def integer(self, value: Any, where: str, minimum: int = 0, maximum: int | None = None) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise self.fail(where, f"expected an int {bound}, got {value!r}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def number(self, value: Any, where: str) -> float:
        """A number or a fraction string such as ``8/255``."""
        if isinstance(value, bool):
            raise self.fail(where, f"expected a number or a fraction like 8/255, got {value!r}")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(Fraction(value.strip())) if "/" in value else float(value)
            except (ValueError, ZeroDivisionError):
                raise self.fail(where, f"expected a number or a fraction like 8/255, got {value!r}") from None
        else:
            raise self.fail(where, f"expected a number or a fraction like 8/255, got {value!r}")
        if not math.isfinite(out):
            raise self.fail(where, f"expected a finite number, got {value!r}")
        return out

    def name_in(self, value: Any, where: str, kind: str, valid: list[str]) -> str:
        text = self.string(value, where)
        if text not in valid:
            raise self.fail(where, str(UnknownNameError(kind, text, valid)))
        return text

    def string_list(self, value: Any, where: str) -> list[str]:
        items = value if isinstance(value, list) else [value]
        return [
            self.string(v, f"{where}[{i}]" if isinstance(value, list) else where) for i, v in enumerate(items)
        ]


def _accepted_kwargs(fn: Any) -> tuple[set[str], bool]:
    """Keyword names ``fn`` takes, and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


# --- encoders ---------------------------------------------------------------------------------------------
def _looks_like_path(text: str) -> bool:
    return (
        text.endswith(CHECKPOINT_SUFFIXES) or "/" in text or "\\" in text or text.startswith("~")
    ) and not text.startswith(("timm:", "torchvision:"))


def _checkpoint_label(path: str) -> str:
    p = Path(path)
    stem = p.stem if p.suffix in CHECKPOINT_SUFFIXES or p.suffix == ".json" else p.name
    label = p.parent.name if stem == "encoder" and p.parent.name else stem
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", label).strip("-") or "checkpoint"


def _encoder_names() -> list[str]:
    from robustssl import encoders

    return encoders.names()


def _parse_encoder(c: _Checker, entry: Any, where: str, seed: int) -> EncoderSpec:
    if isinstance(entry, str):
        text = entry.strip()
        if _looks_like_path(text):
            return EncoderSpec(label=_checkpoint_label(text), source="checkpoint", where=where, path=text)
        if not text.startswith(("timm:", "torchvision:")):
            c.name_in(text, where, "encoder", _encoder_names())
        return EncoderSpec(
            label=re.sub(r"[^A-Za-z0-9._+=-]", "-", text),
            source="registry",
            where=where,
            name=text,
            init_seed=seed,
        )
    raw = c.mapping(entry, where, ENCODER_KEYS)
    if "name" not in raw:
        raise c.fail(where, "an encoder given as a mapping needs 'name' (its label in the results)")
    label = c.label(raw["name"], f"{where}.name")
    sources = [k for k in ("encoder", "checkpoint", "preset") if k in raw]
    if len(sources) != 1:
        raise c.fail(
            where,
            f"give exactly one of 'encoder' (a registry name), 'checkpoint' (a file) or "
            f"'preset' (a pretraining preset); got {sources or 'none'}",
        )
    source = sources[0]
    allowed = {
        "encoder": {"name", "encoder", "options", "init_seed"},
        "checkpoint": {"name", "checkpoint", "arch", "options", "strict"},
        "preset": {"name", "preset", "random_init", "set"},
    }[source]
    misplaced = sorted(set(raw) - allowed)
    if misplaced:
        raise c.fail(
            where,
            f"key(s) {', '.join(misplaced)} do not apply to a {source!r} encoder; "
            f"accepted with {source!r}: {', '.join(sorted(allowed))}",
        )
    options = c.mapping(raw.get("options"), f"{where}.options")
    if source == "encoder":
        name = c.string(raw["encoder"], f"{where}.encoder")
        if not name.startswith(("timm:", "torchvision:")):
            c.name_in(name, f"{where}.encoder", "encoder", _encoder_names())
        init_seed = c.integer(raw.get("init_seed", seed), f"{where}.init_seed")
        return EncoderSpec(
            label=label, source="registry", where=where, name=name, options=dict(options), init_seed=init_seed
        )
    if source == "checkpoint":
        arch = raw.get("arch")
        if arch is not None:
            arch = c.string(arch, f"{where}.arch")
            if not arch.startswith(("timm:", "torchvision:")):
                c.name_in(arch, f"{where}.arch", "encoder", _encoder_names())
        return EncoderSpec(
            label=label,
            source="checkpoint",
            where=where,
            path=c.string(raw["checkpoint"], f"{where}.checkpoint"),
            name=arch,
            options=dict(options),
            strict=c.boolean(raw.get("strict", True), f"{where}.strict"),
        )
    overrides = tuple(c.string_list(raw.get("set") or [], f"{where}.set"))
    return EncoderSpec(
        label=label,
        source="preset",
        where=where,
        path=c.string(raw["preset"], f"{where}.preset"),
        random_init=c.boolean(raw.get("random_init", False), f"{where}.random_init"),
        overrides=overrides,
    )


def _check_preset(c: _Checker, enc: EncoderSpec) -> None:
    """The preset resolves, its overrides apply and its encoder name is registered."""
    from robustssl.pretrain import presets

    try:
        preset = presets.override(presets.load_preset(enc.path), list(enc.overrides))
    except (UnknownNameError, FileNotFoundError, ValueError) as exc:
        raise c.fail(f"{enc.where}.preset", str(exc)) from None
    if not preset.encoder.startswith(("timm:", "torchvision:")):
        c.name_in(preset.encoder, f"{enc.where}.preset (its encoder)", "encoder", _encoder_names())


# --- tasks ------------------------------------------------------------------------------------------------
def protocols() -> tuple[str, ...]:
    """The fine-tuning protocols (``robustssl.finetune.PROTOCOLS``)."""
    from robustssl.finetune import PROTOCOLS

    return tuple(PROTOCOLS)


def _parse_task(c: _Checker, entry: Any, where: str) -> TaskSpec:
    from robustssl import data

    raw = c.mapping(entry, where, TASK_KEYS)
    for key in ("task", "data"):
        if key not in raw:
            raise c.fail(where, f"the key {key!r} is required")
    kind = c.name_in(raw["task"], f"{where}.task", "task", list(TASK_KINDS))
    name = c.name_in(raw["data"], f"{where}.data", "dataset", data.names())
    label = c.label(raw.get("name", kind), f"{where}.name")
    meta = data.DATASETS.meta(name)
    target = TASK_TARGET[kind]
    carried = tuple(meta.get("targets", ()))
    if carried and target not in carried:
        raise c.fail(
            f"{where}.data",
            f"dataset {name!r} has no {target!r} targets, which task {kind!r} needs; "
            f"it carries: {', '.join(carried)}",
        )
    splits = meta.get("splits")
    if splits is not None:
        for split in ("train", "test"):
            if split not in splits:
                raise c.fail(
                    f"{where}.data",
                    f"dataset {name!r} has no {split!r} split (heads are fitted on "
                    f"'train' and evaluated on 'test'); it has: {', '.join(splits)}",
                )
    root = raw.get("root")
    if root is not None:
        root = c.string(root, f"{where}.root")
    elif meta.get("needs_root"):
        raise c.fail(
            where,
            f"dataset {name!r} reads local files: add 'root: DIR'. Expected layout: "
            f"{meta.get('layout', '?')}",
        )
    protocol = c.name_in(
        raw.get("protocol", "slf"), f"{where}.protocol", "fine-tuning protocol", list(protocols())
    )
    options = dict(c.mapping(raw.get("options"), f"{where}.options"))
    reserved = sorted(set(options) & set(RUNNER_SET_OPTIONS))
    if reserved:
        raise c.fail(
            f"{where}.options",
            f"option(s) {', '.join(reserved)} are set by the benchmark (from its "
            "budgets and datasets); remove them",
        )
    try:
        check_task_options(kind, protocol, options)
    except (ValueError, TypeError) as exc:
        raise c.fail(f"{where}.options", str(exc)) from None
    return TaskSpec(
        label=label,
        kind=kind,
        data=name,
        where=where,
        root=root,
        data_options=dict(c.mapping(raw.get("data_options"), f"{where}.data_options")),
        protocol=protocol,
        options=options,
    )


#: fine-tuning options the runner sets itself (the data subsets come from the budgets)
RUNNER_SET_OPTIONS = ("train_indices", "val_indices")


def check_task_options(kind: str, protocol: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``protocol`` on ``kind`` takes ``options`` (checked by the fine-tuning
    module's own option check, so both agree)."""
    from robustssl.finetune import protocols as finetune_protocols

    # the fine-tuning module validates options up front; use its check so spec errors come before any work
    check = getattr(finetune_protocols, "check_options", None) or finetune_protocols._check_options
    check(protocol, kind, dict(options))


# --- threats ----------------------------------------------------------------------------------------------
def _applies(threat: ThreatSpec, task: TaskSpec) -> bool:
    """Whether ``threat`` can run against ``task`` (attack kind, objective output, dataset targets)."""
    if threat.kind in ("attack", "transfer"):
        if threat.attack is not None and classifier_only(threat.attack) and task.kind != "classification":
            return False
        if threat.objective is not None and objective_output(threat.objective) != TASK_OUTPUT[task.kind]:
            return False
    if threat.kind == "shift":
        from robustssl import data

        carried = data.DATASETS.meta(threat.data).get("targets", ())
        return not carried or task.target in carried
    return True


def classifier_only(attack: str) -> bool:
    from robustssl.threats import ATTACKS

    meta = ATTACKS.meta(attack)
    return meta.get("task") == "classification" or meta.get("kind") in CLASSIFIER_ATTACK_KINDS


def objective_output(objective: str) -> str:
    from robustssl.threats import OBJECTIVES

    return OBJECTIVES.meta(objective).get("output", "")


def attack_kwargs(threat: ThreatSpec, default_steps: int) -> dict[str, Any]:
    """Constructor keywords of ``threat``'s attack: ``options``, plus ``steps`` when the attack takes it."""
    from robustssl.threats import ATTACKS

    kwargs = dict(threat.options)
    names, var_kw = _accepted_kwargs(ATTACKS.get(threat.attack))
    if "steps" in names or var_kw:
        kwargs.setdefault("steps", threat.steps if threat.steps is not None else default_steps)
    return kwargs


def _eps_list(c: _Checker, value: Any, where: str, norm: str) -> tuple[float, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise c.fail(where, "an empty list; give at least one radius such as 8/255")
    out = []
    for i, item in enumerate(items):
        eps = c.number(item, f"{where}[{i}]" if isinstance(value, list) else where)
        if eps < 0 or (norm == "linf" and eps > 1):
            raise c.fail(
                where, f"radius {item!r} out of range: 0 <= eps{' <= 1 for linf' if norm == 'linf' else ''}"
            )
        out.append(eps)
    if len(set(out)) != len(out):
        raise c.fail(where, f"repeated radii in {value!r}")
    return tuple(sorted(out))


def _parse_attack_fields(c: _Checker, raw: dict[str, Any], where: str, kind: str) -> dict[str, Any]:
    from robustssl.threats import ATTACKS, OBJECTIVES
    from robustssl.threats.attacks.base import build_attack

    default_attack = "pgd" if kind in ("embedding", "transfer") else None
    if "attack" not in raw and default_attack is None:
        raise c.fail(where, "the key 'attack' is required (an attack name)")
    attack = c.name_in(raw.get("attack", default_attack), f"{where}.attack", "attack", ATTACKS.names())
    if attack == "transfer":
        raise c.fail(
            f"{where}.attack",
            "use 'kind: transfer' with a 'surrogate' encoder instead of the 'transfer' attack",
        )
    norm = c.name_in(raw.get("norm", "linf"), f"{where}.norm", "norm", list(NORMS))
    if "eps" not in raw:
        raise c.fail(where, "the key 'eps' is required (a radius or a list, e.g. [2/255, 8/255])")
    eps = _eps_list(c, raw["eps"], f"{where}.eps", norm)
    objective = raw.get("objective", "embed-mse" if kind == "embedding" else None)
    if objective is not None:
        objective = c.name_in(objective, f"{where}.objective", "objective", OBJECTIVES.names())
        out_kind = objective_output(objective)
        if kind == "embedding" and out_kind != "embedding":
            raise c.fail(
                f"{where}.objective",
                f"an embedding threat needs an embed-* objective, got {objective!r}; "
                f"accepted: {', '.join(n for n in OBJECTIVES.names() if n.startswith('embed'))}",
            )
        if kind != "embedding" and out_kind not in TASK_OUTPUT.values():
            raise c.fail(
                f"{where}.objective",
                f"objective {objective!r} does not attack a task's output; use "
                "'kind: embedding' for embed-* objectives",
            )
    steps = None if "steps" not in raw else c.integer(raw["steps"], f"{where}.steps", 1)
    options = dict(c.mapping(raw.get("options"), f"{where}.options"))
    probe = ThreatSpec(kind=kind, where=where, attack=attack, steps=steps, options=options)
    try:
        attacker = build_attack(attack, **attack_kwargs(probe, 1))
    except (TypeError, ValueError) as exc:
        raise c.fail(f"{where}.options", f"attack {attack!r} does not accept these options: {exc}") from None
    norms = getattr(attacker, "norms", None)
    if norms and norm not in norms:
        raise c.fail(f"{where}.norm", f"attack {attack!r} supports norms {', '.join(norms)}, not {norm!r}")
    n = None if "n" not in raw else c.integer(raw["n"], f"{where}.n", 1)
    name = c.label(raw.get("name") or _default_threat_name(kind, attack, raw), f"{where}.name")
    return {
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "objective": objective,
        "steps": steps,
        "options": options,
        "n": n,
        "name": name,
    }


def _default_threat_name(kind: str, attack: str, raw: dict[str, Any]) -> str:
    if kind == "embedding":
        return f"embed-{attack}"
    if kind == "transfer":
        return f"{attack}-from-{raw.get('surrogate', '?')}"
    return attack


def _task_labels(c: _Checker, value: Any, where: str, labels: list[str]) -> tuple[str, ...]:
    items = c.string_list(value, where)
    for i, item in enumerate(items):
        if item not in labels:
            raise c.fail(
                f"{where}[{i}]" if isinstance(value, list) else where,
                str(UnknownNameError("task", item, labels)),
            )
    return tuple(dict.fromkeys(items))


def _parse_threat(
    c: _Checker, entry: Any, where: str, tasks: list[TaskSpec], encoders: list[EncoderSpec]
) -> ThreatSpec:
    from robustssl import data
    from robustssl.threats import CORRUPTIONS

    if isinstance(entry, str):
        kind = c.name_in(entry, where, "threat kind", list(THREAT_KINDS))
        if kind not in ("clean", "corruptions"):
            raise c.fail(where, f"threat {kind!r} needs settings; write it as a mapping with 'kind: {kind}'")
        entry = {"kind": kind}
    raw = c.mapping(entry, where)
    if "kind" not in raw:
        raise c.fail(where, f"the key 'kind' is required; accepted: {', '.join(THREAT_KINDS)}")
    kind = c.name_in(raw["kind"], f"{where}.kind", "threat kind", list(THREAT_KINDS))
    c.mapping(raw, where, THREAT_KEYS[kind])
    labels = [t.label for t in tasks]
    task_labels = _task_labels(c, raw["tasks"], f"{where}.tasks", labels) if "tasks" in raw else ()
    if kind == "clean":
        return ThreatSpec(kind="clean", where=where, name="clean")
    if kind in ("embedding", "attack", "transfer"):
        fields = _parse_attack_fields(c, raw, where, kind)
        extra: dict[str, Any] = {}
        if kind == "transfer":
            if "surrogate" not in raw:
                raise c.fail(where, "the key 'surrogate' is required (the label of the encoder to craft on)")
            extra["surrogate"] = c.name_in(
                raw["surrogate"], f"{where}.surrogate", "encoder label", [e.label for e in encoders]
            )
            if len(encoders) < 2:
                raise c.fail(where, "a transfer threat needs at least one encoder besides its surrogate")
        if kind == "embedding" and "data" in raw:
            extra["data"] = c.name_in(raw["data"], f"{where}.data", "task", labels)
        threat = ThreatSpec(kind=kind, where=where, tasks=task_labels, **fields, **extra)
    elif kind == "corruptions":
        valid = CORRUPTIONS.names()
        names = raw.get("names", "all")
        chosen = (
            tuple(valid)
            if names == "all"
            else tuple(
                c.name_in(n, f"{where}.names[{i}]", "corruption", valid)
                for i, n in enumerate(names if isinstance(names, list) else [names])
            )
        )
        if not chosen or len(set(chosen)) != len(chosen):
            raise c.fail(
                f"{where}.names", f"expected 'all' or a list of distinct corruption names, got {names!r}"
            )
        sev = raw.get("severities", [1, 2, 3, 4, 5])
        sev_list = sev if isinstance(sev, list) else [sev]
        severities = tuple(c.integer(s, f"{where}.severities", 1, 5) for s in sev_list)
        if not severities or len(set(severities)) != len(severities):
            raise c.fail(f"{where}.severities", f"expected distinct ints in 1..5, got {sev!r}")
        params = c.name_in(
            raw.get("params", "auto"), f"{where}.params", "corruption parameter set", list(CORRUPTION_PARAMS)
        )
        n = None if "n" not in raw else c.integer(raw["n"], f"{where}.n", 1)
        threat = ThreatSpec(
            kind=kind,
            where=where,
            name="corruptions",
            corruptions=chosen,
            severities=tuple(sorted(severities)),
            params=params,
            tasks=task_labels,
            n=n,
        )
    else:
        if "data" not in raw:
            raise c.fail(where, "the key 'data' is required (the shifted dataset, e.g. scenes-shift)")
        name = c.name_in(raw["data"], f"{where}.data", "dataset", data.names())
        meta = data.DATASETS.meta(name)
        if meta.get("splits") is not None and "test" not in meta["splits"]:
            raise c.fail(
                f"{where}.data", f"dataset {name!r} has no 'test' split; it has: {', '.join(meta['splits'])}"
            )
        root = None if raw.get("root") is None else c.string(raw["root"], f"{where}.root")
        if root is None and meta.get("needs_root"):
            raise c.fail(where, f"dataset {name!r} reads local files: add 'root: DIR'")
        threat = ThreatSpec(
            kind=kind,
            where=where,
            name=c.label(raw.get("name", name), f"{where}.name"),
            data=name,
            root=root,
            tasks=task_labels,
            data_options=dict(c.mapping(raw.get("data_options"), f"{where}.data_options")),
            n=None if "n" not in raw else c.integer(raw["n"], f"{where}.n", 1),
        )
    for label in task_labels:
        task = next(t for t in tasks if t.label == label)
        if not _applies(threat, task):
            raise c.fail(f"{where}.tasks", _why_not(threat, task))
    return threat


def _why_not(threat: ThreatSpec, task: TaskSpec) -> str:
    if threat.kind == "shift":
        from robustssl import data

        carried = data.DATASETS.meta(threat.data).get("targets", ())
        return (
            f"shift set {threat.data!r} has no {task.target!r} targets for task {task.label!r}; "
            f"it carries: {', '.join(carried)}"
        )
    if threat.attack is not None and classifier_only(threat.attack) and task.kind != "classification":
        return f"attack {threat.attack!r} attacks classifiers only; task {task.label!r} is {task.kind}"
    return (
        f"objective {threat.objective!r} attacks {objective_output(threat.objective)} outputs; task "
        f"{task.label!r} ({task.kind}) outputs {TASK_OUTPUT[task.kind]}"
    )


# --- the whole spec ---------------------------------------------------------------------------------------
def _parse_budgets(c: _Checker, raw: Any) -> Budgets:
    raw = c.mapping(raw, "budgets", BUDGET_KEYS)
    out: dict[str, Any] = {}
    for key in ("n_train", "n_val", "n_attack"):
        if raw.get(key) is not None:
            out[key] = c.integer(raw[key], f"budgets.{key}", 2 if key in ("n_train", "n_val") else 1)
    for key in ("n_test", "batch_size", "steps"):
        if key in raw:
            out[key] = c.integer(raw[key], f"budgets.{key}", 1)
    if "val_fraction" in raw:
        frac = c.number(raw["val_fraction"], "budgets.val_fraction")
        if not 0 < frac < 1:
            raise c.fail(
                "budgets.val_fraction", f"expected a fraction in (0, 1), got {raw['val_fraction']!r}"
            )
        out["val_fraction"] = frac
    budgets = Budgets(**out)
    if budgets.n_attack is not None and budgets.n_attack > budgets.n_test:
        raise c.fail(
            "budgets.n_attack", f"{budgets.n_attack} attacked samples exceed n_test={budgets.n_test}"
        )
    return budgets


def from_dict(raw: Any, source: str = "<dict>") -> BenchSpec:
    """Validate a spec mapping (see the module docstring). Raises :class:`SpecError` naming the key.

    Only what needs no loading is checked here (keys, types, names, dataset targets from the registry,
    attack options); :func:`robustssl.bench.resources.prepare` checks files, datasets and shapes."""
    from robustssl.runtime.precision import PRECISIONS

    c = _Checker(source)
    raw = c.mapping(raw, "top level", TOP_KEYS)
    if "name" not in raw:
        raise c.fail("top level", "the key 'name' is required (results go to runs/<name>/)")
    name = c.label(raw["name"], "name")
    seed = c.integer(raw.get("seed", 0), "seed")
    device = c.string(raw.get("device", "auto"), "device")
    precision = c.name_in(raw.get("precision", "fp32"), "precision", "precision", list(PRECISIONS))
    budgets = _parse_budgets(c, raw.get("budgets"))
    for key in ("encoders", "tasks"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise c.fail(key, f"expected a non-empty list, got {raw.get(key)!r}")
    encoders = [_parse_encoder(c, e, f"encoders[{i}]", seed) for i, e in enumerate(raw["encoders"])]
    _unique(c, [e.label for e in encoders], "encoders", "encoder names")
    for enc in encoders:
        if enc.source == "preset":
            _check_preset(c, enc)
    tasks = [_parse_task(c, t, f"tasks[{i}]") for i, t in enumerate(raw["tasks"])]
    _unique(c, [t.label for t in tasks], "tasks", "task names (add 'name:' to tell tasks of one kind apart)")
    if "embedding" in [t.label for t in tasks]:
        raise c.fail("tasks", "'embedding' is reserved for the embedding-drift rows; name the task otherwise")
    threat_raw = raw.get("threats") or ["clean"]
    if not isinstance(threat_raw, list):
        raise c.fail("threats", f"expected a list, got {threat_raw!r}")
    threats = [_parse_threat(c, t, f"threats[{i}]", tasks, encoders) for i, t in enumerate(threat_raw)]
    if not any(t.kind == "clean" for t in threats):
        threats.insert(0, ThreatSpec(kind="clean", where="(implicit)", name="clean"))
    for threat in threats:
        if threat.n is not None and threat.kind != "shift" and threat.n > budgets.n_test:
            raise c.fail(
                f"{threat.where}.n",
                f"{threat.n} samples exceed budgets.n_test={budgets.n_test} "
                "(threats use the first n of the test samples)",
            )
        if not _threat_tasks(tasks, threat):
            raise c.fail(
                threat.where,
                f"{threat.kind} threat {threat.name!r} applies to none of the tasks "
                f"({', '.join(f'{t.label}: {t.kind}' for t in tasks)})",
            )
    spec = BenchSpec(
        name=name,
        encoders=encoders,
        tasks=tasks,
        threats=threats,
        budgets=budgets,
        seed=seed,
        device=device,
        precision=precision,
        description=str(raw.get("description", "")),
        source=source,
        raw=copy.deepcopy(raw),
    )
    _unique_labels(c, spec)
    return spec


def _threat_tasks(tasks: list[TaskSpec], threat: ThreatSpec) -> list[TaskSpec]:
    """The tasks ``threat`` can apply to (embedding threats: all; their drift rows need no task)."""
    if threat.kind == "embedding":
        return tasks
    if threat.tasks:
        return [t for t in tasks if t.label in threat.tasks]
    return [t for t in tasks if _applies(threat, t)]


def _unique(c: _Checker, labels: list[str], where: str, what: str) -> None:
    seen = {x for x in labels if labels.count(x) > 1}
    if seen:
        raise c.fail(where, f"repeated {what}: {', '.join(sorted(seen))}")


def _unique_labels(c: _Checker, spec: BenchSpec) -> None:
    """Two threat entries must not produce the same row label for the same task."""
    from robustssl.bench.plan import threat_variants

    owner: dict[tuple[str, str], str] = {}
    for threat in spec.threats:
        tasks = ["embedding"] if threat.kind == "embedding" else []
        tasks += [t.label for t in spec.threat_tasks(threat)]
        for variant in threat_variants(threat):
            for task in tasks:
                key = (task, variant.label)
                if key in owner and owner[key] != threat.where:
                    raise c.fail(
                        threat.where,
                        f"threat label {variant.label!r} for task {task!r} is also produced "
                        f"by {owner[key]}; give one of them another 'name'",
                    )
                owner[key] = threat.where


def spec_as_yaml(spec: BenchSpec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
