"""The trainer: checkpoints load back, kill-and-resume equals an uninterrupted run, NaN stops cleanly."""

import pytest
import torch

import robustssl as rs
from robustssl.data.views import SimCLRViews
from robustssl.pretrain import METHODS, TrainConfig, train
from robustssl.pretrain.trainer import STATE_FILE, NonFiniteLossError
from robustssl.runtime import seeded_init


@pytest.fixture(scope="module")
def scenes_small():
    return rs.data.load("scenes", split="train", size=32, n=64)


def _method(seed: int = 0):
    with seeded_init(seed):
        encoder = rs.encoders.create("convnet_small", widths=(8, 16, 16, 32))
        return METHODS.create(
            "simclr", encoder=encoder, proj_hidden_dim=32, proj_dim=16, views=SimCLRViews.preset("tiny")
        )


def _config(**kw):
    base = dict(steps=6, batch_size=16, lr=0.1, warmup_steps=1, device="cpu", seed=3, log_every=0)
    base.update(kw)
    return TrainConfig(**base)


def test_seeded_init_is_reproducible_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = _method(0), _method(0), _method(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.encoder.blocks[0].conv.weight, c.encoder.blocks[0].conv.weight)


def test_checkpoint_loads_back_as_the_same_encoder(scenes_small, tmp_path):
    method = _method()
    summary = train(method, scenes_small, _config(steps=2), out_dir=tmp_path, method_name="simclr")
    loaded = rs.encoders.load(summary["checkpoint"])
    x = scenes_small[0]["image"][None]
    with torch.no_grad():
        assert torch.equal(loaded.eval().embed(x), method.encoder.eval().embed(x))
    assert (tmp_path / "config.json").exists() and (tmp_path / STATE_FILE).exists()


def test_training_changes_the_weights_and_lowers_the_loss(scenes_small):
    method = _method()
    before = [p.detach().clone() for p in method.encoder.parameters()]
    summary = train(method, scenes_small, _config(steps=12, lr=0.3))
    assert any(not torch.equal(a, b) for a, b in zip(before, method.encoder.parameters(), strict=True))
    assert summary["loss"] < 2 * torch.log(torch.tensor(31.0)).item()  # below chance for 2B-1 = 31 candidates


def test_kill_and_resume_gives_the_same_weights(scenes_small, tmp_path):
    reference = _method()
    train(reference, scenes_small, _config(), out_dir=tmp_path / "full")

    interrupted = _method()
    calls = {"n": 0}
    original = interrupted.training_loss

    def dying_loss(batch, generator):
        calls["n"] += 1
        if calls["n"] == 5:  # killed during step 5, after the step-4 checkpoint
            raise KeyboardInterrupt
        return original(batch, generator)

    interrupted.training_loss = dying_loss
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, scenes_small, _config(checkpoint_every=2), out_dir=tmp_path / "run")

    resumed = _method()
    summary = train(resumed, scenes_small, _config(checkpoint_every=2), out_dir=tmp_path / "run", resume=True)
    assert summary["resumed_at"] == 4
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_resume_with_other_settings_is_refused(scenes_small, tmp_path):
    train(_method(), scenes_small, _config(steps=2), out_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot resume"):
        train(_method(), scenes_small, _config(steps=2, lr=0.5), out_dir=tmp_path, resume=True)


def test_nan_loss_stops_before_touching_weights_and_keeps_the_checkpoint(scenes_small, tmp_path):
    method = _method()
    train(method, scenes_small, _config(steps=2), out_dir=tmp_path)
    saved = (tmp_path / "encoder.safetensors").read_bytes()
    original = method.training_loss
    calls = {"n": 0}

    weights_after_first = {}

    def nan_loss(batch, generator):
        calls["n"] += 1
        if calls["n"] == 2:
            weights_after_first.update({k: v.detach().clone() for k, v in method.named_parameters()})
        loss, logs = original(batch, generator)
        return (loss * float("nan"), logs) if calls["n"] == 2 else (loss, logs)

    method.training_loss = nan_loss
    with pytest.raises(NonFiniteLossError, match="step 1"):
        train(method, scenes_small, _config(steps=4), out_dir=tmp_path / "second")
    assert (tmp_path / "encoder.safetensors").read_bytes() == saved
    for k, v in method.named_parameters():  # the bad step's forward may move BN statistics, not weights
        assert torch.equal(v, weights_after_first[k]), k


def test_dataset_smaller_than_a_batch_is_a_clear_error(scenes_small):
    tiny = rs.data.load("scenes", split="train", size=32, n=8)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_method(), tiny, _config(batch_size=16))


def test_pretraining_needs_an_encoder():
    with pytest.raises(TypeError, match="Encoder"):
        METHODS.create("simclr", encoder=torch.nn.Linear(3, 3))
