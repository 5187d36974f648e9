"""``robustssl.threats.corrupt`` over the whole registry, ``names()``, and dense-task samples."""

from __future__ import annotations

import pytest
import torch

import robustssl.threats as threats
from robustssl.data.base import TensorDataset
from robustssl.registry import UnknownNameError
from robustssl.threats.corruptions import CORRUPTIONS
from robustssl.threats.corruptions.api import derive_seed, names
from robustssl.threats.corruptions.dense import CorruptedDataset, corrupt_sample


def _images(b: int = 2, h: int = 32, w: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, h, w, generator=g) * 0.8 + 0.1


def test_corrupt_is_exported_from_threats():
    from robustssl.threats.corruptions import api

    assert threats.corrupt is api.corrupt
    assert "corrupt" in threats.__all__


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_every_registered_corruption_through_the_api(name):
    x = _images()
    y = threats.corrupt(x, name, 3, generator=torch.Generator().manual_seed(5))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    direct = CORRUPTIONS.create(name).corrupt(x, 3, torch.Generator().manual_seed(5), "auto")
    assert torch.equal(y, direct), "the API must dispatch to the registered corruption unchanged"
    assert not torch.equal(threats.corrupt(x, name, 5, torch.Generator().manual_seed(5)), x)


def test_single_image_keeps_its_rank():
    x = _images(1)[0]
    y = threats.corrupt(x, "fog", 2, torch.Generator().manual_seed(0))
    batched = threats.corrupt(x[None], "fog", 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.equal(y, batched[0])


def test_names_lists_the_registry_and_filters_by_family():
    assert names() == CORRUPTIONS.names()
    assert set(names("weather")) >= {"snow", "frost", "fog", "spatter"}
    assert all(CORRUPTIONS.meta(n)["family"] == "weather" for n in names("weather"))
    with pytest.raises(ValueError, match="weather"):
        names("rain")


def test_bad_arguments_say_what_is_accepted():
    x = _images()
    with pytest.raises(UnknownNameError, match="snow"):
        threats.corrupt(x, "snw", 1)
    for bad in (0, 6, "3", True, 2.0):
        with pytest.raises(ValueError, match="severity"):
            threats.corrupt(x, "snow", bad)
    with pytest.raises(ValueError, match="cifar, imagenet, auto"):
        threats.corrupt(x, "snow", 1, params="c10")
    with pytest.raises(TypeError, match="Tensor"):
        threats.corrupt(x.numpy(), "snow", 1)
    with pytest.raises(ValueError, match="channels"):
        threats.corrupt(x[:, :1], "fog", 1)


def test_params_auto_picks_cifar_below_64_pixels():
    x = _images(2, 32, 32)
    auto = threats.corrupt(x, "fog", 4, torch.Generator().manual_seed(1))
    cifar = threats.corrupt(x, "fog", 4, torch.Generator().manual_seed(1), params="cifar")
    imagenet = threats.corrupt(x, "fog", 4, torch.Generator().manual_seed(1), params="imagenet")
    assert torch.equal(auto, cifar) and not torch.equal(auto, imagenet)


def test_derive_seed_is_stable_and_separates_cells():
    assert derive_seed(0, "snow", 1) == derive_seed(0, "snow", 1)
    seeds = {derive_seed(s, c, v) for s in (0, 1) for c in ("snow", "fog") for v in range(1, 6)}
    assert len(seeds) == 20 and all(0 <= s < 2 ** 60 for s in seeds)


# ------------------------------------------------------------------------------------------ dense tasks

def _dense_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(2, 3, 32, 32, generator=g),
            "mask": torch.randint(0, 5, (2, 32, 32), generator=g),
            "depth": torch.rand(2, 32, 32, generator=g) * 10,
            "label": torch.tensor([1, 3])}


@pytest.mark.parametrize("name", ["snow", "frost", "fog", "spatter"])
def test_corrupting_a_dense_batch_touches_only_the_image(name):
    batch = _dense_batch()
    before = {k: v.clone() for k, v in batch.items()}
    out = corrupt_sample(batch, name, 5, torch.Generator().manual_seed(0))
    assert not torch.equal(out["image"], before["image"])
    for key in ("mask", "depth", "label"):
        assert out[key] is batch[key] and torch.equal(out[key], before[key])
    assert torch.equal(batch["image"], before["image"]), "the input sample must not be modified in place"


def test_corrupt_sample_on_a_single_sample_and_without_image():
    batch = _dense_batch()
    sample = {k: v[0] for k, v in batch.items()}
    out = corrupt_sample(sample, "fog", 3, torch.Generator().manual_seed(2))
    assert out["image"].shape == (3, 32, 32) and out["mask"] is sample["mask"]
    with pytest.raises(KeyError, match="image"):
        corrupt_sample({"mask": sample["mask"]}, "fog", 3)


def test_corrupted_dataset_is_deterministic_per_index_and_keeps_targets():
    batch = _dense_batch()
    ds = TensorDataset(batch["image"], name="toy", split="test", mask=batch["mask"], depth=batch["depth"])
    view = CorruptedDataset(ds, "snow", 4, seed=3)
    first, again = view[1], view[1]
    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], ds[1]["image"])
    assert torch.equal(first["mask"], ds[1]["mask"]) and torch.equal(first["depth"], ds[1]["depth"])
    assert view.targets == ds.targets and len(view) == len(ds)
    batched = next(view.batches(2))
    assert torch.equal(batched["image"][1], first["image"])
    with pytest.raises(ValueError, match="severity"):
        CorruptedDataset(ds, "snow", 0)
