"""Pretraining presets: YAML files naming a method, an encoder, a dataset and the training budget.

Shipped presets live in ``robustssl/configs/pretrain/<name>.yaml`` (``list_presets()``); any other YAML file
with the same keys works by path. Keys (all but ``method`` optional)::

    method: advcl                      # a METHODS name
    method_options: {eps: 0.03137}     # keyword options of the method (checked against its signature)
    encoder: resnet18_cifar            # an encoder registry name
    encoder_options: {dual_bn: true}
    data: cifar10                      # a dataset registry name
    data_options: {}                   # keyword options of robustssl.data.load (root, n, size, ...)
    train: {epochs: 1000, batch_size: 512, optimizer: sgd, lr: 0.5}   # TrainConfig fields

``override(preset, ["train.lr=0.1", "method_options.eps=0.0157"])`` changes single values (the CLI's
``--set``); ``pretrain_preset(preset, out_dir)`` trains it — or reuses a finished run of the same resolved
preset in ``out_dir`` — and returns the encoder checkpoint's path.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robustssl.registry import UnknownNameError
from robustssl.runtime.options import option_value

TOP_KEYS = ("method", "method_options", "encoder", "encoder_options", "data", "data_options", "train", "name")
SECTION_KEYS = ("method_options", "encoder_options", "data_options", "train")


@dataclass
class Preset:
    method: str
    method_options: dict[str, Any] = field(default_factory=dict)
    encoder: str = "convnet_small"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    data: str = "scenes"
    data_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def digest(self) -> str:
        """Hash of everything that changes the trained encoder (not the name or where it was read from)."""
        body = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _preset_dir() -> Path:
    return Path(str(resources.files("robustssl") / "configs" / "pretrain"))


def list_presets() -> list[str]:
    """Names of the shipped presets (file names without ``.yaml``)."""
    folder = _preset_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _resolve_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"preset file {str(path)!r} does not exist")
        return path
    shipped = _preset_dir() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise UnknownNameError("pretraining preset", str(name_or_path), list_presets())
    return shipped


def from_dict(raw: Any, source: str = "<dict>") -> Preset:
    """Validate a preset mapping: unknown keys and wrong types are errors naming the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"preset {source}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ValueError(
            f"preset {source}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(TOP_KEYS)}"
        )
    if "method" not in raw:
        raise ValueError(f"preset {source}: the key 'method' is required")
    for key in ("method", "encoder", "data", "name"):
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"preset {source}: {key!r} must be a string, got {raw[key]!r}")
    for key in SECTION_KEYS:
        if raw.get(key) is None:
            continue
        if not isinstance(raw[key], dict):
            raise ValueError(f"preset {source}: {key!r} must be a mapping, got {raw[key]!r}")
    from robustssl.pretrain.trainer import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(raw.get("train") or {}) - fields)
    if bad:
        raise ValueError(
            f"preset {source}: unknown train key(s) {', '.join(bad)}; accepted: {', '.join(sorted(fields))}"
        )
    kwargs = {k: (raw.get(k) or {}) if k in SECTION_KEYS else raw[k] for k in TOP_KEYS if k in raw}
    return Preset(**copy.deepcopy(kwargs), source=source)


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped preset by name (see ``list_presets()``) or a YAML file by path."""
    path = _resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"preset {str(path)!r} is not valid YAML: {exc}") from exc
    preset = from_dict(raw, source=str(path))
    preset.name = preset.name or path.stem
    return preset


def override(preset: Preset, assignments: list[str]) -> Preset:
    """A copy of ``preset`` with ``SECTION.KEY=VALUE`` or ``KEY=VALUE`` (top-level) assignments applied."""
    raw = preset.to_dict()
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"--set expects KEY=VALUE or SECTION.KEY=VALUE (e.g. train.lr=0.1), got {text!r}"
            )
        section, dot, sub = key.strip().partition(".")
        if dot:
            if section not in SECTION_KEYS:
                raise ValueError(
                    f"--set {text!r}: unknown section {section!r}; accepted: {', '.join(SECTION_KEYS)}"
                )
            raw.setdefault(section, {})[sub] = option_value(value)
        else:
            raw[section] = option_value(value)
    out = from_dict(raw, source=preset.source)
    return out


def build(preset: Preset, seed: int | None = None) -> tuple[Any, Any, Any, Any]:
    """``(method, dataset, TrainConfig, monitor_dataset)`` for ``preset``. The encoder's initial weights come
    from ``seed`` (the preset's ``train.seed``, else 0). ``monitor_dataset`` is the dataset's ``val`` split
    (else ``test``) when ``train.monitor_every`` > 0, else None."""
    from robustssl import data, encoders
    from robustssl.pretrain.method import build_method
    from robustssl.pretrain.trainer import TrainConfig
    from robustssl.runtime import seeded_init

    train_opts = dict(preset.train)
    if seed is not None:
        train_opts["seed"] = seed
    config = TrainConfig(**train_opts)
    data_opts = {k: v for k, v in preset.data_options.items() if k != "split"}
    dataset = data.load(preset.data, split=preset.data_options.get("split", "train"), **data_opts)
    monitor_ds = None
    if config.monitor_every:
        splits = data.DATASETS.meta(preset.data).get("splits") or ()
        held_out = "val" if "val" in splits else "test"
        monitor_ds = data.load(preset.data, split=held_out, **data_opts)
    with seeded_init(config.seed):
        encoder = encoders.create(preset.encoder, **preset.encoder_options)
        method = build_method(preset.method, encoder, **preset.method_options)
    return method, dataset, config, monitor_ds


def pretrain_preset(
    preset: Preset | str | Path,
    out_dir: str | Path,
    *,
    resume: bool = True,
    device: str | None = None,
    precision: str | None = None,
    seed: int | None = None,
) -> Path:
    """Train ``preset`` into ``out_dir`` and return ``out_dir/encoder.safetensors``.

    A finished run of the same resolved preset (same ``digest()``) in ``out_dir`` is reused without training;
    an interrupted one is resumed (``resume=True``); a finished run of a *different* preset is an error, so
    nothing already written is overwritten."""
    from robustssl.pretrain.trainer import train

    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    if seed is not None:
        preset = override(preset, [f"train.seed={seed}"])
    out = Path(out_dir)
    marker = out / "preset.json"
    checkpoint = out / "encoder.safetensors"
    if marker.exists():
        written = json.loads(marker.read_text())
        if written.get("digest") != preset.digest():
            raise ValueError(
                f"{out} holds a run of another preset ({written.get('name')!r}, "
                f"digest {written.get('digest')}); "
                f"use another output folder for {preset.name!r}"
            )
        if written.get("finished") and checkpoint.exists():
            return checkpoint
    from robustssl.pretrain.trainer import STATE_FILE

    if not resume and (out / STATE_FILE).exists():
        raise ValueError(
            f"{out} holds an unfinished run of {preset.name!r}; continue it with resume (--resume) or choose "
            "another output folder (nothing there was changed)"
        )
    method, dataset, config, monitor_ds = build(preset)
    if device is not None:
        config.device = device
    if precision is not None:
        config.precision = precision
    out.mkdir(parents=True, exist_ok=True)
    record = {"name": preset.name, "digest": preset.digest(), "preset": preset.to_dict(), "finished": False}
    marker.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    train(
        method,
        dataset,
        config,
        out_dir=out,
        method_name=preset.method,
        resume=resume,
        monitor_dataset=monitor_ds,
    )
    record["finished"] = True
    marker.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return checkpoint
