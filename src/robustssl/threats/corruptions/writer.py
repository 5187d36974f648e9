"""Write a corrupted copy of a dataset in the CIFAR-10-C or the ImageNet-C layout, resumably.

Layouts (what robustssl.data's ``-C`` readers read back):

- ``cifar``: ``<corruption>.npy``, uint8 ``(5 * N, H, W, 3)``, severities 1..5 stacked in order, and
  ``labels.npy`` (``5 * N`` labels, the ``N`` labels repeated per severity) as in CIFAR-10-C.
- ``imagenet``: ``<corruption>/<severity>/<class>/<index>.png`` as in ImageNet-C.

Every file is written to a temporary name and moved into place with ``os.replace``, so a file under its final
name is always complete. ``manifest.json`` records the settings (dataset, split, n, layout, params, seed,
batch size), the class names in label order, and which (corruption, severity) cells are finished; a rerun
skips those and refuses different settings. Cell ``(c, s)`` draws from a generator seeded with
``derive_seed(seed, c, s)``, so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from robustssl import __version__
from robustssl.data.base import VisionDataset
from robustssl.runtime.progress import progress
from robustssl.runtime.seeding import make_generator
from robustssl.threats.corruptions.api import corrupt, derive_seed
from robustssl.threats.corruptions.base import CORRUPTIONS, PARAM_SETS, check_severity

LAYOUTS = ("cifar", "imagenet", "auto")
MANIFEST = "manifest.json"
_FORMAT = 1
#: settings a resumed run must share with the run that started the directory
_SETTINGS = ("dataset", "split", "n", "layout", "params", "seed", "batch_size")


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_name)`` then move the temporary file onto ``path`` (atomic on POSIX and Windows)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)


def _save_json(path: Path, data: dict[str, Any]) -> None:
    def write(name: str) -> None:
        with open(name, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)

    _atomic_write(path, write)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(name: str) -> None:
        with open(name, "wb") as fh:
            np.save(fh, array)

    _atomic_write(path, write)


def _save_png(path: Path, image: np.ndarray) -> None:
    _atomic_write(path, lambda name: Image.fromarray(image).save(name, format="PNG"))


def _load_manifest(out: Path, settings: dict[str, Any]) -> dict[str, list[int]]:
    """The finished cells of an existing output directory; refuses a directory made with other settings."""
    path = out / MANIFEST
    if not path.exists():
        leftovers = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
        if leftovers:
            raise ValueError(f"output directory {str(out)!r} is not empty and has no {MANIFEST} "
                             f"(found {', '.join(sorted(leftovers)[:5])}); pick a new or empty --out")
        return {}
    try:
        manifest = json.loads(path.read_text())
        old = {k: manifest[k] for k in _SETTINGS}
        done = {str(k): sorted(int(s) for s in v) for k, v in manifest["done"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid corrupted-dataset manifest ({exc}); remove the directory "
                         "or pick another --out") from exc
    changed = [f"{k}: was {old[k]!r}, now {settings[k]!r}" for k in _SETTINGS if old[k] != settings[k]]
    if changed:
        raise ValueError(f"{str(out)!r} was written with other settings ({'; '.join(changed)}); "
                         "resuming would mix incompatible files. Rerun with the original settings or pick a "
                         "new --out")
    return done


def _class_dir(label: int | None, class_names: Sequence[str] | None) -> str:
    if label is None:
        return "0"
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label]).replace("/", "_").replace(os.sep, "_")
    return str(label)


def write_corrupted(dataset: VisionDataset, out: str | os.PathLike, *,
                    corruptions: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
                    layout: str = "auto", params: str = "auto", seed: int = 0, n: int | None = None,
                    batch_size: int = 64, device: torch.device | str = "cpu",
                    on_batch: Callable[[str, int, int], None] | None = None,
                    show_progress: bool | None = None) -> dict[str, Any]:
    """Corrupt the first ``n`` samples of ``dataset`` with every corruption × severity; write them to ``out``.

    ``corruptions`` defaults to every registered one. ``layout`` ``auto`` picks ``cifar`` for fixed-size
    images with a side below 64 pixels, else ``imagenet``; the ``cifar`` layout needs all five severities and
    equal image sizes. ``on_batch(corruption, severity, images_done)`` is called after every batch (progress
    hooks; an exception raised there aborts the run, which a rerun resumes). Returns the manifest dict.
    """
    names = list(corruptions) if corruptions is not None else CORRUPTIONS.names()
    if not names:
        raise ValueError("no corruptions to write; pass at least one name")
    for name in names:
        CORRUPTIONS.get(name)
    sevs = sorted({check_severity(s) for s in severities})
    if not sevs:
        raise ValueError("no severities to write; pass at least one of 1..5")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    if params not in PARAM_SETS:
        raise ValueError(f"unknown corruption parameter set {params!r}; accepted: {', '.join(PARAM_SETS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    total = len(dataset)
    n = total if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
        raise ValueError(f"n must be an int in 1..{total} (the dataset's size), got {n!r}")
    shape = dataset.image_shape
    if layout == "auto":
        layout = "cifar" if shape is not None and min(shape[-2:]) < 64 else "imagenet"
    if layout == "cifar":
        if sevs != [1, 2, 3, 4, 5]:
            raise ValueError("the cifar layout stacks all five severities in one file; got severities "
                             f"{sevs}. Use --layout imagenet for a subset")
        if shape is None:
            raise ValueError(f"the cifar layout needs images of one size; dataset {dataset.name!r} has mixed "
                             "sizes. Use --layout imagenet")
    if shape is None:
        batch_size = 1  # mixed sizes cannot be stacked into a batch

    out = Path(out)
    settings = {"dataset": dataset.name, "split": dataset.split, "n": n, "layout": layout, "params": params,
                "seed": seed, "batch_size": batch_size}
    done = _load_manifest(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": _FORMAT, "robustssl": __version__, **settings, "done": done}
    if dataset.class_names is not None:
        # the folder names in label order: robustssl.data's -C readers map folders back to labels with it
        names_in_order = dataset.class_names
        manifest["class_names"] = [_class_dir(k, names_in_order) for k in range(len(names_in_order))]

    device = torch.device(device)
    has_labels = "label" in dataset.targets
    work = [(c, s) for c in names for s in sevs]
    bar = progress(total=len(work) * n, desc="corrupt", enabled=show_progress, unit="img")
    bar.update(sum(n for c, s in work if s in done.get(c, [])))
    try:
        for name in names:
            for severity in sevs:
                if severity in done.get(name, []):
                    continue
                labels = _write_cell(dataset, out, name, severity, layout, params, seed, n, batch_size,
                                     device, on_batch, bar)
                if layout == "cifar" and has_labels and not (out / "labels.npy").exists():
                    _save_npy(out / "labels.npy", _label_array(np.tile(labels, 5)))
                done[name] = sorted({*done.get(name, []), severity})
                _save_json(out / MANIFEST, manifest)
            if layout == "cifar":
                _assemble_cifar(out, name)
    finally:
        bar.close()
    _save_json(out / MANIFEST, manifest)
    return manifest


def _label_array(labels: np.ndarray) -> np.ndarray:
    # CIFAR-10-C stores labels as uint8; keep that when the classes fit
    return labels.astype(np.uint8) if labels.size and 0 <= labels.min() and labels.max() < 256 else labels


def _write_cell(dataset: VisionDataset, out: Path, name: str, severity: int, layout: str, params: str,
                seed: int, n: int, batch_size: int, device: torch.device,
                on_batch: Callable[[str, int, int], None] | None, bar: Any) -> np.ndarray:
    """Corrupt samples ``0..n-1`` at one severity and write them; returns their labels (``-1`` if none)."""
    generator = make_generator(derive_seed(seed, name, severity), device)
    shape = dataset.image_shape
    stack = np.empty((n, shape[1], shape[2], 3), dtype=np.uint8) if layout == "cifar" else None
    labels = np.full(n, -1, dtype=np.int64)
    width = len(str(n - 1))
    written = 0
    for batch in dataset.batches(batch_size, indices=range(n)):
        x = batch["image"].to(device)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        y = corrupt(x, name, severity, generator, params)
        images = (y * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        batch_labels = batch["label"].reshape(-1).cpu().numpy() if "label" in batch else None
        for k, image in enumerate(images):
            index = written + k
            if batch_labels is not None:
                labels[index] = int(batch_labels[k])
            if stack is not None:
                stack[index] = image
            else:
                label = int(batch_labels[k]) if batch_labels is not None else None
                folder = out / name / str(severity) / _class_dir(label, dataset.class_names)
                folder.mkdir(parents=True, exist_ok=True)
                _save_png(folder / f"{index:0{width}d}.png", image)
        written += len(images)
        bar.update(len(images))
        if on_batch is not None:
            on_batch(name, severity, written)
    if stack is not None:
        # one file per finished severity; the five are stacked into <name>.npy once all exist
        (out / ".partial").mkdir(exist_ok=True)
        _save_npy(out / ".partial" / f"{name}.s{severity}.npy", stack)
    return labels


def _assemble_cifar(out: Path, name: str) -> None:
    """Stack the five finished severity parts into ``<name>.npy`` (once), then drop the parts."""
    final = out / f"{name}.npy"
    parts = [out / ".partial" / f"{name}.s{s}.npy" for s in range(1, 6)]
    if final.exists():
        return
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise RuntimeError(f"{out}: severity files {', '.join(missing)} of {name!r} are missing although the "
                           f"manifest marks them done; delete {name!r} from 'done' in {MANIFEST} to redo it")
    _save_npy(final, np.concatenate([np.load(p) for p in parts]))
    for p in parts:
        p.unlink()
