"""Every registered dataset: metadata is complete, loading obeys the sample contract, bad names/splits/roots
give errors that list what is accepted."""

from __future__ import annotations

import pytest
import torch

from robustssl import data
from robustssl.data import DATASETS, IGNORE_INDEX, TARGET_KEYS, TensorDataset, UnknownNameError
from robustssl.data.digits import split_indices

SMALL = {"scenes": dict(n=6), "scenes-shift": dict(n=6), "digits": {}}


@pytest.mark.parametrize("name", DATASETS.names())
def test_metadata_complete(name):
    meta = DATASETS.meta(name)
    assert meta["description"] and isinstance(meta["needs_root"], bool)
    assert meta["targets"] and set(meta["targets"]) <= set(TARGET_KEYS)
    assert meta["splits"] is None or "test" in meta["splits"] or "val" in meta["splits"]
    if meta["needs_root"]:
        assert meta["layout"]


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if DATASETS.meta(n)["needs_root"]])
def test_rooted_datasets_say_where_they_looked(name, tmp_path):
    with pytest.raises(ValueError, match="pass root=DIR.*Expected layout"):
        data.load(name, split=(DATASETS.meta(name)["splits"] or ["test"])[0])
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*Expected layout"):
        data.load(name, root=str(missing), split=(DATASETS.meta(name)["splits"] or ["test"])[0])


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if not DATASETS.meta(n)["needs_root"]])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_root_free_datasets_obey_the_sample_contract(name, split):
    ds = data.load(name, split=split, **SMALL.get(name, {}))
    assert ds.split == split and len(ds) > 0 and set(ds.targets) == set(DATASETS.meta(name)["targets"])
    sample = ds[0]
    assert set(sample) == {"image", *ds.targets}
    image = sample["image"]
    assert image.dtype == torch.float32 and image.dim() == 3 and image.shape[0] == 3
    assert tuple(image.shape) == ds.image_shape and 0 <= image.min() and image.max() <= 1
    if "label" in sample:
        assert sample["label"].dtype == torch.int64 and 0 <= int(sample["label"]) < ds.num_classes
    if "mask" in sample:
        m = sample["mask"]
        assert m.dtype == torch.int64 and m.shape == image.shape[1:]
        assert ((m >= 0) & ((m < ds.mask_classes) | (m == IGNORE_INDEX))).all()
    if "depth" in sample:
        d = sample["depth"]
        assert d.dtype == torch.float32 and d.shape == image.shape[1:] and (d >= 0).all()
    batch = next(ds.batches(4))
    assert torch.equal(batch["image"][0], image)
    assert all(batch[k].shape[0] == min(4, len(ds)) for k in batch)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError, match="Valid dataset names: .*scenes") as exc:
        data.load("scene")
    assert "'scenes'" in str(exc.value)


@pytest.mark.parametrize("name", ["scenes", "digits", "cifar10", "stl10", "nyu"])
def test_unknown_split_lists_accepted(name):
    with pytest.raises(ValueError, match="unknown split 'holdout'; accepted: .*test"):
        data.load(name, root="/tmp", split="holdout")


def test_info_without_root_and_with_split():
    meta_only = data.info("cifar10")
    assert meta_only["needs_root"] and "size" not in meta_only and meta_only["targets"] == ["label"]
    full = data.info("scenes", split="val", n=5, size=40)
    assert full["size"] == 5 and full["image_shape"] == (3, 40, 40)
    assert full["targets"] == ["label", "mask", "depth"]
    assert full["num_classes"] == 6 and full["class_names"][0] == "circle"
    assert data.names("cifar*") == ["cifar10", "cifar10-c", "cifar10.1", "cifar100", "cifar100-c"]


def test_digits_split_is_stratified_disjoint_and_complete():
    from sklearn.datasets import load_digits

    labels = torch.as_tensor(load_digits().target)
    parts = {s: split_indices(labels, s) for s in ("train", "val", "test")}
    joined = torch.cat(list(parts.values()))
    assert len(joined) == len(labels) == 1797 and len(torch.unique(joined)) == 1797
    for cls in range(10):
        n_cls = int((labels == cls).sum())
        assert abs(int((labels[parts["test"]] == cls).sum()) - 0.2 * n_cls) <= 1
    assert torch.equal(split_indices(labels, "val"), parts["val"])


def test_digits_pixels_come_from_sklearn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = data.load("digits", split="test", size=8)
    idx = split_indices(torch.as_tensor(bunch.target), "test")
    first = int(idx[0])
    # size 8 is the native resolution: bilinear resize to the same size is the identity
    assert torch.allclose(ds[0]["image"][0], torch.as_tensor(bunch.images[first], dtype=torch.float32) / 16,
                          atol=1e-6)
    assert torch.equal(ds[0]["image"][0], ds[0]["image"][2])
    assert int(ds[0]["label"]) == int(bunch.target[first])


def test_tensor_dataset_widens_compact_targets():
    ds = TensorDataset(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), name="t", split="test",
                       mask=torch.ones(3, 4, 4, dtype=torch.uint8),
                       depth=torch.ones(3, 4, 4, dtype=torch.float16))
    s = ds[1]
    assert s["mask"].dtype == torch.int64 and s["depth"].dtype == torch.float32
    b = next(ds.batches(2))
    assert b["mask"].dtype == torch.int64 and b["image"].dtype == torch.float32


def test_collate_explains_shape_mismatch():
    with pytest.raises(ValueError, match="different shapes.*size="):
        data.collate([{"image": torch.zeros(3, 4, 4)}, {"image": torch.zeros(3, 5, 4)}])
