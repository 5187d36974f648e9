"""Corruptions for dense tasks: corrupt a sample's (or batch's) ``image`` and nothing else.

Corruptions are photometric or local pixel operations that keep the scene's geometry, so a segmentation
``mask``, a ``depth`` map and a ``label`` stay valid targets for the corrupted image and are passed through
unchanged (the very same tensors, not copies).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from robustssl.data.base import VisionDataset
from robustssl.threats.corruptions.api import corrupt, derive_seed
from robustssl.threats.corruptions.base import CORRUPTIONS, check_severity


def corrupt_sample(sample: Mapping[str, torch.Tensor], name: str, severity: int,
                   generator: torch.Generator | None = None, params: str = "auto") -> dict[str, torch.Tensor]:
    """A new dict equal to ``sample`` with ``image`` (``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1]) corrupted;
    every other key (``label``, ``mask``, ``depth``, ...) is carried over untouched."""
    if "image" not in sample:
        raise KeyError("corrupt_sample: the sample has no 'image' key; it has: "
                       f"{', '.join(sample) or 'none'}")
    out = dict(sample)
    out["image"] = corrupt(sample["image"], name, severity, generator, params)
    return out


class CorruptedDataset(VisionDataset):
    """A view of ``dataset`` whose images are corrupted on access; targets pass through.

    Sample ``i`` is corrupted with a generator seeded from ``(seed, name, severity, i)``, so it is the same on
    every access and independent of batching and order.
    """

    def __init__(self, dataset: VisionDataset, name: str, severity: int, *, seed: int = 0,
                 params: str = "auto"):
        CORRUPTIONS.get(name)
        check_severity(severity)
        self.dataset, self.corruption, self.severity = dataset, name, severity
        self.seed, self.params = seed, params
        for attr in ("split", "targets", "num_classes", "class_names", "image_shape", "depth_range"):
            setattr(self, attr, getattr(dataset, attr))
        self.name = f"{dataset.name}-{name}-{severity}"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index) % len(self) if -len(self) <= int(index) < len(self) else int(index)
        seed = derive_seed(self.seed, self.corruption, self.severity, index)
        generator = torch.Generator().manual_seed(seed)
        return corrupt_sample(self.dataset[index], self.corruption, self.severity, generator, self.params)
