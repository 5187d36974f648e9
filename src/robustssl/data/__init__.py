"""Datasets (``load(name, root=None, split=...)``) and SSL views. See ``base.py`` for the sample contract.

>>> import robustssl as rs
>>> ds = rs.data.load("scenes", split="test", n=64)            # synthetic: no root needed
>>> ds.targets
('label', 'mask', 'depth')
>>> rs.data.names()[:3]
['cifar10', 'cifar10-c', 'cifar10.1']
"""

from __future__ import annotations

from typing import Any

from robustssl.data import cifar, digits, folders, nyu, scenes, segfolder, stl10  # noqa: F401  (registration)
from robustssl.data.base import DATASETS, IGNORE_INDEX, TARGET_KEYS, TensorDataset, VisionDataset, collate
from robustssl.data.files import CorruptFileError
from robustssl.data.views import SimCLRViews, TwoViews
from robustssl.registry import UnknownNameError


def names(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a glob ``pattern``, sorted."""
    return DATASETS.names(pattern)


def load(name: str, root: str | None = None, split: str = "test", **kw: Any) -> VisionDataset:
    """Build dataset ``name`` for ``split``; ``root`` is the local folder for real datasets (``~`` expands).

    Extra keywords go to the dataset (e.g. ``size=``, ``n=``, ``seed=`` for scenes; ``corruption=``,
    ``severity=`` for the -C sets). Unknown names list the registered ones, unknown splits the accepted ones.
    """
    factory = DATASETS.get(name)
    meta = DATASETS.meta(name)
    splits = meta.get("splits")
    if splits is not None and split not in splits:
        raise ValueError(f"dataset {name!r}: unknown split {split!r}; accepted: {', '.join(splits)}")
    if root is None and meta.get("needs_root"):
        raise ValueError(f"dataset {name!r} reads local files: pass root=DIR (--root DIR). Expected layout: "
                         f"{meta.get('layout', '?')}")
    return factory(root=None if root is None else str(root), split=split, **kw)


def info(name: str, root: str | None = None, split: str | None = None, **kw: Any) -> dict[str, Any]:
    """What ``name`` is: its registry metadata and, when it can be loaded (root given or not needed), the
    size, image shape, targets and class count of ``split`` (default: its first accepted split)."""
    meta = DATASETS.meta(name)
    out: dict[str, Any] = {"name": name, "description": meta.get("description", ""),
                           "targets": list(meta.get("targets", ())),
                           "needs_root": bool(meta.get("needs_root")),
                           "splits": list(meta["splits"]) if meta.get("splits") else None,
                           "layout": meta.get("layout")}
    if root is None and meta.get("needs_root"):
        return out
    chosen = split or ("test" if not out["splits"] or "test" in out["splits"] else out["splits"][0])
    ds = load(name, root=root, split=chosen, **kw)
    out.update(ds.info())
    out["class_names"] = ds.class_names
    return out


__all__ = ["DATASETS", "IGNORE_INDEX", "TARGET_KEYS", "CorruptFileError", "SimCLRViews", "TensorDataset",
           "TwoViews", "UnknownNameError", "VisionDataset", "collate", "info", "load", "names"]
