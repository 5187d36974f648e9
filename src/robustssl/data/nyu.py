"""``nyu``: NYU Depth v2, the labeled subset (``nyu_depth_v2_labeled.mat``, Silberman et al. 2012).

The file is MATLAB v7.3, i.e. HDF5, read lazily with h5py. MATLAB stores arrays column-major, so h5py sees
them transposed: ``images`` is ``(N, 3, W, H)`` uint8, ``depths`` ``(N, W, H)`` float metres and ``labels``
``(N, W, H)`` raw class ids (0 = unlabeled, 1..894). Each sample is transposed back to ``(3, H, W)``.

Splits: with ``split_file`` (or ``ROOT/splits.mat``) the standard 795 / 654 train / test split is read from
its 1-based ``trainNdxs`` / ``testNdxs``; without it a documented fixed split is used instead: a permutation
of the N images drawn with seed 0, the first ``round(N * 795 / 1449)`` for train, the rest for test. ``val``
is a fixed, seeded 10% of train (``train`` is the other 90%, ``trainval`` all of it).

Segmentation masks need a class mapping (``class_map``: a .npy or .txt integer array indexed by raw id, giving
a class index or 255 = ignore, e.g. the common 40- or 13-class mappings), because 894 raw ids do not fit the
contract's 255 = ignore convention; without one the dataset carries ``depth`` only.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from robustssl.data.base import DATASETS, IGNORE_INDEX, VisionDataset
from robustssl.data.files import CorruptFileError, find_file, resolve_root

FILE = "nyu_depth_v2_labeled.mat"
SPLITS = ("train", "val", "test", "trainval")
STANDARD_TRAIN, STANDARD_TOTAL = 795, 1449
DEPTH_RANGE = (0.1, 10.0)
LAYOUT = (f"ROOT/{FILE} (MATLAB v7.3 / HDF5 with keys images, depths, labels) and optionally ROOT/splits.mat "
          "(trainNdxs, testNdxs, 1-based)")


def read_split_file(path: Path, n: int) -> dict[str, np.ndarray]:
    """0-based train/test indices from a ``splits.mat`` (v5 or v7.3) or ``.npz`` with trainNdxs/testNdxs."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: np.asarray(z[k]) for k in z.files}
        elif h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                raw = {k: np.asarray(f[k]) for k in f.keys()}
        else:
            import scipy.io  # deferred: costs most of a second to import and only split files need it

            raw = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise CorruptFileError(path, f"cannot read split file ({exc})") from exc
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in raw:
            found = sorted(k for k in raw if not k.startswith("__"))
            raise CorruptFileError(path, f"missing key {key!r}; found {found}")
        idx = np.asarray(raw[key]).astype(np.int64).ravel() - 1
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise CorruptFileError(path, f"{key} must be 1-based indices in 1..{n}, got range "
                                         f"[{idx.min() + 1}, {idx.max() + 1}]")
        out[split] = idx
    return out


def default_split(n: int) -> dict[str, np.ndarray]:
    """The documented fallback split: seed-0 permutation, ``round(n * 795 / 1449)`` train images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    n_train = round(n * STANDARD_TRAIN / STANDARD_TOTAL)
    return {"train": np.sort(perm[:n_train]), "test": np.sort(perm[n_train:])}


def read_class_map(path: str | Path) -> np.ndarray:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"nyu: class_map {path} does not exist; expected a .npy or .txt array of "
                                "class indices indexed by raw NYU label id (255 = ignore)")
    try:
        if path.suffix == ".npy":
            table = np.load(path, allow_pickle=False)
        else:
            table = np.loadtxt(path, dtype=np.int64)
    except (ValueError, OSError) as exc:
        raise CorruptFileError(path, f"cannot read class map ({exc})") from exc
    table = np.asarray(table).astype(np.int64).ravel()
    table = np.where(table < 0, IGNORE_INDEX, table)
    if table.max(initial=0) > IGNORE_INDEX:
        raise CorruptFileError(path, f"class indices must be < {IGNORE_INDEX} (or {IGNORE_INDEX} = ignore)")
    return table


class NYUDepthV2(VisionDataset):
    """Lazily read NYU Depth v2 labeled samples: ``image``, ``depth`` and (with a class map) ``mask``."""

    name = "nyu"

    def __init__(self, path: Path, indices: np.ndarray, split: str, size: int | tuple[int, int] | None = None,
                 class_map: np.ndarray | None = None):
        self.path, self.indices, self.split = path, indices, split
        self.size = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
        self.class_map = class_map
        self.targets = ("mask", "depth") if class_map is not None else ("depth",)
        self.depth_range = DEPTH_RANGE
        self._file: h5py.File | None = None
        self._pid = -1
        with open_nyu(path) as f:
            shape = f["images"].shape
        self.image_shape = (3, *self.size) if self.size else (3, int(shape[3]), int(shape[2]))
        if class_map is not None:
            labels = class_map[class_map != IGNORE_INDEX]
            self.mask_classes = int(labels.max()) + 1 if len(labels) else 0

    def _open(self) -> h5py.File:
        # h5py handles must not cross fork(): DataLoader workers reopen the file.
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open_nyu(self.path), os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"nyu: index {index} out of range for {len(self)} samples")
        f, i = self._open(), int(self.indices[index])
        try:
            image = torch.from_numpy(np.asarray(f["images"][i])).permute(0, 2, 1).float().div_(255)
            depth = torch.from_numpy(np.asarray(f["depths"][i], dtype=np.float32)).t()
            raw = np.asarray(f["labels"][i]).T if self.class_map is not None else None
        except (OSError, ValueError) as exc:
            raise CorruptFileError(self.path, f"cannot read sample {i} ({exc})") from exc
        depth = torch.nan_to_num(depth, nan=0.0).clamp_(min=0.0)
        out = {"image": image, "depth": depth}
        if raw is not None:
            if raw.max(initial=0) >= len(self.class_map):
                raise CorruptFileError(self.path, f"sample {i} has label id {raw.max()} but class_map has "
                                                  f"only {len(self.class_map)} entries")
            out["mask"] = torch.from_numpy(self.class_map[raw.astype(np.int64)])
        if self.size and tuple(image.shape[1:]) != self.size:
            out["image"] = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False,
                                         antialias=True)[0].clamp_(0, 1)
            # Nearest keeps depth values real (no blending across object boundaries) and labels integral.
            out["depth"] = F.interpolate(depth[None, None], size=self.size, mode="nearest-exact")[0, 0]
            if "mask" in out:
                out["mask"] = F.interpolate(out["mask"][None, None].float(), size=self.size,
                                            mode="nearest-exact")[0, 0].long()
        return out


def open_nyu(path: Path) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptFileError(path, f"not a readable MATLAB v7.3 / HDF5 file ({exc})") from exc
    missing = [k for k in ("images", "depths", "labels") if k not in f]
    if missing:
        f.close()
        raise CorruptFileError(path, f"missing keys {missing}; expected images, depths, labels")
    n, c, w, h = (f["images"].shape + (0, 0, 0, 0))[:4] if f["images"].ndim == 4 else (0, 0, 0, 0)
    if f["images"].ndim != 4 or c != 3 or f["depths"].shape != (n, w, h) or f["labels"].shape != (n, w, h):
        shapes = {k: f[k].shape for k in ("images", "depths", "labels")}
        f.close()
        raise CorruptFileError(path, f"unexpected shapes {shapes}; expected images (N, 3, W, H), depths and "
                                     "labels (N, W, H) as h5py reads the official file")
    return f


@DATASETS.register("nyu", targets=("depth", "mask"), needs_root=True, splits=SPLITS, layout=LAYOUT,
                   description="NYU Depth v2 labeled .mat (depth; mask with class_map=)")
def nyu(root: str | None = None, split: str = "test", split_file: str | None = None,
        size: int | tuple[int, int] | None = None, class_map: str | None = None) -> NYUDepthV2:
    if split not in SPLITS:
        raise ValueError(f"nyu: unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    base = resolve_root("nyu", root, LAYOUT)
    path = find_file("nyu", [base / FILE], LAYOUT)
    with open_nyu(path) as f:
        n = f["images"].shape[0]
    split_path = Path(split_file).expanduser() if split_file else base / "splits.mat"
    if split_file and not split_path.is_file():
        raise FileNotFoundError(f"nyu: split_file {split_path} does not exist")
    parts = read_split_file(split_path, n) if split_path.is_file() else default_split(n)
    if split == "test":
        indices = parts["test"]
    else:
        train = parts["train"]
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).numpy()
        n_val = len(train) // 10
        chosen = {"val": perm[:n_val], "train": perm[n_val:], "trainval": perm}[split]
        indices = np.sort(train[chosen])
    table = read_class_map(class_map) if class_map is not None else None
    return NYUDepthV2(path, indices, split, size, table)
