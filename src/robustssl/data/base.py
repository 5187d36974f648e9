"""The dataset contract.

A dataset yields **samples**: dicts with ``image`` (``(3, H, W)`` float32 in [0, 1]) and, where it has them,
``label`` (int64 scalar), ``mask`` (``(H, W)`` int64, 255 = ignore) and ``depth`` (``(H, W)`` float32 metres,
0 = invalid). ``targets`` says which of those keys it carries. ``batches`` yields the same dicts batched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from robustssl.registry import Registry

DATASETS: Registry[VisionDataset] = Registry("dataset")
TARGET_KEYS = ("label", "mask", "depth")
IGNORE_INDEX = 255


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of samples into a batch dict (every sample must carry the same keys)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = samples[0].keys()
    out = {}
    for k in keys:
        values = [torch.as_tensor(s[k]) for s in samples]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch {k!r}: samples have different shapes {sorted(shapes)[:4]}; "
                             "load the dataset with a fixed size (e.g. size=224) to batch it")
        out[k] = torch.stack(values)
    return out


class VisionDataset(Dataset):
    """Base class. Subclasses set the attributes below and implement ``__len__``/``__getitem__``;
    in-memory datasets also override ``batches`` with tensor indexing."""

    name: str = "dataset"
    split: str = "test"
    targets: tuple[str, ...] = ()
    num_classes: int | None = None
    class_names: list[str] | None = None
    #: number of segmentation classes in ``mask`` (may differ from ``num_classes``, e.g. + background)
    mask_classes: int | None = None
    #: (C, H, W) when every image has the same shape, else None
    image_shape: tuple[int, int, int] | None = None
    #: (min, max) metres of valid depth, for depth heads' bins
    depth_range: tuple[float, float] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, indices: Sequence[int] | None = None,
                num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batched samples; ``shuffle`` draws the order from ``generator``; ``indices`` picks a subset."""
        order = self._order(batch_size, shuffle, generator, indices)
        if num_workers > 0:
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(self, order.tolist()), batch_size=batch_size, collate_fn=collate,
                num_workers=num_workers, drop_last=drop_last)
            yield from loader
            return
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                break
            yield collate([self[int(i)] for i in chunk])

    def _order(self, batch_size: int, shuffle: bool, generator: torch.Generator | None,
               indices: Sequence[int] | None) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = torch.as_tensor(list(indices) if indices is not None else range(len(self)), dtype=torch.long)
        if shuffle:
            order = order[torch.randperm(len(order), generator=generator)]
        return order

    def require(self, *keys: str, purpose: str = "") -> None:
        """Raise unless this dataset carries every target in ``keys``."""
        missing = [k for k in keys if k not in self.targets]
        if missing:
            why = f" for {purpose}" if purpose else ""
            raise ValueError(f"dataset {self.name!r} ({self.split}) has no {', '.join(missing)} "
                             f"targets{why}; "
                             f"it carries: {', '.join(self.targets) or 'none'}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, size={len(self)}, "
                f"image_shape={self.image_shape}, targets={self.targets})")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "size": len(self), "image_shape": self.image_shape,
                "targets": list(self.targets), "num_classes": self.num_classes}


def _widen(key: str, value: torch.Tensor) -> torch.Tensor:
    """Targets may be stored compactly (uint8 masks); samples carry int64 labels/masks, float32 depth."""
    if key in ("label", "mask") and value.dtype != torch.int64:
        return value.long()
    if key == "depth" and value.dtype != torch.float32:
        return value.float()
    return value


class TensorDataset(VisionDataset):
    """An in-memory dataset: ``images`` ``(N, 3, H, W)`` float in [0, 1] (or uint8, scaled on access) and
    target tensors with a leading ``N`` (masks may be stored as uint8 and depth as float16: they are widened
    to int64 / float32 on access). Batching is one indexing operation."""

    def __init__(self, images: torch.Tensor, *, name: str, split: str, num_classes: int | None = None,
                 class_names: list[str] | None = None, depth_range: tuple[float, float] | None = None,
                 **targets: torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"{name}: images must be (N, C, H, W), got {tuple(images.shape)}")
        unknown = set(targets) - set(TARGET_KEYS)
        if unknown:
            raise ValueError(f"{name}: unknown target keys {sorted(unknown)}; "
                             f"accepted: {', '.join(TARGET_KEYS)}")
        for key, value in targets.items():
            if value.shape[0] != images.shape[0]:
                raise ValueError(f"{name}: {key} has {value.shape[0]} entries but there are "
                                 f"{images.shape[0]} images")
        self.images = images
        self.tensors = dict(targets)
        self.name, self.split = name, split
        self.targets = tuple(k for k in TARGET_KEYS if k in targets)
        self.num_classes, self.class_names, self.depth_range = num_classes, class_names, depth_range
        self.image_shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def _images(self, index: torch.Tensor | int) -> torch.Tensor:
        img = self.images[index]
        return img.float().div_(255) if img.dtype == torch.uint8 else img

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        out = {"image": self._images(index)}
        out.update({k: _widen(k, v[index]) for k, v in self.tensors.items()})
        return out

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, indices: Sequence[int] | None = None,
                num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order(batch_size, shuffle, generator, indices)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                break
            out = {"image": self._images(chunk)}
            out.update({k: _widen(k, v[chunk]) for k, v in self.tensors.items()})
            yield out
