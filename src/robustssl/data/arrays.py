"""Datasets over uint8 NumPy arrays (in memory or memory-mapped): CIFAR, STL-10, CIFAR-10.1, CIFAR-10-C.

Images stay uint8 ``(N, H, W, 3)`` on the NumPy side (a memory map of STL-10's 2.7 GB unlabeled file costs
nothing until read) and become float ``(3, H, W)`` in [0, 1] only when a sample or batch is taken.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from robustssl.data.base import VisionDataset


class ArrayDataset(VisionDataset):
    """``images``: uint8 array ``(N, H, W, 3)``; ``labels``: int array ``(N,)`` or None (unlabeled)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, *, name: str, split: str,
                 num_classes: int | None = None, class_names: list[str] | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{name}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{name}: {len(labels)} labels for {len(images)} images")
        self.array = images
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.name, self.split = name, split
        self.targets = () if labels is None else ("label",)
        self.num_classes, self.class_names = num_classes, class_names
        self.image_shape = (3, int(images.shape[1]), int(images.shape[2]))

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def _take(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        # Sorted reads keep memory-mapped access sequential; the result is put back in the asked order.
        order = np.argsort(index, kind="stable")
        raw = np.empty((len(index),) + self.array.shape[1:], dtype=np.uint8)
        raw[order] = self.array[index[order]]
        images = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255)
        out = {"image": images}
        if self.labels is not None:
            out["label"] = self.labels[torch.from_numpy(index)]
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        return {k: v[0] for k, v in self._take(np.array([index % len(self)])).items()}

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, indices: Sequence[int] | None = None,
                num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order(batch_size, shuffle, generator, indices).numpy()
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                break
            yield self._take(chunk)


def held_out(n: int, n_val: int, split: str, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``split`` ("train" or "val") when a fixed, seeded ``n_val`` of ``n`` are held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    part = perm[:n_val] if split == "val" else perm[n_val:]
    return np.sort(part)
