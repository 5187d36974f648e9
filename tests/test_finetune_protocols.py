"""Fine-tuning protocols (slf, alf, aff, ft): accuracy, frozen weights, training examples, robustness gained,
TRADES, split hygiene, task-model checkpoints, the CLI, bad input."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustssl import encoders
from robustssl.cli import finetune as finetune_cli
from robustssl.data.base import TensorDataset
from robustssl.encoders.base import Encoder
from robustssl.finetune import (
    PROTOCOLS,
    Consistency,
    adversarial,
    consistency_loss,
    evaluate,
    evaluate_under_attack,
    finetune,
    holdout_split,
    load_task_model,
    read_task_model_info,
    save_task_model,
    trades_loss,
)
from robustssl.finetune.protocols import _lr_at
from robustssl.heads import DepthHead, LinearClassifier, SegmentationHead, TaskModel
from robustssl.runtime import make_generator, seeded_init
from robustssl.threats.objectives import DepthSILog

CELL = 4
FAST = {"epochs": 1, "steps": 2, "val_steps": 2, "batch_size": 8}  # one short epoch of any SGD protocol


class ToyEncoder(Encoder):
    """Embedding = per-channel mean ``(B, 3)``; dense = 4x4-cell channel means lifted by a fixed 1x1 conv."""

    embed_dim, dense_dim, stride = 3, 6, CELL

    def __init__(self):
        super().__init__(mean=None, std=None)
        self.lift = nn.Conv2d(3, 6, 1)
        with torch.no_grad():
            self.lift.weight.copy_(torch.randn(6, 3, 1, 1, generator=make_generator(1)))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.lift(F.avg_pool2d(x, CELL))


class ExplodingEncoder(ToyEncoder):
    """Fails the test if any work reaches the encoder (errors must come first)."""

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the encoder ran before the bad input was reported")

    _dense = _embed


def tiny_convnet() -> Encoder:
    """convnet_small at widths 4-8 (batch norm included), stride 4, in train mode."""
    with seeded_init(0):
        return encoders.create("convnet_small", widths=(4, 8), strides=(2, 2)).train()


def colour_ds(n: int, split: str, seed: int, size: int = 8) -> TensorDataset:
    """Class c = channel c bright (0.8) on dim channels (0.2), plus uniform noise of +-0.15: the channel
    means separate the classes by a wide margin."""
    g = make_generator(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    base = torch.full((n, 3), 0.2)
    base[torch.arange(n), labels] = 0.8
    images = (base[:, :, None, None] + (torch.rand(n, 3, size, size, generator=g) - 0.5) * 0.3).clamp(0, 1)
    return TensorDataset(images, name="colours", split=split, num_classes=3, label=labels)


def cells_ds(n: int, split: str, seed: int, size: int = 16) -> TensorDataset:
    """Per 4x4 cell: a class (green/blue level) for the mask and depth 1 + 3 * (red level) metres; a few
    ignored / invalid pixels; labels too, so every task can use it."""
    g = make_generator(seed)
    cells = size // CELL
    cls = torch.randint(0, 3, (n, cells, cells), generator=g)
    red = torch.rand(n, cells, cells, generator=g)
    colour = torch.empty(n, 3, cells, cells)
    colour[:, 0] = red
    colour[:, 1:] = torch.where(cls.unsqueeze(1) == torch.tensor([1, 2]).view(1, 2, 1, 1), 0.9, 0.1)
    images = F.interpolate(colour, scale_factor=CELL, mode="nearest")
    mask = F.interpolate(cls[:, None].float(), scale_factor=CELL, mode="nearest")[:, 0].long()
    mask[torch.rand(mask.shape, generator=g) < 0.05] = 255
    depth = F.interpolate((1 + 3 * red)[:, None], scale_factor=CELL, mode="nearest")[:, 0]
    depth[torch.rand(depth.shape, generator=g) < 0.05] = 0.0
    return TensorDataset(images, name="cells", split=split, num_classes=3, depth_range=(0.5, 5.0),
                         label=cls[:, 0, 0], mask=mask, depth=depth)


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} changed"


# --- slf --------------------------------------------------------------------------------------------------
def test_slf_reaches_full_accuracy_on_linearly_separable_features():
    encoder = ToyEncoder()
    train, val, test = colour_ds(60, "train", 0), colour_ds(30, "val", 1), colour_ds(60, "test", 2)
    result = finetune(encoder, train, val, task="classification", protocol="slf", device="cpu")
    assert isinstance(result.model.head, LinearClassifier) and result.model.encoder is encoder
    assert not result.model.training
    info = result.info
    assert info["protocol"] == "slf" and info["val_metric"] == "top1" and info["val_score"] == 1.0
    assert info["n_train"] == 60 and info["n_val"] == 30 and info["fwd"] == 90 and info["bwd"] == 0
    assert evaluate(result.model, test)["top1"] == 1.0
    json.dumps(info)  # the summary is JSON-serializable (for checkpoints and the result store)


# --- frozen and full protocols ----------------------------------------------------------------------------
@pytest.mark.parametrize("protocol,task", [("slf", "classification"), ("alf", "classification"),
                                           ("slf", "segmentation"), ("alf", "depth")])
def test_frozen_protocols_leave_the_encoder_weights_and_statistics_unchanged(protocol, task):
    encoder = tiny_convnet()  # train mode: any forward in train mode would move its BN running statistics
    before = state_of(encoder)
    train, val = cells_ds(12, "train", 0), cells_ds(6, "val", 1)
    options = {} if protocol == "slf" and task == "classification" else {"epochs": 1, "batch_size": 4}
    if protocol == "alf":
        options.update(steps=2, val_steps=2)
    result = finetune(encoder, train, val, task=task, protocol=protocol, device="cpu", **options)
    assert result.model.encoder is encoder
    assert_same_state(before, state_of(encoder))


def test_full_protocols_fine_tune_a_copy_and_leave_the_callers_encoder_alone():
    encoder = tiny_convnet()
    before = state_of(encoder)
    result = finetune(encoder, cells_ds(12, "train", 0), cells_ds(6, "val", 1), protocol="ft", device="cpu",
                      epochs=1, batch_size=4)
    assert_same_state(before, state_of(encoder))
    tuned = result.model.encoder
    assert tuned is not encoder
    assert not torch.equal(tuned.blocks[0].conv.weight, encoder.blocks[0].conv.weight)
    assert result.info["bwd"] == 12  # one backward per training image, none in clean validation


# --- training-time adversarial examples -------------------------------------------------------------------
@pytest.mark.parametrize("protocol,loss", [("alf", None), ("aff", "pgd-at"), ("aff", "trades")])
def test_training_examples_lie_in_the_eps_ball_and_the_unit_box(monkeypatch, protocol, loss):
    crafted = []
    original = adversarial.craft_training_examples

    def spy(model, x, target, **kw):
        stats = state_of(model)  # crafting runs in eval mode: no batch-norm statistic may move
        x_adv, counts = original(model, x, target, **kw)
        assert_same_state(stats, state_of(model))
        crafted.append((x, x_adv, kw["loss"]))
        return x_adv, counts

    monkeypatch.setattr(adversarial, "craft_training_examples", spy)
    options = {**FAST, "eps": 4 / 255, "step_size": 2 / 255, **({"loss": loss} if loss else {})}
    finetune(tiny_convnet(), cells_ds(16, "train", 0), cells_ds(4, "val", 1), protocol=protocol, device="cpu",
             **options)
    assert len(crafted) == 2  # 16 images in batches of 8
    for x, x_adv, used in crafted:
        assert used == (loss or "pgd-at")
        assert float((x_adv - x).abs().max()) <= 4 / 255 + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert float((x_adv - x).abs().max()) > 1 / 255  # the attack moved the inputs


S = 8  # side of the robust-vs-standard toy images


class MLPEncoder(Encoder):
    """Embedding = ReLU(linear(flattened 8x8 image)) with 16 units, fixed seeded initialization."""

    embed_dim, dense_dim, stride = 16, 16, 1

    def __init__(self):
        super().__init__(mean=None, std=None)
        self.fc = nn.Linear(3 * S * S, 16)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(16, 3 * S * S, generator=make_generator(5)) * 0.05)
            self.fc.bias.zero_()

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)))


def robust_or_not_ds(n: int, split: str, seed: int) -> TensorDataset:
    """Two classes (Tsipras et al. 2019's construction): a *robust* feature, the overall brightness shifted
    by +-0.12 with per-image noise of 0.08 (predictive, margin well above eps), and a *non-robust* one, a
    checkerboard of amplitude +-0.025 < eps = 8/255 (almost perfectly predictive, erased by the attack)."""
    g = make_generator(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    s = (2 * y - 1).float()[:, None, None, None]
    checker = ((torch.arange(S)[:, None] + torch.arange(S)[None]) % 2 * 2 - 1).float()
    brightness = 0.12 * s + 0.08 * torch.randn(n, 1, 1, 1, generator=g)
    x = 0.5 + brightness + 0.025 * s * checker + 0.02 * torch.randn(n, 3, S, S, generator=g)
    return TensorDataset(x.clamp(0, 1), name="robust-or-not", split=split, num_classes=2, label=y)


def test_adversarial_full_fine_tuning_is_more_robust_than_standard_fine_tuning():
    train, val, test = (robust_or_not_ds(512, "train", 0), robust_or_not_ds(128, "val", 1),
                        robust_or_not_ds(256, "test", 2))
    common = dict(device="cpu", epochs=6, lr=0.1, batch_size=64, schedule="constant", select="clean")
    standard = finetune(MLPEncoder(), train, val, protocol="ft", **common)
    robust = finetune(MLPEncoder(), train, val, protocol="aff", loss="pgd-at", steps=5, **common)
    scores = {name: evaluate_under_attack(r.model, test, attack_kwargs={"steps": 10}, batch_size=256)
              for name, r in (("ft", standard), ("aff", robust))}
    assert scores["ft"]["clean"]["top1"] > 0.95 and scores["aff"]["clean"]["top1"] > 0.9
    # ft leans on the checkerboard, which PGD erases; PGD-AT learns the brightness
    assert scores["aff"]["robust"]["top1"] > scores["ft"]["robust"]["top1"] + 0.2
    assert scores["aff"]["robust"]["top1"] > 0.8


# --- TRADES -----------------------------------------------------------------------------------------------
def test_trades_loss_equals_cross_entropy_plus_beta_times_kl_by_hand():
    clean = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 0.0]])
    y = torch.tensor([0, 2])

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    ce = [-math.log(softmax(clean[i].tolist())[int(y[i])]) for i in range(2)]
    kl = []
    for i in range(2):
        p, q = softmax(clean[i].tolist()), softmax(adv[i].tolist())
        kl.append(sum(pk * math.log(pk / qk) for pk, qk in zip(p, q, strict=True)))
    expected = sum(ce) / 2 + 6.0 * sum(kl) / 2
    assert float(trades_loss(clean, adv, y, "classification", 6.0)) == pytest.approx(expected, rel=1e-6)
    assert float(trades_loss(clean, adv, y, "classification", 0.0)) == pytest.approx(sum(ce) / 2, rel=1e-6)
    # the inner objective is the same KL per sample, zero at the clean point
    objective = Consistency("classification")
    torch.testing.assert_close(objective.loss(adv, y, clean), torch.tensor(kl))
    assert torch.allclose(objective.loss(clean, y, clean), torch.zeros(2), atol=1e-7)


def test_consistency_averages_pixel_kl_for_segmentation_and_uses_silog_for_depth():
    g = make_generator(0)
    clean, adv = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    pixelwise = torch.stack([consistency_loss(clean[:, :, i, j], adv[:, :, i, j], "classification")
                             for i in range(3) for j in range(3)], dim=1)
    torch.testing.assert_close(consistency_loss(clean, adv, "segmentation"), pixelwise.mean(dim=1))
    d_clean, d_adv = 1 + torch.rand(2, 1, 5, 5, generator=g), 1 + torch.rand(2, 1, 5, 5, generator=g)
    expected = DepthSILog().loss(d_adv, d_clean[:, 0])
    torch.testing.assert_close(consistency_loss(d_clean, d_adv, "depth"), expected)


# --- selection and splits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_test_splits_are_refused_for_training_and_selection_before_any_work(protocol):
    train, test = colour_ds(12, "train", 0), colour_ds(12, "test", 1)
    with pytest.raises(ValueError, match="test split"):
        finetune(ExplodingEncoder(), train, test, protocol=protocol, device="cpu")
    with pytest.raises(ValueError, match="test split"):
        finetune(ExplodingEncoder(), test, train, protocol=protocol, device="cpu")
    with pytest.raises(ValueError, match="test split"):
        finetune(ExplodingEncoder(), test, None, protocol=protocol, device="cpu")


@pytest.mark.parametrize("protocol", ["slf", "alf"])
def test_selection_reads_only_the_training_and_validation_samples(protocol):
    ds = colour_ds(40, "train", 0)  # samples 30..39 play the part of a test set nobody may read
    seen: set[int] = set()
    original = ds.batches

    def spy(batch_size, **kw):
        seen.update(kw.get("indices") or [])
        assert kw.get("indices") is not None, "a whole-dataset read would include the held-back samples"
        return original(batch_size, **kw)

    ds.batches = spy
    train_idx, val_idx = holdout_split(30, 0.3, make_generator(0))
    options = {} if protocol == "slf" else FAST
    result = finetune(ToyEncoder(), ds, ds, protocol=protocol, device="cpu", train_indices=train_idx,
                      val_indices=val_idx, **options)
    assert seen == set(range(30))
    assert result.info["n_train"] == len(train_idx) and result.info["n_val"] == len(val_idx)


def test_without_validation_data_a_seeded_part_of_train_is_held_out():
    ds = colour_ds(40, "train", 0)
    a = finetune(ToyEncoder(), ds, None, protocol="slf", device="cpu", val_fraction=0.25, seed=3)
    b = finetune(ToyEncoder(), ds, None, protocol="slf", device="cpu", val_fraction=0.25, seed=3)
    assert a.info["n_train"] == 30 and a.info["n_val"] == 10
    assert a.info["val_accuracy_by_weight_decay"] == b.info["val_accuracy_by_weight_decay"]


def test_the_grid_keeps_the_learning_rate_with_the_best_validation_score():
    train, val = colour_ds(48, "train", 0), colour_ds(24, "val", 1)
    result = finetune(ToyEncoder(), train, val, protocol="ft", device="cpu", epochs=3, batch_size=16,
                      lr=[1e-6, 1.0], weight_decay=0.0, schedule="constant")
    grid = result.info["grid"]
    assert [g["lr"] for g in grid] == [1e-6, 1.0]
    assert result.info["lr"] == 1.0 and result.info["val_score"] == max(g["val_score"] for g in grid)
    assert grid[0]["val_score"] < grid[1]["val_score"] == 1.0  # lr 1e-6 barely moves the initial head
    assert len(result.info["history"]) == 3 and result.info["best_epoch"] in (0, 1, 2)


class ExpEncoder(ToyEncoder):
    """Embedding = exp(linear(channel means)): a large enough step overflows it to inf (a NaN loss)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.fc(x.mean(dim=(2, 3))))


def test_diverging_learning_rates_are_dropped_from_the_grid_and_an_all_diverged_grid_is_an_error():
    train, val = colour_ds(48, "train", 0), colour_ds(24, "val", 1)
    options = dict(device="cpu", epochs=2, batch_size=16, weight_decay=0.0, schedule="constant")
    with seeded_init(0):
        encoder = ExpEncoder()
    result = finetune(encoder, train, val, protocol="ft", lr=[1e10, 0.5], **options)
    assert result.info["lr"] == 0.5 and result.info["grid"][0]["diverged"] is True
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    with pytest.raises(RuntimeError, match="diverged"):
        finetune(encoder, train, val, protocol="ft", lr=1e10, **options)


def test_step_schedule_divides_by_ten_at_60_and_80_percent_of_the_epochs():
    assert [_lr_at(0.1, e, 25, "step") for e in (0, 14, 15, 19, 20, 24)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert _lr_at(0.1, 5, 10, "cosine") == pytest.approx(0.05) and _lr_at(0.1, 9, 10, "constant") == 0.1


# --- dense tasks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol,task,options,metric", [
    ("alf", "segmentation", {}, "robust_miou"),
    ("aff", "segmentation", {"loss": "trades", "beta": 1.0}, "robust_miou"),
    ("aff", "depth", {"loss": "pgd-at", "head": {"mode": "regression"}}, "robust_rmse"),
    ("ft", "depth", {"depth_loss": "l1"}, "rmse"),
])
def test_dense_protocols_train_heads_of_the_right_shape_and_select_on_validation(protocol, task, options,
                                                                                  metric):
    train, val = cells_ds(16, "train", 0), cells_ds(6, "val", 1)
    result = finetune(tiny_convnet(), train, val, task=task, protocol=protocol, device="cpu",
                      **{**FAST, **options})
    head_type = SegmentationHead if task == "segmentation" else DepthHead
    assert isinstance(result.model.head, head_type) and result.model.task == task
    with torch.no_grad():
        out = result.model(val.images[:2])
    assert out.shape == ((2, 3, 16, 16) if task == "segmentation" else (2, 1, 16, 16))
    assert result.info["val_metric"] == metric and result.info["val_score"] == result.info["val"][metric]
    if task == "depth":
        assert 0.5 <= float(out.min()) and float(out.max()) <= 5.0  # the dataset's depth range
        assert result.info["head"] == options.get("head", {})


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_slf_dense_heads_depend_on_the_seed_not_on_the_global_random_state(task):
    train, val = cells_ds(16, "train", 0), cells_ds(6, "val", 1)
    encoder = tiny_convnet()
    options = {"epochs": 1, "batch_size": 8}
    heads = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # whatever ran before in this process
        result = finetune(encoder, train, val, task=task, protocol="slf", seed=7, device="cpu", **options)
        heads.append(state_of(result.model.head))
    assert_same_state(*heads)
    other = finetune(encoder, train, val, task=task, protocol="slf", seed=8, device="cpu", **options)
    assert any(not torch.equal(v, state_of(other.model.head)[k]) for k, v in heads[0].items())


def test_bf16_autocast_trains_and_reports_its_precision():
    result = finetune(tiny_convnet(), cells_ds(16, "train", 0), cells_ds(6, "val", 1), protocol="aff",
                      loss="trades", device="cpu", precision="bf16", **FAST)
    assert result.info["precision"] == "bf16" and result.info["loss"] == "trades"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in result.model.parameters())


# --- checkpoints ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["classification", "depth"])
def test_task_model_checkpoint_round_trips(tmp_path, task):
    train, val = cells_ds(16, "train", 0), cells_ds(6, "val", 1)
    options = {"epochs": 1, "batch_size": 8} if task == "depth" else {}
    result = finetune(tiny_convnet(), train, val, task=task, protocol="slf", device="cpu", **options)
    path = save_task_model(result.model, tmp_path / "model", info=result.info)
    loaded = load_task_model(path.parent)
    assert isinstance(loaded, TaskModel) and loaded.task == task and not loaded.training
    x = val.images[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    assert read_task_model_info(path)["val_score"] == pytest.approx(result.info["val_score"])
    assert encoders.load(path.parent / "encoder.safetensors").embed_dim == 8  # the encoder alone loads too

    head_file = path.parent / "head.safetensors"
    head_file.write_bytes(head_file.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_task_model(path)
    with pytest.raises(FileNotFoundError, match="task model not found"):
        load_task_model(tmp_path / "nowhere")


# --- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"protocol": "lp"}, "unknown protocol 'lp'; accepted: slf, alf, aff, ft"),
    ({"task": "embedding"}, "unknown task 'embedding'; accepted: classification"),
    ({"protocol": "slf", "epochs": 3}, "unknown option.*'epochs'.*accepted: .*weight_decays"),
    ({"protocol": "alf", "beta": 6}, "unknown option.*'beta'"),
    ({"protocol": "aff", "loss": "pgd-at", "beta": 6}, "needs loss='trades'"),
    ({"protocol": "aff", "loss": "mart"}, "accepted: pgd-at, trades"),
    ({"protocol": "ft", "epochs": 0}, "'epochs' must be an int >= 1"),
    ({"protocol": "ft", "lr": [0.1, -1.0]}, "'lr' must be a finite number > 0"),
    ({"protocol": "alf", "eps": float("nan")}, "'eps' must be a finite number"),
    ({"protocol": "alf", "select": "test"}, "accepted: clean, robust"),
    ({"protocol": "slf", "train_indices": [0, 99]}, "outside"),
    ({"protocol": "slf", "precision": "fp8"}, "unknown precision"),
    ({"protocol": "slf", "seed": -1}, "seed must be a non-negative int"),
    ({"protocol": "alf", "task": "segmentation"}, "has no mask targets"),
])
def test_bad_input_is_reported_before_any_work(kwargs, message):
    kwargs = {"device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=message):
        finetune(ExplodingEncoder(), colour_ds(12, "train", 0), colour_ds(6, "val", 1), **kwargs)


def test_depth_head_options_are_checked_and_non_encoders_refused():
    train, val = cells_ds(4, "train", 0), cells_ds(4, "val", 1)
    with pytest.raises(ValueError, match="'head' must be a dict with keys among mode, n_bins, bin_spacing"):
        finetune(ExplodingEncoder(), train, val, task="depth", protocol="ft", head={"bins": 3})
    with pytest.raises(ValueError, match="accepted: bins, regression"):
        finetune(ExplodingEncoder(), train, val, task="depth", protocol="ft", head={"mode": "ordinal"})
    with pytest.raises(TypeError, match="robustssl Encoder"):
        finetune(nn.Linear(3, 3), train, val, device="cpu")


# --- CLI --------------------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="robustssl")
    finetune_cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["finetune", *argv])
    return args.func(args)


ENCODER = ["--encoder", "convnet_small", "--encoder-arg", "widths=[4, 8]", "--encoder-arg", "strides=[2, 2]",
           "--device", "cpu"]


def test_cli_fine_tunes_saves_a_loadable_model_and_prints_test_metrics(tmp_path, capsys):
    out = tmp_path / "slf"
    code = _cli([*ENCODER, "--data", "digits", "--data-arg", "size=16", "--task", "classification",
                 "--protocol", "slf", "--n-train", "300", "--n-test", "40", "--out", str(out),
                 "--eval-attack", "pgd", "--eval-steps", "3", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finetune"]["n_train"] == 300 and summary["finetune"]["n_val"] == 179  # digits' val split
    test = summary["test"]
    assert test["clean"]["n"] == 40 and test["robust"]["n"] == 40
    assert test["robust"]["top1"] <= test["clean"]["top1"]
    model = load_task_model(out)
    from robustssl import data

    digits_test = data.load("digits", split="test", size=16)
    assert evaluate(model, digits_test, indices=range(40))["top1"] == pytest.approx(test["clean"]["top1"])
    assert read_task_model_info(out)["test"]["attack_args"] == {"steps": 3}


def test_cli_through_main_with_the_verb_registered(tmp_path, capsys):
    from robustssl.cli import main as cli_main

    assert "finetune" in cli_main.VERBS
    argv = ["finetune", *ENCODER, "--data", "scenes", "--data-arg", "n=24", "--data-arg", "size=32", "--task",
            "segmentation", "--protocol", "alf", "--epochs", "1", "--steps", "1", "--batch-size", "12",
            "--option", "val_steps=1", "--out", str(tmp_path / "alf")]
    assert cli_main.main(argv) == 0
    out = capsys.readouterr().out
    assert "alf on segmentation (scenes)" in out and "clean miou" in out and "robust_miou" in out
    # bad combinations are one-line errors (exit 2) before any work
    assert cli_main.main([*argv[:-2], "--beta", "6", "--out", str(tmp_path / "x")]) == 2
    assert "'beta'" in capsys.readouterr().err
    assert cli_main.main([*argv, "--eval-steps", "5"]) == 2
    assert "--eval-attack, which is not set" in capsys.readouterr().err
    assert cli_main.main(["finetune", "--encoder", "convnet_small", "--data", "digits", "--task", "depth",
                          "--protocol", "ft", "--device", "cpu", "--out", str(tmp_path / "y")]) == 2
    assert "has no depth targets" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
