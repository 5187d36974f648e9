"""CIFAR-10/100 (python pickle batches), CIFAR-10.1 (.npy) and CIFAR-10-C / CIFAR-100-C (.npy per corruption).

The official CIFAR batches are pickles. Unpickling can run arbitrary code, so they are read with
:class:`RestrictedUnpickler`, which only resolves the handful of NumPy globals needed to rebuild arrays and
refuses everything else. The ``val`` split is a fixed, seeded 5,000-image part of the official training set
(``train`` is the other 45,000; ``trainval`` is all 50,000), so checkpoints are never selected on ``test``.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from robustssl.data.arrays import ArrayDataset, held_out
from robustssl.data.base import DATASETS
from robustssl.data.files import CorruptFileError, find_file, manifest_class_names, resolve_root

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLITS = ("train", "val", "test", "trainval")
N_VAL = 5000
LAYOUT_10 = ("ROOT/[cifar-10-batches-py/]{data_batch_1..data_batch_5, test_batch, batches.meta} "
             "(the python version from cs.toronto.edu/~kriz/cifar.html)")
LAYOUT_100 = "ROOT/[cifar-100-python/]{train, test, meta} (the python version)"

# (module, name) pairs a CIFAR pickle may reference: NumPy's array reconstruction, nothing that runs code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
    ("numpy.dtypes", "UInt8DType"): ("numpy.dtypes",),
    ("numpy.dtypes", "Int64DType"): ("numpy.dtypes",),
    # Python 2 pickles of byte strings under protocol 2 go through _codecs.encode(text, "latin1").
    ("_codecs", "encode"): ("_codecs",),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds dicts, lists, strings, numbers, bytes and NumPy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        homes = _ALLOWED.get((module, name))
        if homes is None:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _ALLOWED))
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only NumPy array "
                                         f"reconstruction is allowed in dataset pickles ({allowed})")
        for home in homes:
            try:
                return getattr(importlib.import_module(home), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve allowed global {module}.{name} in this NumPy version")


def load_pickle(path: Path) -> dict[str, Any]:
    """Read a CIFAR pickle safely; dict keys come back as ``str`` whether written by Python 2 or 3."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise CorruptFileError(path, f"not a readable CIFAR pickle: {exc}") from exc
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        raise CorruptFileError(path, f"truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CorruptFileError(path, f"expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 32, 32, 3), labels int64 (N,)."""
    d = load_pickle(path)
    if "data" not in d or label_key not in d:
        raise CorruptFileError(path, f"expected keys 'data' and {label_key!r}, found {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptFileError(path, f"'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise CorruptFileError(path, f"{len(labels)} labels for {len(data)} images")
    # Rows hold 1024 red, then green, then blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _names(meta: Path | None, key: str) -> list[str] | None:
    if meta is None:
        return None
    names = load_pickle(meta).get(key)
    return None if names is None else [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar(name: str, root: str | None, split: str, files: dict[str, list[str]], sub: str, meta_file: str,
           label_key: str, names_key: str, num_classes: int, layout: str) -> ArrayDataset:
    if split not in SPLITS:
        raise ValueError(f"{name}: unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    base = resolve_root(name, root, layout)
    dirs = [base, base / sub]
    source = "test" if split == "test" else "train"
    parts = [_batch(find_file(name, [d / f for d in dirs], layout), label_key) for f in files[source]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise CorruptFileError(dirs[0], f"labels must lie in [0, {num_classes - 1}], got "
                                        f"[{labels.min()}, {labels.max()}]")
    if split in ("train", "val"):
        idx = held_out(len(images), min(N_VAL, len(images) // 10), split)
        images, labels = images[idx], labels[idx]
    meta = next((d / meta_file for d in dirs if (d / meta_file).is_file()), None)
    class_names = _names(meta, names_key)
    return ArrayDataset(np.ascontiguousarray(images), labels, name=name, split=split, num_classes=num_classes,
                        class_names=class_names)


@DATASETS.register("cifar10", targets=("label",), needs_root=True, splits=SPLITS, num_classes=10,
                   layout=LAYOUT_10, description="CIFAR-10, python pickle batches (restricted unpickler)")
def cifar10(root: str | None = None, split: str = "test") -> ArrayDataset:
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    ds = _cifar("cifar10", root, split, files, "cifar-10-batches-py", "batches.meta", "labels", "label_names",
                10, LAYOUT_10)
    ds.class_names = ds.class_names or list(CIFAR10_CLASSES)
    return ds


@DATASETS.register("cifar100", targets=("label",), needs_root=True, splits=SPLITS, num_classes=100,
                   layout=LAYOUT_100, description="CIFAR-100 (label='fine' 100 classes or 'coarse' 20)")
def cifar100(root: str | None = None, split: str = "test", label: str = "fine") -> ArrayDataset:
    if label not in ("fine", "coarse"):
        raise ValueError(f"cifar100: label must be 'fine' or 'coarse', got {label!r}")
    files = {"train": ["train"], "test": ["test"]}
    return _cifar("cifar100", root, split, files, "cifar-100-python", "meta", f"{label}_labels",
                  f"{label}_label_names", 100 if label == "fine" else 20, LAYOUT_100)


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickles; a truncated or malformed file names itself in the error."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(path, f"unreadable .npy ({exc})") from exc


def _check_images(path: Path, images: np.ndarray, hw: tuple[int, int] | None = (32, 32)) -> None:
    """uint8 ``(N, H, W, 3)``; ``hw=None`` accepts any size (corrupted copies of other datasets)."""
    shape_ok = images.ndim == 4 and images.shape[-1] == 3 and (hw is None or images.shape[1:3] == hw)
    if images.dtype != np.uint8 or not shape_ok:
        expected = "(N, H, W, 3)" if hw is None else f"(N, {hw[0]}, {hw[1]}, 3)"
        raise CorruptFileError(path, f"expected uint8 images {expected}, got {images.dtype} {images.shape}")


LAYOUT_101 = "ROOT/cifar10.1_{version}_data.npy and ROOT/cifar10.1_{version}_labels.npy (version v6 or v4)"


@DATASETS.register("cifar10.1", targets=("label",), needs_root=True, splits=("test",), num_classes=10,
                   layout=LAYOUT_101, description="CIFAR-10.1 natural-shift test set (Recht et al. 2018)")
def cifar10_1(root: str | None = None, split: str = "test", version: str = "v6") -> ArrayDataset:
    if split != "test":
        raise ValueError(f"cifar10.1: unknown split {split!r}; accepted: test")
    if version not in ("v4", "v6"):
        raise ValueError(f"cifar10.1: version must be 'v4' or 'v6', got {version!r}")
    base = resolve_root("cifar10.1", root, LAYOUT_101)
    data_path = find_file("cifar10.1", [base / f"cifar10.1_{version}_data.npy"], LAYOUT_101)
    label_path = find_file("cifar10.1", [base / f"cifar10.1_{version}_labels.npy"], LAYOUT_101)
    images, labels = load_npy(data_path), load_npy(label_path)
    _check_images(data_path, images)
    if labels.shape != (len(images),):
        raise CorruptFileError(label_path, f"expected {len(images)} labels, got shape {labels.shape}")
    return ArrayDataset(images, labels.astype(np.int64), name="cifar10.1", split="test", num_classes=10,
                        class_names=list(CIFAR10_CLASSES))


SEVERITIES = (1, 2, 3, 4, 5)
LAYOUT_C = ("ROOT/<corruption>.npy (uint8 (5*N, 32, 32, 3): severities 1..5 stacked in order) and "
            "ROOT/labels.npy ((5*N,) or (N,)), as released by Hendrycks & Dietterich 2019")


def corruptions_in(base: Path) -> list[str]:
    """Corruption names available in a CIFAR-C folder (its .npy files other than labels.npy)."""
    return sorted(p.stem for p in base.glob("*.npy") if p.stem != "labels")


def _cifar_c(name: str, root: str | None, split: str, corruption: str | None, severity: int,
             num_classes: int, class_names: list[str] | None) -> ArrayDataset:
    if split != "test":
        raise ValueError(f"{name}: unknown split {split!r}; accepted: test")
    base = resolve_root(name, root, LAYOUT_C)
    available = corruptions_in(base)
    if corruption is None or corruption not in available:
        raise ValueError(f"{name}: corruption={corruption!r} is not in {base}; available: "
                         f"{', '.join(available) or 'none (no .npy files)'}")
    if severity not in SEVERITIES:
        raise ValueError(f"{name}: severity must be one of {SEVERITIES}, got {severity!r}")
    data_path = base / f"{corruption}.npy"
    label_path = find_file(name, [base / "labels.npy"], LAYOUT_C)
    images, labels = load_npy(data_path, mmap=True), load_npy(label_path)
    _check_images(data_path, images, hw=None)
    if len(images) % len(SEVERITIES):
        raise CorruptFileError(data_path, f"{len(images)} images is not 5 severities of equal size")
    n = len(images) // len(SEVERITIES)
    if labels.ndim != 1 or len(labels) not in (n, len(images)):
        raise CorruptFileError(label_path, f"expected {n} or {len(images)} labels, got shape {labels.shape}")
    rows = slice((severity - 1) * n, severity * n)
    labels = labels[rows] if len(labels) == len(images) else labels
    # a corrupted copy of another dataset (robustssl corrupt) records its own classes
    recorded = manifest_class_names(base)
    if recorded is not None:
        class_names, num_classes = recorded, len(recorded)
    ds = ArrayDataset(images[rows], np.asarray(labels, dtype=np.int64), name=name, split="test",
                      num_classes=num_classes, class_names=class_names)
    ds.corruption, ds.severity = corruption, severity
    return ds


@DATASETS.register("cifar10-c", targets=("label",), needs_root=True, splits=("test",), num_classes=10,
                   layout=LAYOUT_C, description="CIFAR-10-C, read back: corruption=NAME, severity=1..5")
def cifar10_c(root: str | None = None, split: str = "test", corruption: str | None = None,
              severity: int = 3) -> ArrayDataset:
    return _cifar_c("cifar10-c", root, split, corruption, severity, 10, list(CIFAR10_CLASSES))


@DATASETS.register("cifar100-c", targets=("label",), needs_root=True, splits=("test",), num_classes=100,
                   layout=LAYOUT_C, description="CIFAR-100-C, read back: corruption=NAME, severity=1..5")
def cifar100_c(root: str | None = None, split: str = "test", corruption: str | None = None,
               severity: int = 3) -> ArrayDataset:
    return _cifar_c("cifar100-c", root, split, corruption, severity, 100, None)
