"""``segfolder``: semantic segmentation from image + PNG mask pairs, in the VOC or the ADE20K layout.

VOC (``layout="voc"``)::

    ROOT/JPEGImages/<id>.jpg  ROOT/SegmentationClass/<id>.png  ROOT/ImageSets/Segmentation/<split>.txt

ADE20K (``layout="ade"``, ADEChallengeData2016)::

    ROOT/images/<split>/<id>.jpg  ROOT/annotations/<split>/<id>.png   (split "training" / "validation";
                                                                         "train" / "val" are accepted aliases)

Masks are palette (mode P) or greyscale PNGs holding class indices; 255 = ignore (VOC's object borders).
ADE's 0 means "other" and is not a class: with ``reduce_zero_label`` (default for ADE) 0 becomes 255 and
1..150 become 0..149. A mask value outside ``0..num_classes-1`` that is not 255 is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robustssl.data.base import DATASETS, IGNORE_INDEX, VisionDataset
from robustssl.data.files import CorruptFileError, resolve_root, subdirs
from robustssl.data.folders import decode

LAYOUT = ("VOC: ROOT/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt}; "
          "ADE: ROOT/{images/<split>/<id>.jpg, annotations/<split>/<id>.png}")
DEFAULT_CLASSES = {"voc": 21, "ade": 150}
ADE_ALIASES = {"train": "training", "val": "validation"}


def detect_layout(base: Path) -> str:
    if (base / "JPEGImages").is_dir() and (base / "SegmentationClass").is_dir():
        return "voc"
    if (base / "images").is_dir() and (base / "annotations").is_dir():
        return "ade"
    raise FileNotFoundError(f"segfolder: {base} has neither a VOC nor an ADE layout. Expected: {LAYOUT}")


def voc_pairs(base: Path, split: str, mask_dir: str) -> list[tuple[Path, Path]]:
    sets = base / "ImageSets" / "Segmentation"
    available = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
    if split not in available:
        raise ValueError(f"segfolder (voc): unknown split {split!r}; split lists in {sets}: "
                         f"{', '.join(available) or 'none'}")
    ids = [line.strip() for line in (sets / f"{split}.txt").read_text().splitlines() if line.strip()]
    pairs = []
    for i in ids:
        candidates = (base / "JPEGImages" / f"{i}.jpg", base / "JPEGImages" / f"{i}.png")
        images = [p for p in candidates if p.is_file()]
        mask = base / mask_dir / f"{i}.png"
        if not images or not mask.is_file():
            missing = mask if images else base / "JPEGImages" / f"{i}.jpg"
            raise FileNotFoundError(f"segfolder (voc): {sets / f'{split}.txt'} lists {i!r} but {missing} "
                                    "is missing")
        pairs.append((images[0], mask))
    return pairs


def ade_pairs(base: Path, split: str) -> list[tuple[Path, Path]]:
    available = subdirs(base / "images")
    folder = split if split in available else ADE_ALIASES.get(split, split)
    if folder not in available:
        raise ValueError(f"segfolder (ade): unknown split {split!r}; splits under {base / 'images'}: "
                         f"{', '.join(available) or 'none'}")
    pairs = []
    for image in sorted((base / "images" / folder).iterdir()):
        if image.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        mask = base / "annotations" / folder / f"{image.stem}.png"
        if not mask.is_file():
            raise FileNotFoundError(f"segfolder (ade): no mask {mask} for image {image}")
        pairs.append((image, mask))
    return pairs


class SegFolder(VisionDataset):
    """Image/mask pairs decoded on access; optional ``size``: shorter side resized to it, centre crop."""

    targets = ("mask",)

    def __init__(self, pairs: list[tuple[Path, Path]], *, split: str, num_classes: int,
                 reduce_zero_label: bool, size: int | None, name: str = "segfolder"):
        if not pairs:
            raise FileNotFoundError(f"{name} ({split}): no image/mask pairs found")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"{name}: size must be a positive int or None, got {size!r}")
        if not 1 <= num_classes < IGNORE_INDEX:
            raise ValueError(f"{name}: num_classes must be in 1..{IGNORE_INDEX - 1}, got {num_classes!r}")
        self.pairs, self.split, self.name = pairs, split, name
        self.num_classes, self.reduce_zero_label, self.size = num_classes, reduce_zero_label, size
        self.image_shape = (3, size, size) if size else None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        image_path, mask_path = self.pairs[index]
        image = decode(image_path, self.size, 1.0)
        mask = decode(mask_path, self.size, 1.0, mode="P", resample=Image.NEAREST).astype(np.int64)
        if image.shape[:2] != mask.shape:
            raise CorruptFileError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but image "
                                              f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        if self.reduce_zero_label:
            mask = np.where(mask == 0, IGNORE_INDEX + 1, mask) - 1
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise CorruptFileError(mask_path, f"mask value {int(mask[bad][0])} outside "
                                              f"0..{self.num_classes - 1} (and not {IGNORE_INDEX} = ignore); "
                                              "set num_classes")
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255),
                "mask": torch.from_numpy(mask)}


@DATASETS.register("segfolder", targets=("mask",), needs_root=True, splits=None, layout=LAYOUT,
                   description="VOC/ADE-style image + palette PNG mask pairs (255 = ignore)")
def segfolder(root: str | None = None, split: str = "val", layout: str = "auto",
              num_classes: int | None = None, reduce_zero_label: bool | None = None, size: int | None = None,
              mask_dir: str = "SegmentationClass") -> SegFolder:
    base = resolve_root("segfolder", root, LAYOUT)
    if layout not in ("auto", "voc", "ade"):
        raise ValueError(f"segfolder: layout must be 'auto', 'voc' or 'ade', got {layout!r}")
    kind = detect_layout(base) if layout == "auto" else layout
    pairs = voc_pairs(base, split, mask_dir) if kind == "voc" else ade_pairs(base, split)
    reduce = (kind == "ade") if reduce_zero_label is None else reduce_zero_label
    ds = SegFolder(pairs, split=split, num_classes=num_classes or DEFAULT_CLASSES[kind],
                   reduce_zero_label=reduce, size=size)
    ds.layout = kind
    return ds
