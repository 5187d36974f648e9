"""Real dataset formats: tiny files written in each official layout are read back pixel-exactly, and missing,
truncated or malicious files give errors that name the file."""

from __future__ import annotations

import io
import json
import os
import pickle

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from robustssl import data
from robustssl.data import CorruptFileError
from robustssl.data.cifar import RestrictedUnpickler

RNG = np.random.default_rng(0)


def _cifar_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3072) rows and the same images as (n, 32, 32, 3) for comparison."""
    images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    return rows, images


def _dump(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = {}
    for i in range(1, 6):
        rows, images = _cifar_rows(20)
        labels = list(RNG.integers(0, 10, 20))
        # Python 2 pickles decode with bytes keys; mimic them.
        _dump(folder / f"data_batch_{i}", {b"data": rows, b"labels": [int(v) for v in labels]})
        expected[f"data_batch_{i}"] = (images, labels)
    rows, images = _cifar_rows(30)
    labels = [int(v) for v in RNG.integers(0, 10, 30)]
    _dump(folder / "test_batch", {b"data": rows, b"labels": labels}, protocol=4)
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in "abcdefghij"]})
    expected["test_batch"] = (images, labels)
    return tmp_path, expected


def test_cifar10_reads_pixels_and_labels_exactly(cifar10_root):
    root, expected = cifar10_root
    ds = data.load("cifar10", root=str(root), split="test")
    images, labels = expected["test_batch"]
    assert len(ds) == 30 and ds.image_shape == (3, 32, 32) and ds.class_names == list("abcdefghij")
    batch = next(ds.batches(30))
    assert torch.equal(batch["image"], torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert batch["label"].tolist() == labels
    sample = ds[7]
    assert torch.equal(sample["image"], batch["image"][7]) and int(sample["label"]) == labels[7]


def test_cifar10_val_is_a_fixed_disjoint_part_of_train(cifar10_root):
    root, expected = cifar10_root
    full = torch.cat([torch.from_numpy(expected[f"data_batch_{i}"][0]) for i in range(1, 6)])
    keys = {bytes(img.numpy().tobytes()) for img in full}
    sets = {}
    for split in ("train", "val", "trainval"):
        ds = data.load("cifar10", root=str(root), split=split)
        imgs = (next(ds.batches(len(ds)))["image"] * 255).round().byte().permute(0, 2, 3, 1)
        sets[split] = {bytes(i.numpy().tobytes()) for i in imgs}
    assert len(sets["trainval"]) == 100 and sets["trainval"] == keys
    assert len(sets["val"]) == 10 and not sets["val"] & sets["train"]
    assert sets["val"] | sets["train"] == keys
    again = data.load("cifar10", root=str(root), split="val")
    assert torch.equal(next(again.batches(10))["image"], next(data.load("cifar10", root=str(root),
                                                                         split="val").batches(10))["image"])


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows, images = _cifar_rows(12)
    fine, coarse = list(range(0, 96, 8)), list(range(12))
    for name in ("train", "test"):
        _dump(folder / name, {"data": rows, "fine_labels": fine, "coarse_labels": coarse}, protocol=5)
    _dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                            "coarse_label_names": [f"c{i}" for i in range(20)]})
    ds = data.load("cifar100", root=str(tmp_path), split="test")
    assert ds.num_classes == 100 and next(ds.batches(12))["label"].tolist() == fine
    coarse_ds = data.load("cifar100", root=str(tmp_path), split="test", label="coarse")
    assert coarse_ds.num_classes == 20 and coarse_ds.class_names[3] == "c3"
    assert next(coarse_ds.batches(12))["label"].tolist() == coarse


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _dump(folder / "test_batch", {"data": _Evil(), "labels": []})
    with pytest.raises(CorruptFileError, match=r"test_batch.*refusing to load global (posix|os|nt)\.system"):
        data.load("cifar10", root=str(tmp_path), split="test")


def test_restricted_unpickler_allows_arrays_only():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 4, 5):
        out = RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": arr}, protocol=protocol))).load()
        assert np.array_equal(out["a"], arr)


def test_cifar_truncated_and_missing_files_are_named(cifar10_root):
    root, _ = cifar10_root
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptFileError, match="test_batch.*truncated"):
        data.load("cifar10", root=str(root), split="test")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load("cifar10", root=str(root), split="train")
    with pytest.raises(FileNotFoundError, match="does not exist.*Expected layout"):
        data.load("cifar10", root=str(root / "nope"))


def test_cifar_wrong_shape_is_reported(tmp_path):
    _dump(tmp_path / "test_batch", {"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4})
    with pytest.raises(CorruptFileError, match=r"test_batch.*\(N, 3072\)"):
        data.load("cifar10", root=str(tmp_path))


def test_cifar10_1_and_cifar10_c(tmp_path):
    images = RNG.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "cifar10.1_v6_data.npy", images)
    np.save(tmp_path / "cifar10.1_v6_labels.npy", np.arange(10))
    ds = data.load("cifar10.1", root=str(tmp_path))
    assert torch.equal(ds[3]["image"], torch.from_numpy(images[3]).permute(2, 0, 1).float() / 255)
    assert int(ds[3]["label"]) == 3

    c_root = tmp_path / "c"
    c_root.mkdir()
    # severity s of image i has every pixel equal to 10*s + i: easy to check the slicing.
    stacked = np.stack([np.full((32, 32, 3), 10 * s + i, np.uint8) for s in range(1, 6) for i in range(4)])
    np.save(c_root / "fog.npy", stacked)
    np.save(c_root / "labels.npy", np.tile(np.array([3, 1, 4, 1]), 5))
    for severity in (1, 3, 5):
        ds = data.load("cifar10-c", root=str(c_root), corruption="fog", severity=severity)
        batch = next(ds.batches(4))
        assert len(ds) == 4 and batch["label"].tolist() == [3, 1, 4, 1]
        expected = torch.tensor([10.0 * severity + i for i in range(4)])
        assert torch.allclose(batch["image"][:, 0, 0, 0] * 255, expected)
    with pytest.raises(ValueError, match="available: fog"):
        data.load("cifar10-c", root=str(c_root), corruption="snow")
    with pytest.raises(ValueError, match="severity"):
        data.load("cifar10-c", root=str(c_root), corruption="fog", severity=6)
    (c_root / "fog.npy").write_bytes((c_root / "fog.npy").read_bytes()[:3000])
    with pytest.raises(CorruptFileError, match="fog.npy"):
        data.load("cifar10-c", root=str(c_root), corruption="fog")


def _stl_bytes(images: np.ndarray) -> bytes:
    """(N, 96, 96, 3) -> the official layout: per image 3 channel planes, each column-major."""
    return images.transpose(0, 3, 2, 1).tobytes()


def test_stl10_column_major_layout_and_unlabeled(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = RNG.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    images[1, 5, 7] = (11, 22, 33)  # row 5, column 7
    (folder / "test_X.bin").write_bytes(_stl_bytes(images))
    (folder / "test_y.bin").write_bytes(bytes([1, 10, 4]))
    (folder / "unlabeled_X.bin").write_bytes(_stl_bytes(images[:2]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    ds = data.load("stl10", root=str(tmp_path), split="test")
    sample = ds[1]
    assert sample["image"][:, 5, 7].mul(255).round().tolist() == [11, 22, 33]
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(next(ds.batches(3))["image"], as_float)
    assert next(ds.batches(3))["label"].tolist() == [0, 9, 3] and ds.class_names[9] == "c9"
    unlabeled = data.load("stl10", root=str(tmp_path), split="unlabeled")
    assert unlabeled.targets == () and set(unlabeled[0]) == {"image"} and len(unlabeled) == 2
    (folder / "test_X.bin").write_bytes(_stl_bytes(images)[:-100])
    with pytest.raises(CorruptFileError, match="test_X.bin.*truncated"):
        data.load("stl10", root=str(tmp_path), split="test")
    (folder / "test_X.bin").write_bytes(_stl_bytes(images))
    (folder / "test_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(CorruptFileError, match="test_y.bin.*2 labels for 3 images"):
        data.load("stl10", root=str(tmp_path), split="test")


def _png(path, size=(20, 16), colour=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_imagefolder_classes_resize_crop_and_workers(tmp_path):
    for split in ("train", "val"):
        _png(tmp_path / split / "dog" / "a.png", colour=(0, 255, 0))
        _png(tmp_path / split / "cat" / "b.png", colour=(255, 0, 0))
        _png(tmp_path / split / "cat" / "c.jpg", colour=(0, 0, 255))
    ds = data.load("imagefolder", root=str(tmp_path), split="val", size=8)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 3 and ds.image_shape == (3, 8, 8)
    batch = next(ds.batches(3, num_workers=2))
    assert batch["image"].shape == (3, 3, 8, 8) and batch["label"].tolist() == [0, 0, 1]
    assert torch.allclose(batch["image"][2].mean((1, 2)), torch.tensor([0.0, 1.0, 0.0]), atol=0.02)
    native = data.load("imagefolder", root=str(tmp_path), split="train")
    assert native[0]["image"].shape == (3, 16, 20) and native.image_shape is None
    with pytest.raises(ValueError, match="unknown split 'test'.*train, val"):
        data.load("imagefolder", root=str(tmp_path), split="test")
    (tmp_path / "val" / "dog" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(CorruptFileError, match="a.png"):
        data.load("imagefolder", root=str(tmp_path), split="val", size=8)[2]


def test_imagefolder_resize_crop_geometry(tmp_path):
    # 40x20 image, left half black, right half white: a centre crop of the resized image keeps the middle.
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 20:] = 255
    (tmp_path / "test" / "a").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "test" / "a" / "x.png")
    ds = data.load("imagefolder", root=str(tmp_path), size=10, crop_fraction=1.0)
    out = ds[0]["image"]
    assert out.shape == (3, 10, 10)
    assert out[:, :, :4].max() < 0.05 and out[:, :, 6:].min() > 0.95


def test_imagenet_shift_sets_expose_imagenet_indices(tmp_path):
    wnids = [f"n{i:08d}" for i in range(1000)]
    class_list = tmp_path / "LOC_synset_mapping.txt"
    class_list.write_text("\n".join(f"{w} name {i}" for i, w in enumerate(wnids)))
    r_root = tmp_path / "imagenet-r"
    for w in (wnids[7], wnids[400], wnids[999]):
        _png(r_root / w / "x.png", size=(12, 12))
    ds = data.load("imagenet-r", root=str(r_root), size=8)
    assert ds.imagenet_indices is None and ds.num_classes == 3
    ds = data.load("imagenet-r", root=str(r_root), size=8, classes=str(class_list))
    assert ds.imagenet_indices == [7, 400, 999]
    as_imagenet = data.load("imagenet-r", root=str(r_root), size=8, classes=str(class_list),
                            label_space="imagenet")
    assert [int(as_imagenet[i]["label"]) for i in range(3)] == [7, 400, 999]
    assert as_imagenet.num_classes == 1000
    with pytest.raises(ValueError, match="needs classes=PATH"):
        data.load("imagenet-r", root=str(r_root), label_space="imagenet")
    sketch_root = tmp_path / "ImageNet-Sketch"
    _png(sketch_root / "sketch" / wnids[3] / "x.png", size=(12, 12))
    sketch = data.load("imagenet-sketch", root=str(sketch_root), size=8, classes=str(class_list))
    assert sketch.imagenet_indices == [3] and len(sketch) == 1
    v2_root = tmp_path / "v2"
    for idx in (2, 10, 100):
        _png(v2_root / str(idx) / "x.png", size=(12, 12))
    v2 = data.load("imagenet-v2", root=str(v2_root), size=8)
    assert v2.imagenet_indices == [2, 10, 100]
    bad = tmp_path / "bad.txt"
    bad.write_text("n00000001\nnotawnid\n")
    with pytest.raises(CorruptFileError, match="1000 distinct wnids"):
        data.load("imagenet-r", root=str(r_root), classes=str(bad))


def test_imagenet_c_layout(tmp_path):
    for sev in (1, 2):
        _png(tmp_path / "fog" / str(sev) / "n00000001" / "a.png", size=(10, 10), colour=(sev * 50, 0, 0))
    ds = data.load("imagenet-c", root=str(tmp_path), corruption="fog", severity=2, size=10)
    assert len(ds) == 1 and ds[0]["image"][0, 0, 0].item() == pytest.approx(100 / 255)
    with pytest.raises(ValueError, match="available: fog"):
        data.load("imagenet-c", root=str(tmp_path), corruption="snow")
    with pytest.raises(FileNotFoundError, match="fog/3"):
        data.load("imagenet-c", root=str(tmp_path), corruption="fog", severity=3)


def _nyu_file(path, n=6, h=8, w=10):
    images = RNG.integers(0, 256, (n, 3, h, w), dtype=np.uint8)
    depths = RNG.uniform(0.5, 9.0, (n, h, w)).astype(np.float32)
    labels = RNG.integers(0, 5, (n, h, w)).astype(np.uint16)
    with h5py.File(path, "w") as f:
        # MATLAB column-major arrays appear transposed to h5py: (N, 3, W, H) and (N, W, H).
        f["images"] = images.transpose(0, 1, 3, 2)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
    return images, depths, labels


def test_nyu_transposed_layout_split_file_and_class_map(tmp_path):
    images, depths, labels = _nyu_file(tmp_path / "nyu_depth_v2_labeled.mat")
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [2], [4], [6]]),
                                               "testNdxs": np.array([[3], [5]])})
    test = data.load("nyu", root=str(tmp_path), split="test")
    assert len(test) == 2 and test.targets == ("depth",) and test.image_shape == (3, 8, 10)
    sample = test[1]  # file index 4 (1-based 5)
    assert torch.equal(sample["image"], torch.from_numpy(images[4]).float() / 255)
    assert torch.equal(sample["depth"], torch.from_numpy(depths[4]))
    assert len(data.load("nyu", root=str(tmp_path), split="trainval")) == 4
    # DataLoader workers receive a pickled copy, which must reopen the HDF5 file on its own
    clone = pickle.loads(pickle.dumps(test))
    assert torch.equal(clone[1]["depth"], sample["depth"])
    batch = next(test.batches(2, num_workers=2))
    assert torch.equal(batch["image"][1], sample["image"])
    np.save(tmp_path / "map.npy", np.array([255, 0, 0, 1, 2]))
    seg = data.load("nyu", root=str(tmp_path), split="test", class_map=str(tmp_path / "map.npy"), size=4)
    out = seg[0]
    assert seg.targets == ("mask", "depth") and seg.mask_classes == 3 and out["mask"].shape == (4, 4)
    full = data.load("nyu", root=str(tmp_path), split="test", class_map=str(tmp_path / "map.npy"))[0]["mask"]
    expected = torch.from_numpy(np.array([255, 0, 0, 1, 2])[labels[2].astype(np.int64)])
    assert torch.equal(full, expected)


def test_nyu_default_split_and_corrupt_file(tmp_path):
    _nyu_file(tmp_path / "nyu_depth_v2_labeled.mat", n=20)
    train = data.load("nyu", root=str(tmp_path), split="trainval")
    test = data.load("nyu", root=str(tmp_path), split="test")
    assert len(train) == round(20 * 795 / 1449) and len(train) + len(test) == 20
    assert not set(train.indices) & set(test.indices)
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 7.3 MAT-file, not really HDF5")
    with pytest.raises(CorruptFileError, match="nyu_depth_v2_labeled.mat.*HDF5"):
        data.load("nyu", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nyu_depth_v2_labeled.mat"):
        data.load("nyu", root=str(tmp_path / "empty_does_not_exist"))


def _palette_png(path, mask: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def test_segfolder_voc_layout(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[:, 4:] = 15
    mask[0, :] = 255
    _png(tmp_path / "JPEGImages" / "2007_0001.jpg", size=(8, 6))
    _palette_png(tmp_path / "SegmentationClass" / "2007_0001.png", mask)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_0001\n")
    ds = data.load("segfolder", root=str(tmp_path), split="val")
    assert ds.layout == "voc" and ds.num_classes == 21 and ds.targets == ("mask",)
    assert torch.equal(ds[0]["mask"], torch.from_numpy(mask.astype(np.int64)))
    with pytest.raises(ValueError, match="unknown split 'train'.*val"):
        data.load("segfolder", root=str(tmp_path), split="train")
    with pytest.raises(CorruptFileError, match="2007_0001.png.*mask value 15"):
        data.load("segfolder", root=str(tmp_path), split="val", num_classes=10)[0]


def test_segfolder_ade_reduce_zero_label(tmp_path):
    mask = np.array([[0, 1, 150], [2, 0, 3]], np.uint8)
    _png(tmp_path / "images" / "validation" / "ADE_val_1.jpg", size=(3, 2))
    _palette_png(tmp_path / "annotations" / "validation" / "ADE_val_1.png", mask)
    ds = data.load("segfolder", root=str(tmp_path), split="val")
    assert ds.layout == "ade" and ds.num_classes == 150
    assert ds[0]["mask"].tolist() == [[255, 0, 149], [1, 255, 2]]
    _png(tmp_path / "images" / "validation" / "ADE_val_2.jpg", size=(3, 2))
    with pytest.raises(FileNotFoundError, match="ADE_val_2.png"):
        data.load("segfolder", root=str(tmp_path), split="val")


def test_corrupted_copies_of_other_datasets_keep_label_order(tmp_path):
    """Copies written by `robustssl corrupt` use class-name or integer folders; labels must not be permuted
    by sorting folder names as strings."""
    inc = tmp_path / "inc"
    for label in (2, 10):
        _png(inc / "fog" / "1" / str(label) / "0.png", size=(8, 8))
    ds = data.load("imagenet-c", root=str(inc), corruption="fog", severity=1, size=8)
    assert [int(ds[i]["label"]) for i in range(2)] == [2, 10]
    named = tmp_path / "named"
    for name in ("triangle", "circle"):
        _png(named / "fog" / "1" / name / "0.png", size=(8, 8))
    (named / "manifest.json").write_text(json.dumps({"class_names": ["triangle", "square", "circle"]}))
    ds = data.load("imagenet-c", root=str(named), corruption="fog", severity=1, size=8)
    labels = {ds.samples[i][0].parent.name: int(ds[i]["label"]) for i in range(2)}
    assert labels == {"triangle": 0, "circle": 2} and ds.num_classes == 3
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "fog.npy", np.zeros((10, 16, 16, 3), np.uint8))
    np.save(npy / "labels.npy", np.arange(10) % 3)
    (npy / "manifest.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    ds = data.load("cifar10-c", root=str(npy), corruption="fog", severity=2)
    assert ds.image_shape == (3, 16, 16) and ds.num_classes == 3 and ds.class_names == ["a", "b", "c"]
    assert next(ds.batches(2))["label"].tolist() == [2, 0]
