"""Datasets (``load(name, root=None, split=...)``) and SSL views. See ``base.py`` for the sample contract."""

from robustssl.data.base import DATASETS, IGNORE_INDEX, TARGET_KEYS, TensorDataset, VisionDataset, collate

__all__ = ["DATASETS", "IGNORE_INDEX", "TARGET_KEYS", "TensorDataset", "VisionDataset", "collate"]
