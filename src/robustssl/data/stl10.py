"""STL-10, binary format (Coates et al. 2011): 96x96 RGB, 10 classes, plus 100,000 unlabeled images.

Each ``*_X.bin`` is a flat uint8 file of images stored as 3 channel planes, each plane column-major (MATLAB
order); ``*_y.bin`` holds one uint8 label 1..10 per image. Files are memory-mapped, so the 2.7 GB unlabeled
split costs nothing until its images are read. ``val`` is a fixed, seeded 500-image part of ``train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustssl.data.arrays import ArrayDataset, held_out
from robustssl.data.base import DATASETS
from robustssl.data.files import CorruptFileError, find_file, resolve_root

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
SPLITS = ("train", "val", "test", "trainval", "unlabeled")
N_VAL = 500
LAYOUT = ("ROOT/[stl10_binary/]{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, "
          "class_names.txt} (the binary version from cs.stanford.edu/~acoates/stl10)")


def read_images(path: Path) -> np.ndarray:
    """Memory-map an STL-10 image file as uint8 ``(N, 96, 96, 3)`` (a strided view, no copy)."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise CorruptFileError(path, f"size {size} bytes is not a positive multiple of one 3x96x96 image "
                                     f"({IMAGE_BYTES} bytes): truncated or not an STL-10 image file")
    flat = np.memmap(path, dtype=np.uint8, mode="r")
    # (N, channel, column, row) on disk -> (N, row, column, channel)
    return flat.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1)


def read_labels(path: Path, n: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != n:
        raise CorruptFileError(path, f"{len(labels)} labels for {n} images (truncated or mismatched file)")
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise CorruptFileError(path, f"labels must lie in 1..10, got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64) - 1


@DATASETS.register("stl10", targets=("label",), needs_root=True, splits=SPLITS, num_classes=10, layout=LAYOUT,
                   description="STL-10 binary format, 96x96; split 'unlabeled' carries no label")
def stl10(root: str | None = None, split: str = "test") -> ArrayDataset:
    if split not in SPLITS:
        raise ValueError(f"stl10: unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    base = resolve_root("stl10", root, LAYOUT)
    dirs = [base, base / "stl10_binary"]
    source = {"val": "train", "trainval": "train"}.get(split, split)
    images = read_images(find_file("stl10", [d / f"{source}_X.bin" for d in dirs], LAYOUT))
    labels = None
    if source != "unlabeled":
        labels = read_labels(find_file("stl10", [d / f"{source}_y.bin" for d in dirs], LAYOUT), len(images))
    if split in ("train", "val"):
        idx = held_out(len(images), min(N_VAL, len(images) // 10), split)
        images, labels = images[idx], labels[idx]
    names_file = next((d / "class_names.txt" for d in dirs if (d / "class_names.txt").is_file()), None)
    class_names = names_file.read_text().split() if names_file else None
    return ArrayDataset(images, labels, name="stl10", split=split, num_classes=10, class_names=class_names)
