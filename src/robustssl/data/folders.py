"""Image folders decoded lazily with PIL: ``imagefolder`` (ROOT/<split>/<class>/<image>), the ImageNet
natural-shift sets (ImageNet-R, -A, -Sketch, -V2) and ImageNet-C (ROOT/<corruption>/<severity>/<class>/...).

**ImageNet class order.** The 1000 ImageNet classes are indexed in the order of their sorted WordNet ids
(``n01440764`` = 0, ..., the torchvision / timm convention). Nothing here ships that list: pass
``classes=PATH`` with either an ImageNet train folder (its sorted ``n########`` sub-folders) or a text file
with one wnid per line as its first token (e.g. ``LOC_synset_mapping.txt``). With it, the shift sets expose
``imagenet_indices`` (the 1000-class index of each of their classes) and ``label_space="imagenet"`` makes
labels 1000-class indices, so a 1000-way head can be scored on the 200-class subsets. ImageNet-V2 folders are
already named by class index (0..999), so its indices are known without a class list.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from robustssl.data.base import DATASETS, VisionDataset
from robustssl.data.files import (
    CorruptFileError,
    class_folders,
    manifest_class_names,
    positions_in,
    resolve_root,
    subdirs,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: ImageNet evaluation resize: shorter side to size / 0.875, then a centre crop (224 <- 256)
CROP_FRACTION = 0.875
WNID = re.compile(r"^n\d{8}$")


def decode(path: Path, size: int | None = None, crop_fraction: float = CROP_FRACTION,
           mode: str = "RGB", resample: int = Image.BILINEAR) -> np.ndarray:
    """Decode ``path`` to a uint8 array ``(H, W, 3)`` (or ``(H, W)`` for ``mode="P"/"L"``); with ``size``,
    resize the shorter side to ``round(size / crop_fraction)`` and centre-crop ``size`` x ``size``."""
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "RGB":
                img = img.convert("RGB")
            elif img.mode not in ("P", "L"):
                raise CorruptFileError(path, f"expected a palette (P) or greyscale (L) PNG mask, got mode "
                                             f"{img.mode}; colour-coded masks must be converted to indices")
            if size is not None:
                img = resize_crop(img, size, crop_fraction, resample)
            # a writable copy: torch.from_numpy refuses to share PIL's read-only buffer silently
            return np.array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, CorruptFileError):
            raise
        raise CorruptFileError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def resize_crop(img: Image.Image, size: int, crop_fraction: float, resample: int) -> Image.Image:
    w, h = img.size
    short = max(size, round(size / crop_fraction))
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _check_size(name: str, size: int | None, crop_fraction: float) -> None:
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"{name}: size must be a positive int or None, got {size!r}")
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"{name}: crop_fraction must be in (0, 1], got {crop_fraction!r}")


def scan(folder: Path, class_dirs: list[str]) -> list[tuple[Path, int]]:
    """(file, class index) for every image under ``folder/<class>/`` (recursively), in sorted order."""
    samples = []
    for label, cls in enumerate(class_dirs):
        files = sorted(p for p in (folder / cls).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        samples.extend((p, label) for p in files)
    return samples


class FolderDataset(VisionDataset):
    """Images listed as ``(path, label)``; each is decoded (and resized/cropped) when it is accessed."""

    def __init__(self, samples: list[tuple[Path, int]], class_names: list[str], *, name: str, split: str,
                 size: int | None = None, crop_fraction: float = CROP_FRACTION,
                 num_classes: int | None = None):
        _check_size(name, size, crop_fraction)
        if not samples:
            raise FileNotFoundError(f"{name} ({split}): no images with extensions "
                                    f"{', '.join(IMAGE_EXTENSIONS)} found")
        self.samples, self.class_names = samples, class_names
        self.name, self.split, self.size, self.crop_fraction = name, split, size, crop_fraction
        self.targets = ("label",)
        self.num_classes = num_classes if num_classes is not None else len(class_names)
        self.image_shape = (3, size, size) if size else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        path, label = self.samples[index]
        array = decode(path, self.size, self.crop_fraction)
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255)
        return {"image": image, "label": torch.tensor(label, dtype=torch.long)}


def _split_dir(name: str, base: Path, split: str, layout: str) -> Path:
    available = subdirs(base)
    if split not in available:
        raise ValueError(f"{name}: unknown split {split!r}; the splits under {base} are: "
                         f"{', '.join(available) or 'none'}. Expected layout: {layout}")
    return base / split


LAYOUT_IF = "ROOT/<split>/<class>/<image> (e.g. ROOT/train/dog/1.jpg, ROOT/val/dog/2.png)"


@DATASETS.register("imagefolder", targets=("label",), needs_root=True, splits=None, layout=LAYOUT_IF,
                   description="ImageNet-style ROOT/<split>/<class>/<image>, lazily decoded; size= crops")
def imagefolder(root: str | None = None, split: str = "test", size: int | None = None,
                crop_fraction: float = CROP_FRACTION) -> FolderDataset:
    base = resolve_root("imagefolder", root, LAYOUT_IF)
    folder = _split_dir("imagefolder", base, split, LAYOUT_IF)
    classes = subdirs(folder)
    if not classes:
        raise FileNotFoundError(f"imagefolder: {folder} has no class sub-folders. "
                                f"Expected layout: {LAYOUT_IF}")
    return FolderDataset(scan(folder, classes), classes, name="imagefolder", split=split, size=size,
                         crop_fraction=crop_fraction)


def imagenet_classes(source: str | Path) -> list[str]:
    """The 1000 ImageNet wnids in index order, from a train folder (sorted sub-folders) or a class list."""
    path = Path(source).expanduser()
    if path.is_dir():
        wnids = [d for d in subdirs(path) if WNID.match(d)]
    elif path.is_file():
        wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    else:
        raise FileNotFoundError(f"ImageNet class list {path} does not exist; pass an ImageNet train folder "
                                "or a text file with one wnid (n########) per line")
    bad = [w for w in wnids if not WNID.match(w)]
    if bad or len(wnids) != 1000 or len(set(wnids)) != 1000:
        invalid = f", invalid: {', '.join(bad[:3])}" if bad else ""
        raise CorruptFileError(path, f"expected 1000 distinct wnids like n01440764, got {len(wnids)} entries "
                                     f"({len(set(wnids))} distinct{invalid})")
    return wnids if path.is_file() else sorted(wnids)


def _shift_set(name: str, root: str | None, split: str, layout: str, size: int | None, crop_fraction: float,
               classes: str | Path | None, label_space: str, folder_of: str | None = None) -> FolderDataset:
    if split != "test":
        raise ValueError(f"{name}: unknown split {split!r}; accepted: test")
    if label_space not in ("local", "imagenet"):
        raise ValueError(f"{name}: label_space must be 'local' or 'imagenet', got {label_space!r}")
    base = resolve_root(name, root, layout)
    if folder_of and (base / folder_of).is_dir():
        base = base / folder_of
    dirs = subdirs(base)
    wnid_dirs = [d for d in dirs if WNID.match(d)]
    index_dirs = sorted((d for d in dirs if d.isdigit() and int(d) < 1000), key=int)
    reference = imagenet_classes(classes) if classes is not None else None
    if wnid_dirs:
        class_dirs = wnid_dirs
        indices = None
        if reference is not None:
            indices = positions_in(wnid_dirs, reference, name, "the ImageNet class list")
        names = class_dirs
    elif index_dirs:
        class_dirs, indices = index_dirs, [int(d) for d in index_dirs]
        names = [reference[i] for i in indices] if reference else index_dirs
    else:
        raise FileNotFoundError(f"{name}: {base} has no class folders (wnids n######## or indices 0..999). "
                                f"Expected layout: {layout}")
    if label_space == "imagenet" and indices is None:
        raise ValueError(f"{name}: label_space='imagenet' needs classes=PATH (an ImageNet train folder or a "
                         "wnid list file) to map its class folders to the 1000 ImageNet indices")
    samples = scan(base, class_dirs)
    if label_space == "imagenet":
        samples = [(p, indices[label]) for p, label in samples]
    ds = FolderDataset(samples, names, name=name, split="test", size=size, crop_fraction=crop_fraction,
                       num_classes=1000 if label_space == "imagenet" else len(class_dirs))
    #: the 1000-class ImageNet index of each local class (None without a class list for wnid folders)
    ds.imagenet_indices = indices
    return ds


def _register_shift_set(name: str, description: str, layout: str, folder_of: str | None = None) -> None:
    def factory(root: str | None = None, split: str = "test", size: int | None = 224,
                crop_fraction: float = CROP_FRACTION, classes: str | None = None,
                label_space: str = "local") -> FolderDataset:
        return _shift_set(name, root, split, layout, size, crop_fraction, classes, label_space, folder_of)

    factory.__doc__ = f"{description}. Layout: {layout}."
    DATASETS.register(name, targets=("label",), needs_root=True, splits=("test",), layout=layout,
                      description=description)(factory)


_register_shift_set("imagenet-r", "ImageNet-R renditions, 200 classes (Hendrycks et al. 2021)",
                    "ROOT/<wnid>/<image> (the imagenet-r folder)")
_register_shift_set("imagenet-a", "ImageNet-A natural adversarial examples, 200 classes (Hendrycks 2021)",
                    "ROOT/<wnid>/<image> (the imagenet-a folder)")
_register_shift_set("imagenet-sketch", "ImageNet-Sketch, 1000 classes (Wang et al. 2019)",
                    "ROOT/[sketch/]<wnid>/<image>", folder_of="sketch")
_register_shift_set("imagenet-v2", "ImageNetV2 matched-frequency, 1000 classes (Recht et al. 2019)",
                    "ROOT/<class index 0..999>/<image> (imagenetv2-matched-frequency-format-val)")

LAYOUT_INC = "ROOT/<corruption>/<severity 1..5>/<wnid>/<image> (as released by Hendrycks & Dietterich 2019)"


@DATASETS.register("imagenet-c", targets=("label",), needs_root=True, splits=("test",), layout=LAYOUT_INC,
                   description="ImageNet-C, read back: corruption=NAME, severity=1..5")
def imagenet_c(root: str | None = None, split: str = "test", corruption: str | None = None, severity: int = 3,
               size: int | None = 224, crop_fraction: float = 1.0,
               class_names: list[str] | None = None) -> FolderDataset:
    """ImageNet-C images are already 224x224 centre crops, so the default ``crop_fraction`` is 1.

    Labels: a class folder's position in ``class_names`` (else in ``class_names`` of ROOT/manifest.json, as
    written by ``robustssl corrupt``), else its number when folders are integers, else its sorted position
    (the wnid order for ImageNet).
    """
    if split != "test":
        raise ValueError(f"imagenet-c: unknown split {split!r}; accepted: test")
    base = resolve_root("imagenet-c", root, LAYOUT_INC)
    available = subdirs(base)
    if corruption not in available:
        raise ValueError(f"imagenet-c: corruption={corruption!r} is not in {base}; available: "
                         f"{', '.join(available) or 'none'}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"imagenet-c: severity must be one of 1..5, got {severity!r}")
    folder = base / corruption / str(severity)
    if not folder.is_dir():
        raise FileNotFoundError(f"imagenet-c: {folder} does not exist. Expected layout: {LAYOUT_INC}")
    names = class_names if class_names is not None else manifest_class_names(base)
    dirs, labels = class_folders(folder, names)
    samples = [(path, labels[local]) for path, local in scan(folder, dirs)]
    ds = FolderDataset(samples, names or dirs, name="imagenet-c", split="test", size=size,
                       crop_fraction=crop_fraction, num_classes=len(names) if names else max(labels) + 1)
    ds.corruption, ds.severity = corruption, severity
    return ds
