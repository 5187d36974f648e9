"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), as 32x32 RGB.

The split is fixed: a stratified, seeded partition into train / val / test (70% / 10% / 20%), so every run and
every machine sees the same images in each split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustssl.data.base import DATASETS, TensorDataset

SPLITS = ("train", "val", "test")
FRACTIONS = {"val": 0.1, "test": 0.2}
SPLIT_SEED = 0
#: sklearn's digits store ink intensity as integers 0..16
MAX_INTENSITY = 16.0


def split_indices(labels: torch.Tensor, split: str, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Indices of ``split`` in a stratified partition of ``labels`` (per class: shuffle, then cut)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * FRACTIONS["test"])
        n_val = round(len(idx) * FRACTIONS["val"])
        part = {"test": idx[:n_test], "val": idx[n_test:n_test + n_val], "train": idx[n_test + n_val:]}[split]
        chosen.append(part)
    return torch.sort(torch.cat(chosen)).values


@DATASETS.register("digits", targets=("label",), needs_root=False, splits=SPLITS, num_classes=10,
                   description="scikit-learn handwritten digits, 8x8 upsampled to 32x32 RGB (offline)")
def digits(root: str | None = None, split: str = "test", size: int = 32) -> TensorDataset:
    """Digits resized (bilinear) to ``size`` x ``size``, grey replicated to 3 channels, in [0, 1]."""
    from sklearn.datasets import load_digits

    if not isinstance(size, int) or not 8 <= size <= 512:
        raise ValueError(f"digits: size must be an int in [8, 512], got {size!r}")
    if split not in SPLITS:
        raise ValueError(f"digits: unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(MAX_INTENSITY).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    idx = split_indices(labels, split)
    images = F.interpolate(images[idx], size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
    return TensorDataset(images, name="digits", split=split, num_classes=10,
                         class_names=[str(d) for d in range(10)], label=labels[idx])
