"""The corrupted-dataset writer and ``robustssl corrupt``: layouts, bytes, resume after interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustssl.data as data
from robustssl.cli.main import main
from robustssl.data.base import TensorDataset
from robustssl.runtime.seeding import make_generator
from robustssl.threats.corruptions.api import corrupt, derive_seed
from robustssl.threats.corruptions.writer import MANIFEST, write_corrupted

NAMES = ["fog", "snow"]


def _dataset(n: int = 7, size: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return TensorDataset(images, name="toy", split="test", num_classes=3, class_names=["cat", "dog", "fox"],
                         label=torch.arange(n) % 3)


def _expected(ds: TensorDataset, name: str, severity: int, seed: int, n: int, batch_size: int) -> np.ndarray:
    """What the writer must store: batches corrupted in order from the cell's derived generator, as uint8."""
    g = make_generator(derive_seed(seed, name, severity))
    parts = []
    for start in range(0, n, batch_size):
        x = ds.images[start:min(n, start + batch_size)].float() / 255
        y = (corrupt(x, name, severity, g) * 255).round().to(torch.uint8)
        parts.append(y.permute(0, 2, 3, 1).numpy())
    return np.concatenate(parts)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def test_cifar_layout_shapes_labels_and_bytes(tmp_path):
    ds = _dataset()
    manifest = write_corrupted(ds, tmp_path, corruptions=NAMES, layout="cifar", seed=4, n=5, batch_size=2)
    labels = np.load(tmp_path / "labels.npy")
    assert labels.dtype == np.uint8 and labels.tolist() == [0, 1, 2, 0, 1] * 5
    for name in NAMES:
        stack = np.load(tmp_path / f"{name}.npy")
        assert stack.shape == (25, 32, 32, 3) and stack.dtype == np.uint8
        for severity in range(1, 6):
            expected = _expected(ds, name, severity, seed=4, n=5, batch_size=2)
            assert np.array_equal(stack[(severity - 1) * 5:severity * 5], expected)
    assert manifest["done"] == {name: [1, 2, 3, 4, 5] for name in NAMES}
    assert not any((tmp_path / ".partial").iterdir()), "severity parts are removed once stacked"
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk["seed"] == 4 and on_disk["n"] == 5 and on_disk["layout"] == "cifar"


def test_imagenet_layout_paths_and_pixels(tmp_path):
    ds = _dataset(n=4)
    write_corrupted(ds, tmp_path, corruptions=["fog"], severities=[2, 5], layout="imagenet", seed=1,
                    batch_size=3)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert files == ["fog/2/cat/0.png", "fog/2/cat/3.png", "fog/2/dog/1.png", "fog/2/fox/2.png",
                     "fog/5/cat/0.png", "fog/5/cat/3.png", "fog/5/dog/1.png", "fog/5/fox/2.png"]
    expected = _expected(ds, "fog", 5, seed=1, n=4, batch_size=3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "fog/5/fox/2.png")), expected[2])


@pytest.mark.parametrize("layout", ["cifar", "imagenet"])
def test_interrupted_run_resumes_to_the_same_bytes(tmp_path, layout):
    ds = _dataset()
    settings = dict(corruptions=NAMES, layout=layout, seed=9, batch_size=3,
                    severities=[1, 2, 3, 4, 5] if layout == "cifar" else [1, 3])
    write_corrupted(ds, tmp_path / "whole", **settings)

    seen = []

    def interrupt(name, severity, done):
        seen.append((name, severity, done))
        if len(seen) == 8:  # partway through a later cell
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        write_corrupted(ds, resumed, on_batch=interrupt, **settings)
    stopped_at = seen[-1][:2]
    manifest = json.loads((resumed / MANIFEST).read_text())
    unfinished = manifest["done"].get(stopped_at[0], [])
    assert stopped_at[1] not in unfinished, "an unfinished cell must not look done"
    if layout == "cifar":
        assert not (resumed / f"{stopped_at[0]}.npy").exists()
    calls = []
    write_corrupted(ds, resumed, on_batch=lambda *a: calls.append(a[:2]), **settings)
    assert (NAMES[0], 1) not in calls, "finished cells are skipped on resume"
    assert _tree(resumed) == _tree(tmp_path / "whole")


def test_robustssl_data_reads_both_layouts_back(tmp_path):
    if "cifar10-c" not in data.DATASETS or "imagenet-c" not in data.DATASETS:
        pytest.skip("robustssl.data has no -C readers in this build")
    ds = _dataset(n=5)
    write_corrupted(ds, tmp_path / "c", corruptions=["snow"], layout="cifar", seed=3, batch_size=2)
    back = data.load("cifar10-c", root=str(tmp_path / "c"), corruption="snow", severity=4)
    batch = next(back.batches(5))
    expected = torch.from_numpy(_expected(ds, "snow", 4, seed=3, n=5, batch_size=2)).permute(0, 3, 1, 2)
    assert torch.equal((batch["image"] * 255).round().to(torch.uint8), expected)
    assert batch["label"].tolist() == ds.tensors["label"].tolist()

    write_corrupted(ds, tmp_path / "i", corruptions=["snow"], severities=[4], layout="imagenet", seed=3,
                    batch_size=2)
    back = data.load("imagenet-c", root=str(tmp_path / "i"), corruption="snow", severity=4, size=None)
    assert len(back) == 5
    got = sorted((int(s["label"]), tuple((s["image"] * 255).round().to(torch.uint8).flatten()[:16].tolist()))
                 for s in (back[i] for i in range(5)))
    expected = _expected(ds, "snow", 4, seed=3, n=5, batch_size=2)
    want = sorted((int(label), tuple(torch.from_numpy(e).permute(2, 0, 1).flatten()[:16].tolist()))
                  for label, e in zip(ds.tensors["label"], expected, strict=True))
    assert got == want


def test_rerun_with_other_settings_is_refused(tmp_path):
    ds = _dataset()
    write_corrupted(ds, tmp_path, corruptions=["fog"], severities=[1], layout="imagenet", seed=0, n=3)
    with pytest.raises(ValueError, match=r"seed: was 0, now 1"):
        write_corrupted(ds, tmp_path, corruptions=["fog"], severities=[1], layout="imagenet", seed=1, n=3)
    with pytest.raises(ValueError, match="params"):
        write_corrupted(ds, tmp_path, corruptions=["fog"], severities=[1], layout="imagenet", seed=0, n=3,
                        params="imagenet")
    # same settings, more cells: allowed, and the finished one is kept
    manifest = write_corrupted(ds, tmp_path, corruptions=["fog"], severities=[1, 2], layout="imagenet",
                               seed=0, n=3)
    assert manifest["done"] == {"fog": [1, 2]}


def test_writer_refuses_bad_requests(tmp_path):
    ds = _dataset()
    with pytest.raises(ValueError, match="all five severities"):
        write_corrupted(ds, tmp_path / "a", corruptions=["fog"], severities=[1, 2], layout="cifar")
    with pytest.raises(ValueError, match=r"n must be an int in 1\.\.7"):
        write_corrupted(ds, tmp_path / "b", corruptions=["fog"], n=8)
    with pytest.raises(ValueError, match="layout"):
        write_corrupted(ds, tmp_path / "c", corruptions=["fog"], layout="coco")
    with pytest.raises(ValueError, match="unknown corruption"):
        write_corrupted(ds, tmp_path / "d", corruptions=["fgo"])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write_corrupted(ds, tmp_path / "e", corruptions=["fog"])
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / MANIFEST).write_text("{broken")
    with pytest.raises(ValueError, match="not a valid"):
        write_corrupted(ds, tmp_path / "f", corruptions=["fog"])


def test_cli_writes_the_cifar_layout(tmp_path, monkeypatch, capsys):
    ds = _dataset(n=4)
    requested = {}

    def fake_load(name, root=None, split="test"):
        requested.update(name=name, root=root, split=split)
        return ds

    monkeypatch.setattr(data, "load", fake_load, raising=False)
    out = tmp_path / "toy-c"
    code = main(["corrupt", "--data", "toy", "--root", str(tmp_path), "--out", str(out), "--corruptions",
                 "fog,snow", "--seed", "2", "--batch-size", "2"])
    assert code == 0
    assert requested == {"name": "toy", "root": str(tmp_path), "split": "test"}
    assert np.load(out / "fog.npy").shape == (20, 32, 32, 3)
    expected = _expected(ds, "snow", 3, seed=2, n=4, batch_size=2)
    assert np.array_equal(np.load(out / "snow.npy")[8:12], expected)
    # a rerun is a no-op; a rerun with another seed is an error with a one-line message
    assert main(["corrupt", "--data", "toy", "--out", str(out), "--corruptions", "fog,snow", "--seed", "2",
                 "--batch-size", "2"]) == 0
    assert main(["corrupt", "--data", "toy", "--out", str(out), "--corruptions", "fog", "--seed", "3",
                 "--batch-size", "2"]) == 2
    assert "seed: was 2, now 3" in capsys.readouterr().err


def test_cli_imagenet_layout_subset_and_help(tmp_path, monkeypatch, capsys):
    ds = _dataset(n=3)
    monkeypatch.setattr(data, "load", lambda name, root=None, split="test": ds, raising=False)
    out = tmp_path / "toy-in"
    assert main(["corrupt", "--data", "toy", "--out", str(out), "--layout", "imagenet", "--corruptions",
                 "spatter", "--severities", "4", "--n", "2", "--params", "cifar"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["spatter/4/cat/0.png",
                                                                           "spatter/4/dog/1.png"]
    with pytest.raises(SystemExit):
        main(["corrupt", "--help"])
    assert "--severities" in capsys.readouterr().out
