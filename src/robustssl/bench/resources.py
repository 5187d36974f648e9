"""What a spec needs, loaded and checked before any work: datasets (train / val / test views within the
budgets), encoders (registry names built, checkpoints loaded, presets resolved) and that every encoder fits
every task's images (one embed and one dense forward on two test images).

Errors are :class:`~robustssl.bench.spec.SpecError` naming the spec key; nothing is trained or written here.
Preset encoders are built at their initial weights for the checks; :meth:`Resources.encoder` pretrains (or
reuses) them later, when the run needs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustssl import data, encoders
from robustssl.bench.spec import BenchSpec, EncoderSpec, SpecError, TaskSpec, ThreatSpec
from robustssl.data.base import VisionDataset
from robustssl.encoders.base import Encoder
from robustssl.encoders.checkpoints import sha256_file
from robustssl.runtime.logging import get_logger

log = get_logger(__name__)


class SubsetView(VisionDataset):
    """The samples ``indices`` of ``dataset`` (in that order), with its attributes; batching goes through the
    dataset's own ``batches`` so in-memory datasets stay one indexing operation per batch."""

    def __init__(self, dataset: VisionDataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        for attr in (
            "name",
            "split",
            "targets",
            "num_classes",
            "class_names",
            "mask_classes",
            "image_shape",
            "depth_range",
        ):
            setattr(self, attr, getattr(dataset, attr, None))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.dataset[self.indices[index]]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        indices: Sequence[int] | None = None,
        num_workers: int = 0,
    ) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order(batch_size, shuffle, generator, indices)
        mapped = [self.indices[int(i)] for i in order]
        yield from self.dataset.batches(
            batch_size, drop_last=drop_last, indices=mapped, num_workers=num_workers
        )

    def take(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Samples ``indices`` (of this view) as one batch."""
        return next(self.batches(len(indices), indices=list(indices)))


@dataclass
class TaskData:
    train: VisionDataset
    val: VisionDataset | None
    test: SubsetView


@dataclass
class Resources:
    """Loaded datasets and encoders of a spec (see :func:`prepare`)."""

    spec: BenchSpec
    device: torch.device
    tasks: dict[str, TaskData]
    shifts: dict[tuple[str, str], SubsetView]
    identities: dict[str, dict[str, Any]]
    checkpoints: dict[str, Path] = field(default_factory=dict)
    _encoders: dict[str, Encoder] = field(default_factory=dict)

    def test_set(self, task: str, threat: ThreatSpec | None = None) -> SubsetView:
        """The test images of ``task``, or of the shift set ``threat`` replaces them with."""
        if threat is not None and threat.kind == "shift":
            return self.shifts[threat.name, task]
        return self.tasks[task].test

    def encoder(self, label: str, out_dir: Path) -> Encoder:
        """Encoder ``label`` in eval mode on the device; a preset is pretrained into
        ``out_dir/encoders/label``        (or a finished run there reused) the first time it is asked for."""
        if label not in self._encoders:
            enc = self.spec.encoder(label)
            if enc.source == "preset" and not enc.random_init:
                from robustssl.pretrain.presets import pretrain_preset

                path = pretrain_preset(
                    _preset(enc),
                    out_dir / "encoders" / label,
                    resume=True,
                    device=str(self.device),
                    precision=self.spec.precision,
                )
                self._encoders[label] = encoders.load(path, strict=True)
            else:
                self._encoders[label] = self._built(enc)
        return self._encoders[label].to(self.device).eval()

    def _built(self, enc: EncoderSpec) -> Encoder:
        return _build_encoder(enc, self.checkpoints.get(enc.label))


def _preset(enc: EncoderSpec) -> Any:
    from robustssl.pretrain import presets

    return presets.override(presets.load_preset(enc.path), list(enc.overrides))


def _find_checkpoint(enc: EncoderSpec, spec: BenchSpec) -> Path:
    """The checkpoint file: as given (relative to the working directory), else next to the spec file."""
    given = Path(enc.path).expanduser()
    candidates = [given]
    if not given.is_absolute() and spec.source not in ("<dict>", ""):
        candidates.append(Path(spec.source).parent / given)
    for path in candidates:
        for option in (path, path.with_name(path.name + ".safetensors")):
            if option.is_file():
                return option
    raise SpecError(
        f"spec {spec.source}: {enc.where}: checkpoint {enc.path!r} not found (looked in "
        f"{', '.join(str(p) for p in candidates)})"
    )


def _build_encoder(enc: EncoderSpec, checkpoint: Path | None) -> Encoder:
    from robustssl.runtime.seeding import seeded_init

    if enc.source == "checkpoint":
        assert checkpoint is not None
        return encoders.load(
            checkpoint, strict=enc.strict, name=enc.name, encoder_kwargs=enc.options or None
        ).eval()
    if enc.source == "registry":
        with seeded_init(enc.init_seed or 0):
            return encoders.create(enc.name, **enc.options).eval()
    preset = _preset(enc)
    from robustssl.pretrain.trainer import TrainConfig

    # the preset's own starting point: the trainer builds its encoder under seeded_init(train seed)
    seed = TrainConfig(**preset.train).seed
    with seeded_init(seed):
        return encoders.create(preset.encoder, **preset.encoder_options).eval()


def _identity(enc: EncoderSpec, checkpoint: Path | None) -> dict[str, Any]:
    """What determines the encoder's weights (part of every cell hash)."""
    if enc.source == "checkpoint":
        assert checkpoint is not None
        return {"checkpoint_sha256": sha256_file(checkpoint), "arch": enc.name, "options": enc.options}
    if enc.source == "registry":
        return {"registry": enc.name, "options": enc.options, "init_seed": enc.init_seed}
    preset = _preset(enc)
    return {"preset": preset.digest(), "random_init": enc.random_init}


# --- datasets -----------------------------------------------------------------------------------------------
class _Loader:
    """Loads each (dataset, root, options, split) once."""

    def __init__(self, spec: BenchSpec):
        self.spec, self.cache = spec, {}

    def __call__(
        self, name: str, root: str | None, options: dict[str, Any], split: str, where: str
    ) -> VisionDataset:
        key = (name, root, repr(sorted(options.items())), split)
        if key not in self.cache:
            try:
                self.cache[key] = data.load(name, root=root, split=split, **options)
            except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
                raise SpecError(
                    f"spec {self.spec.source}: {where}: cannot load dataset {name!r} (split {split!r}): {exc}"
                ) from None
        return self.cache[key]


def _task_data(spec: BenchSpec, task: TaskSpec, load: _Loader) -> TaskData:
    b = spec.budgets
    train = load(task.data, task.root, task.data_options, "train", f"{task.where}.data")
    test = load(task.data, task.root, task.data_options, "test", f"{task.where}.data")
    splits = data.DATASETS.meta(task.data).get("splits")
    val = (
        load(task.data, task.root, task.data_options, "val", f"{task.where}.data")
        if splits is not None and "val" in splits
        else None
    )
    for ds in (train, test) + ((val,) if val is not None else ()):
        try:
            ds.require(task.target, purpose=f"task {task.label!r} ({task.kind})")
        except ValueError as exc:
            raise SpecError(f"spec {spec.source}: {task.where}.data: {exc}") from None
    n_train = len(train) if b.n_train is None else min(b.n_train, len(train))
    train_view = SubsetView(train, range(n_train))
    val_view = (
        None
        if val is None
        else SubsetView(val, range(len(val) if b.n_val is None else min(b.n_val, len(val))))
    )
    if len(train_view) < 2 or (val_view is not None and len(val_view) < 1):
        raise SpecError(
            f"spec {spec.source}: {task.where}: dataset {task.data!r} has too few samples to fit a "
            f"head ({len(train_view)} train, {len(val_view) if val_view is not None else 0} val)"
        )
    n_test = min(b.n_test, len(test))
    if n_test < 1:
        raise SpecError(f"spec {spec.source}: {task.where}: dataset {task.data!r} has an empty test split")
    return TaskData(train_view, val_view, SubsetView(test, range(n_test)))


def _fit_check(spec: BenchSpec, enc: EncoderSpec, encoder: Encoder, task: TaskSpec, test: SubsetView) -> None:
    """Two test images through ``embed`` and ``dense``: wrong input sizes or channel counts fail here."""
    batch = test.take(range(min(2, len(test))))
    x = batch["image"]
    try:
        with torch.inference_mode():
            emb, dense = encoder.embed(x), encoder.dense(x)
    except Exception as exc:  # any failure here means this encoder cannot run on these images
        raise SpecError(
            f"spec {spec.source}: {enc.where} ({enc.label!r}) does not fit the images of task "
            f"{task.label!r} ({task.data}, {tuple(x.shape[1:])}): {type(exc).__name__}: {exc}"
        ) from None
    if (
        emb.shape != (x.shape[0], encoder.embed_dim)
        or dense.dim() != 4
        or dense.shape[1] != encoder.dense_dim
    ):
        raise SpecError(
            f"spec {spec.source}: {enc.where} ({enc.label!r}) breaks the encoder contract on task "
            f"{task.label!r}: embed gave {tuple(emb.shape)} (embed_dim {encoder.embed_dim}), dense "
            f"{tuple(dense.shape)} (dense_dim {encoder.dense_dim})"
        )


def prepare(spec: BenchSpec, device: torch.device, *, check_fit: bool = True) -> Resources:
    """Load and check everything ``spec`` needs (see the module docstring)."""
    load = _Loader(spec)
    tasks = {t.label: _task_data(spec, t, load) for t in spec.tasks}
    shifts: dict[tuple[str, str], SubsetView] = {}
    for threat in spec.threats:
        if threat.kind != "shift":
            continue
        for task in spec.threat_tasks(threat):
            options = {**task.data_options, **threat.data_options}
            ds = load(threat.data, threat.root, options, "test", f"{threat.where}.data")
            try:
                ds.require(task.target, purpose=f"the shift set of task {task.label!r}")
            except ValueError as exc:
                raise SpecError(f"spec {spec.source}: {threat.where}.data: {exc}") from None
            n = min(threat.n or spec.budgets.n_test, len(ds))
            shifts[threat.name, task.label] = SubsetView(ds, range(n))
    checkpoints: dict[str, Path] = {}
    identities: dict[str, dict[str, Any]] = {}
    built: dict[str, Encoder] = {}
    for enc in spec.encoders:
        if enc.source == "checkpoint":
            checkpoints[enc.label] = _find_checkpoint(enc, spec)
        try:
            encoder = _build_encoder(enc, checkpoints.get(enc.label))
        except SpecError:
            raise
        except (ValueError, TypeError, KeyError, RuntimeError, FileNotFoundError, OSError) as exc:
            what = (
                f"checkpoint {str(checkpoints[enc.label])!r} does not load or fit"
                if enc.source == "checkpoint"
                else "cannot be built"
            )
            raise SpecError(f"spec {spec.source}: {enc.where} ({enc.label!r}): {what}: {exc}") from None
        identities[enc.label] = _identity(enc, checkpoints.get(enc.label))
        if check_fit:
            seen = set()
            for task in spec.tasks:
                if task.dataset_key() not in seen:
                    seen.add(task.dataset_key())
                    _fit_check(spec, enc, encoder, task, tasks[task.label].test)
        if enc.source != "preset" or enc.random_init:
            built[enc.label] = encoder
    return Resources(spec, device, tasks, shifts, identities, checkpoints, built)
