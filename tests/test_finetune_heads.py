"""Fitting heads on a frozen toy encoder: feature caching, probe, dense heads, evaluation, split hygiene."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from robustssl.data.base import TensorDataset
from robustssl.encoders.base import Encoder
from robustssl.finetune import (
    evaluate,
    extract_features,
    fit_dense_head,
    fit_linear_probe,
    holdout_split,
    silog_loss,
)
from robustssl.heads import DEPTH_MODES, DepthHead, LinearClassifier, SegmentationHead, TaskModel
from robustssl.metrics import expected_calibration_error, wilson_interval
from robustssl.runtime import make_generator

CELL = 4  # the toy encoder's stride


class ToyEncoder(Encoder):
    """Embedding = per-channel mean ``(B, 3)``; dense = per-cell channel means lifted by a fixed 1x1 conv."""

    embed_dim, dense_dim, stride = 3, 6, CELL

    def __init__(self):
        super().__init__(mean=None, std=None)
        self.lift = torch.nn.Conv2d(3, 6, 1)
        with torch.no_grad():
            self.lift.weight.copy_(torch.randn(6, 3, 1, 1, generator=make_generator(1)))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.lift(F.avg_pool2d(x, CELL))


def colour_images(labels: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Class c = channel c bright (0.8) on dim channels (0.2), plus uniform noise of +-0.15."""
    base = torch.full((len(labels), 3), 0.2)
    base[torch.arange(len(labels)), labels] = 0.8
    noise = (torch.rand(len(labels), 3, size, size, generator=g) - 0.5) * 0.3
    return (base[:, :, None, None] + noise).clamp(0, 1)


def classification_ds(n: int, split: str, seed: int) -> TensorDataset:
    g = make_generator(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = colour_images(labels, 8, g)
    return TensorDataset(images, name="colours", split=split, num_classes=3, label=labels)


def dense_ds(n: int, split: str, seed: int, size: int = 16) -> TensorDataset:
    """Per 4x4 cell: a class (bright channel) for the mask, and depth 1 + 3 * (red level) in metres."""
    g = make_generator(seed)
    cells = size // CELL
    cls = torch.randint(0, 3, (n, cells, cells), generator=g)
    red = torch.rand(n, cells, cells, generator=g)
    colour = torch.empty(n, 3, cells, cells)
    colour[:, 0] = red  # red carries depth; green/blue carry the class (class 0 = dim green and blue)
    colour[:, 1:] = torch.where(cls.unsqueeze(1) == torch.tensor([1, 2]).view(1, 2, 1, 1), 0.9, 0.1)
    images = F.interpolate(colour, scale_factor=CELL, mode="nearest")
    mask = F.interpolate(cls[:, None].float(), scale_factor=CELL, mode="nearest")[:, 0].long()
    mask[torch.rand(mask.shape, generator=g) < 0.05] = 255
    depth = F.interpolate((1 + 3 * red)[:, None], scale_factor=CELL, mode="nearest")[:, 0]
    depth[torch.rand(depth.shape, generator=g) < 0.05] = 0.0  # invalid pixels
    return TensorDataset(images, name="cells", split=split, num_classes=3, depth_range=(0.5, 5.0),
                         mask=mask, depth=depth)


# --- splits and features ----------------------------------------------------------------------------------
def test_holdout_split_is_disjoint_complete_and_reproducible():
    train, val = holdout_split(20, 0.25, make_generator(3))
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val) == list(range(20))
    assert (train, val) == holdout_split(20, 0.25, make_generator(3))
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(20, 1.0, make_generator(3))


def test_extract_features_matches_the_encoder_and_restores_its_mode():
    ds = dense_ds(10, "train", 0)
    enc = ToyEncoder().train()
    idx = [7, 2, 5]
    emb, targets = extract_features(enc, ds, "embed", batch_size=2, indices=idx)
    dense, _ = extract_features(enc, ds, "dense", batch_size=4)
    assert enc.training  # mode restored
    torch.testing.assert_close(emb, ds.images[idx].mean(dim=(2, 3)))
    assert dense.shape == (10, 6, 4, 4) and not dense.requires_grad
    torch.testing.assert_close(dense, enc.dense(ds.images).detach())
    assert set(targets) == {"mask", "depth"}
    torch.testing.assert_close(targets["mask"], ds.tensors["mask"][idx])
    with pytest.raises(ValueError, match="feature kind"):
        extract_features(enc, ds, "tokens")


def test_extract_features_in_bf16_returns_float32_close_to_fp32():
    ds = dense_ds(4, "train", 0)
    enc = ToyEncoder()
    full, _ = extract_features(enc, ds, "dense")
    half, _ = extract_features(enc, ds, "dense", precision="bf16")
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=5e-2, rtol=5e-2)


# --- linear probe -----------------------------------------------------------------------------------------
def test_linear_probe_reaches_full_accuracy_on_separable_features():
    enc = ToyEncoder()
    train, val = classification_ds(60, "train", 0), classification_ds(30, "val", 1)
    test = classification_ds(30, "test", 2)
    head, info = fit_linear_probe(enc, train, val, batch_size=32, weight_decays=(1e-2, 1e-4, 0.0),
                                  max_iter=50)
    assert isinstance(head, LinearClassifier) and head.num_classes == 3
    assert info["val_accuracy"] == 1.0 and info["n_train"] == 60 and info["n_val"] == 30
    # the chosen decay is the best on validation, ties going to the stronger decay
    scores = info["val_accuracy_by_weight_decay"]
    best = max(scores.values())
    assert info["weight_decay"] == max(wd for wd, acc in scores.items() if acc == best)
    # the standardization is folded into the head: it works on raw embeddings
    model = TaskModel(enc, head, "classification")
    assert evaluate(model, val, batch_size=16)["top1"] == pytest.approx(info["val_accuracy"])
    assert evaluate(model, test, batch_size=16)["top1"] == 1.0


class PixelEncoder(Encoder):
    """Embedding = the three channel values of a 1x1 image: the probe sees exactly the features we choose."""

    embed_dim, dense_dim, stride = 3, 3, 1

    def __init__(self):
        super().__init__(mean=None, std=None)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_probe_matches_sklearn_logistic_regression():
    # overlapping classes, so the regularized optimum is finite and unique
    g = make_generator(4)
    labels = torch.randint(0, 3, (90,), generator=g)
    centres = torch.tensor([[0.3, 0.5, 0.5], [0.6, 0.4, 0.5], [0.5, 0.6, 0.3]])
    feats = (centres[labels] + 0.12 * torch.randn(90, 3, generator=g)).clamp(0, 1)
    images = feats[:, :, None, None]
    train = TensorDataset(images[:60], name="pix", split="train", num_classes=3, label=labels[:60])
    val = TensorDataset(images[60:], name="pix", split="val", num_classes=3, label=labels[60:])
    wd = 1e-2
    head, _ = fit_linear_probe(PixelEncoder(), train, val, weight_decays=(wd,), max_iter=500)
    # sklearn minimizes C * sum(CE) + ||W||^2 / 2, i.e. mean(CE) + ||W||^2 / (2 C n), on the same
    # standardized features
    x = feats[:60].double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    ref = LogisticRegression(C=1 / (2 * wd * 60), tol=1e-10, max_iter=5000).fit(((x - mean) / std).numpy(),
                                                                               labels[:60].numpy())
    ours = head(feats.float()).softmax(dim=1).detach().double()
    theirs = torch.from_numpy(ref.predict_proba(((feats.double() - mean) / std).numpy()))
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=0)


def test_probe_refuses_test_splits_and_overlapping_holdouts():
    enc = ToyEncoder()
    train, test = classification_ds(12, "train", 0), classification_ds(12, "test", 1)
    with pytest.raises(ValueError, match="test split"):
        fit_linear_probe(enc, train, test)
    with pytest.raises(ValueError, match="test split"):
        fit_linear_probe(enc, test, train)
    with pytest.raises(ValueError, match="same dataset"):
        fit_linear_probe(enc, train, train)
    with pytest.raises(ValueError, match="disjoint"):
        fit_linear_probe(enc, train, train, train_indices=[0, 1, 2, 3], val_indices=[3, 4])


def test_probe_on_a_holdout_only_reads_its_own_indices():
    ds = classification_ds(40, "train", 0)
    seen: list[list[int]] = []
    original = ds.batches

    def spy(batch_size, **kw):
        seen.append(list(kw.get("indices") or []))
        return original(batch_size, **kw)

    ds.batches = spy
    tr, va = holdout_split(40, 0.25, make_generator(0))
    _, info = fit_linear_probe(ToyEncoder(), ds, ds, train_indices=tr, val_indices=va, weight_decays=(1e-3,))
    assert seen == [tr, va] and info["n_val"] == 10


def test_probe_needs_labels():
    ds = dense_ds(8, "train", 0)
    with pytest.raises(ValueError, match="label"):
        fit_linear_probe(ToyEncoder(), ds, dense_ds(8, "val", 1))


# --- dense heads ------------------------------------------------------------------------------------------
def test_segmentation_head_learns_cell_classes_and_keeps_the_best_epoch():
    enc = ToyEncoder()
    head, info = fit_dense_head(enc, dense_ds(32, "train", 0), dense_ds(12, "val", 1), "segmentation",
                                epochs=15, lr=0.05, batch_size=8, generator=make_generator(0))
    assert isinstance(head, SegmentationHead) and not head.training
    assert info["val_miou"] > 0.9
    mious = [h["miou"] for h in info["history"]]
    assert info["best_epoch"] == mious.index(max(mious)) and info["val_miou"] == max(mious)
    test = evaluate(TaskModel(enc, head, "segmentation"), dense_ds(12, "test", 2), batch_size=4)
    assert test["miou"] > 0.85 and test["n"] == 12


@pytest.mark.parametrize("mode", DEPTH_MODES)
def test_depth_head_beats_a_constant_predictor(mode):
    enc = ToyEncoder()
    val = dense_ds(12, "val", 1)
    head, info = fit_dense_head(enc, dense_ds(32, "train", 0), val, "depth", epochs=25, lr=0.05, batch_size=8,
                                mode=mode, n_bins=32, generator=make_generator(0))
    assert isinstance(head, DepthHead) and (head.min_depth, head.max_depth) == (0.5, 5.0)
    rmses = [h["rmse"] for h in info["history"]]
    assert info["best_epoch"] == rmses.index(min(rmses))
    depth = val.tensors["depth"]
    valid = depth[depth > 0]
    constant_rmse = float((valid - valid.mean()).pow(2).mean().sqrt())  # the best constant guess
    assert info["val_rmse"] < 0.5 * constant_rmse


def test_segmentation_classes_come_from_mask_classes_or_the_masks():
    enc = ToyEncoder()
    train, val = dense_ds(8, "train", 0), dense_ds(8, "val", 1)
    train.num_classes = 1  # an image-label count that must not size a head over masks with 3 classes...
    train.targets = ("label", *train.targets)  # ...of a dataset that also has image labels
    head, _ = fit_dense_head(enc, train, val, "segmentation", epochs=1)
    assert head.num_classes == 3  # inferred from the masks
    train.mask_classes = 5  # masks that add classes to the image labels (scenes: background + objects)
    head, _ = fit_dense_head(enc, train, val, "segmentation", epochs=1)
    assert head.num_classes == 5
    train.mask_classes = 2
    with pytest.raises(ValueError, match="declares 2 mask classes but has mask value 2"):
        fit_dense_head(enc, train, val, "segmentation", epochs=1)


def test_dense_head_checks_targets_and_task():
    enc = ToyEncoder()
    with pytest.raises(ValueError, match="mask"):
        fit_dense_head(enc, classification_ds(8, "train", 0), classification_ds(8, "val", 1), "segmentation")
    with pytest.raises(ValueError, match="dense task"):
        fit_dense_head(enc, dense_ds(8, "train", 0), dense_ds(8, "val", 1), "classification")
    with pytest.raises(ValueError, match="test split"):
        fit_dense_head(enc, dense_ds(8, "train", 0), dense_ds(8, "test", 1), "depth")


def test_silog_by_hand():
    target = torch.tensor([[1.0, 2.0, 4.0]])
    valid = torch.ones_like(target, dtype=torch.bool)
    # pred = 2 * target: g = log 2 everywhere -> sqrt(log2^2 - 0.85 log2^2) = sqrt(0.15) log 2
    assert float(silog_loss(2 * target, target, valid)) == pytest.approx(math.sqrt(0.15) * math.log(2))
    # g = (0, log 2) on the two valid pixels: mean g^2 = log2^2 / 2, mean g = log2 / 2
    pred = torch.tensor([[1.0, 4.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    expected = math.sqrt(math.log(2) ** 2 / 2 - 0.85 * (math.log(2) / 2) ** 2)
    assert float(silog_loss(pred, target, mask)) == pytest.approx(expected)


# --- evaluation -------------------------------------------------------------------------------------------
def _fixed_head_model(head: torch.nn.Module, task: str) -> TaskModel:
    head.eval()
    if hasattr(head, "norm"):
        head.norm.eps = 0.0  # eval BN with running stats (0, 1) is then exactly the identity
    return TaskModel(ToyEncoder(), head, task)


def test_evaluate_classification_by_hand():
    head = LinearClassifier(3, 3)
    with torch.no_grad():
        head.linear.weight.copy_(torch.eye(3))
        head.linear.bias.zero_()
    labels = torch.tensor([0, 1, 2, 2])
    ds = classification_ds(4, "test", 0)
    ds.images = colour_images(torch.tensor([0, 1, 2, 0]), 8, make_generator(5))  # the last one is wrong
    ds.tensors["label"] = labels
    model = _fixed_head_model(head, "classification").train()
    out = evaluate(model, ds, batch_size=3)
    assert model.training  # mode restored
    assert out["top1"] == pytest.approx(0.75) and out["n"] == 4 and "top5" not in out
    assert (out["top1_ci_low"], out["top1_ci_high"]) == pytest.approx(wilson_interval(3, 4))
    probs = ds.images.mean(dim=(2, 3)).softmax(dim=1)
    assert out["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    subset = evaluate(model, ds, batch_size=3, indices=[3, 0])  # one wrong, one right
    assert subset["n"] == 2 and subset["top1"] == pytest.approx(0.5)


def test_evaluate_dense_tasks_by_hand():
    ds = dense_ds(3, "test", 0)
    ds.depth_range = None
    ds.tensors["depth"] = torch.full((3, 16, 16), 3.0)
    ds.tensors["depth"][:, 0] = 0.0  # one invalid row per image
    depth_head = DepthHead(6, mode="regression", min_depth=1.0, max_depth=3.0)
    with torch.no_grad():
        depth_head.predictor.weight.zero_()
        depth_head.predictor.bias.zero_()  # sigmoid(0) -> 2 m everywhere
    out = evaluate(_fixed_head_model(depth_head, "depth"), ds, batch_size=2)
    # every valid pixel: pred 2, truth 3 -> RMSE 1, AbsRel 1/3, ratio 1.5 -> delta1 0, delta2 1
    assert out["rmse"] == pytest.approx(1.0) and out["abs_rel"] == pytest.approx(1 / 3)
    assert out["delta1"] == 0.0 and out["delta2"] == 1.0 and out["valid_pixels"] == 3 * 15 * 16

    seg_head = SegmentationHead(6, 3)
    with torch.no_grad():
        seg_head.classifier.weight.zero_()
        seg_head.classifier.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # predicts class 1 everywhere
    out = evaluate(_fixed_head_model(seg_head, "segmentation"), ds, batch_size=2)
    mask = ds.tensors["mask"]
    labelled = mask != 255
    ones = (mask == 1).sum().item()
    assert out["pixel_accuracy"] == pytest.approx(ones / labelled.sum().item())
    # class 1's union is every labelled pixel; classes 0 and 2 occur in the target, so they count with IoU 0
    assert all((mask == c).any() for c in (0, 2))
    assert out["miou"] == pytest.approx(ones / labelled.sum().item() / 3)
    assert out["n"] == 3


def test_evaluate_rejects_embedding_task_and_missing_targets():
    with pytest.raises(ValueError, match="embedding_drift"):
        evaluate(TaskModel(ToyEncoder(), None, "embedding"), classification_ds(4, "test", 0))
    with pytest.raises(ValueError, match="depth"):
        evaluate(_fixed_head_model(DepthHead(6), "depth"), classification_ds(4, "test", 0))
