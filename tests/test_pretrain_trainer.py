"""The trainer's extensions: LARS, epoch budgets, TensorBoard files, online probe / k-NN monitor, crash-safe
checkpoints, presets and the pretrain CLI, and DDP under torchrun (gloo)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import robustssl as rs
from robustssl.cli.main import main
from robustssl.pretrain import METHODS, TrainConfig, train
from robustssl.pretrain import presets as presets_mod
from robustssl.pretrain.monitor import Monitor, knn_predict
from robustssl.pretrain.optim import LARS, build_optimizer
from robustssl.pretrain.trainer import STATE_FILE, precise_batch_norm
from robustssl.registry import UnknownNameError
from robustssl.runtime import seeded_init
from robustssl.runtime.tensorboard import crc32c

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def scenes_small():
    return rs.data.load("scenes", split="train", size=32, n=64)


@pytest.fixture(scope="module")
def scenes_val():
    return rs.data.load("scenes", split="val", size=32, n=48)


def _method(seed=0):
    with seeded_init(seed):
        encoder = rs.encoders.create("convnet_small", widths=(8, 16, 16, 32))
        return METHODS.create("simclr", encoder=encoder, proj_hidden_dim=32, proj_dim=16, views="tiny")


def _config(**kw):
    base = dict(steps=4, batch_size=16, lr=0.1, device="cpu", seed=3, log_every=0)
    base.update(kw)
    return TrainConfig(**base)


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- LARS -----------------------------------------------------------------------------------------------


def test_lars_step_matches_the_hand_computed_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]).view(1, 2))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer([w, b], "lars", lr=1.0, weight_decay=0.0, momentum=0.9)
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5])  # ||g|| = 1
    opt.step()
    # ratio = 0.001 * 5 / 1: w -= 0.005 * g; the bias (1-D) is not adapted: b -= 1.0 * 0.5
    assert torch.allclose(w.detach(), torch.tensor([[3.0 - 0.003, 4.0 - 0.004]]), atol=1e-7)
    assert torch.allclose(b.detach(), torch.tensor([0.5]))
    w_before = w.detach().clone()
    opt.step()  # same gradient: momentum buffer v = 0.9 v + new update
    ratio = 0.001 * torch.linalg.vector_norm(w_before) / 1.0
    expected = w_before - (0.9 * 0.005 * torch.tensor([[0.6, 0.8]]) + ratio * torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(w.detach(), expected, atol=1e-7)


def test_lars_weight_decay_enters_the_gradient_and_bad_values_are_refused():
    w = torch.nn.Parameter(torch.tensor([[2.0, 0.0]]))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.5)
    w.grad = torch.tensor([[0.0, 1.0]])
    opt.step()
    g = torch.tensor([[1.0, 1.0]])  # grad + 0.5 * w
    ratio = 0.001 * 2.0 / g.norm()
    assert torch.allclose(w.detach(), torch.tensor([[2.0, 0.0]]) - ratio * g, atol=1e-7)
    with pytest.raises(ValueError, match="lr"):
        LARS([w], lr=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer([w], "rmsprop", lr=0.1, weight_decay=0.0)


def test_training_with_lars_changes_the_weights(scenes_small):
    method = _method()
    before = _weights(method.encoder)
    train(method, scenes_small, _config(optimizer="lars", lr=1.0))
    after = method.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


# --- budget ----------------------------------------------------------------------------------------------


def test_epoch_budget_is_epochs_times_full_batches(scenes_small):
    config = _config(steps=None, epochs=2, batch_size=16)
    assert config.total_steps(64) == 8 and config.total_steps(70) == 8
    summary = train(_method(), scenes_small, config)
    assert summary["steps"] == 8
    with pytest.raises(ValueError, match="budget"):
        TrainConfig(steps=None, epochs=None)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_empty_dataset_is_a_clear_error():
    empty = rs.data.TensorDataset(torch.zeros(0, 3, 32, 32), name="empty", split="train")
    with pytest.raises(ValueError, match="empty"):
        train(_method(), empty, _config())


# --- TensorBoard ---------------------------------------------------------------------------------------


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0


def test_tensorboard_scalars_are_readable_by_tensorboard(scenes_small, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    summary = train(_method(), scenes_small, _config(), out_dir=tmp_path)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert losses[-1].value == pytest.approx(summary["loss"], rel=1e-6)
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and lrs[0] > lrs[-1]  # cosine decays to 0


# --- monitor --------------------------------------------------------------------------------------------


def test_knn_predict_hand_example():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 0.05], [0.02, 1.0]])
    assert knn_predict(query, bank, labels, 2, k=2).tolist() == [0, 1]
    # k = 4 with a sharp temperature: the nearest neighbours dominate the vote
    assert knn_predict(query, bank, labels, 2, k=4, temperature=0.01).tolist() == [0, 1]
    with pytest.raises(ValueError, match="D"):
        knn_predict(torch.zeros(2, 3), bank, labels, 2)


def test_monitor_reports_and_leaves_training_unchanged(scenes_small, scenes_val):
    plain, watched = _method(), _method()
    train(plain, scenes_small, _config())
    summary = train(watched, scenes_small, _config(monitor_every=2), monitor_dataset=scenes_val)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, watched.state_dict()[k]), k
    assert 0.0 <= summary["knn_top1"] <= 1.0 and 0.0 <= summary["online_probe_top1"] <= 1.0


def test_monitor_separates_separable_features():
    # An identity "encoder" on images whose mean colour is the class: k-NN must be perfect.
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=gen)
    images = torch.rand(60, 3, 32, 32, generator=gen) * 0.1
    images[torch.arange(60), labels] += 0.8
    ds = rs.data.TensorDataset(images, name="colours", split="train", num_classes=3, label=labels)
    encoder = rs.encoders.from_module(torch.nn.Identity(), lambda m, x: x.mean((2, 3)), mean=None, std=None)
    monitor = Monitor(encoder, ds, ds, k=5)
    assert monitor.evaluate()["knn_top1"] == 1.0


def test_monitor_needs_labels(scenes_small):
    unlabelled = rs.data.TensorDataset(torch.rand(32, 3, 32, 32), name="unlabelled", split="train")
    with pytest.raises(ValueError, match="labels"):
        train(_method(), unlabelled, _config(monitor_every=2), monitor_dataset=unlabelled)
    with pytest.raises(ValueError, match="monitor_dataset"):
        train(_method(), scenes_small, _config(monitor_every=2))


# --- crash-safe checkpoints ---------------------------------------------------------------------------


def test_a_crash_while_writing_the_state_keeps_the_previous_one(scenes_small, tmp_path, monkeypatch):
    train(_method(), scenes_small, _config(steps=4, checkpoint_every=2), out_dir=tmp_path)
    good = (tmp_path / STATE_FILE).read_bytes()
    import robustssl.encoders.checkpoints as ckpt

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        train(_method(), scenes_small, _config(steps=4, checkpoint_every=2), out_dir=tmp_path / "x")
    with pytest.raises(KeyboardInterrupt):
        train(_method(), scenes_small, _config(steps=4, checkpoint_every=2), out_dir=tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


# --- precise batch norm ---------------------------------------------------------------------------------


def _bn_stats(encoder):
    return {k: v.clone() for k, v in encoder.state_dict().items() if "running_" in k or "num_batches" in k}


def test_precise_bn_first_layer_matches_the_hand_computed_statistics(scenes_small):
    """The first BN layer's input (normalize + conv of the image) does not depend on any BN statistics, so
    its recomputed running mean and variance must be the per-channel mean and unbiased variance of that
    input over the images used (one batch of all 64 here)."""
    encoder = _method().encoder
    first = encoder.blocks[0]
    seen = []
    handle = first.bn.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    weights = {k: v.clone() for k, v in encoder.state_dict().items() if "running_" not in k}
    momentum = first.bn.momentum
    encoder.eval()
    used = precise_batch_norm(encoder, scenes_small, 1000, 64, seed=0, device=torch.device("cpu"))
    handle.remove()
    assert used == 64 and len(seen) == 1
    x = seen[0].transpose(0, 1).reshape(first.bn.num_features, -1)
    torch.testing.assert_close(first.bn.running_mean, x.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.bn.running_var, x.var(1, unbiased=True), rtol=1e-5, atol=1e-6)
    # weights, momentum and mode restored
    after = encoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in weights.items() if "num_batches" not in k)
    assert first.bn.momentum == momentum and not encoder.training


def test_precise_bn_is_idempotent_and_replaces_the_training_statistics(scenes_small):
    encoder = _method().encoder
    train_stats = _bn_stats(encoder)
    precise_batch_norm(encoder, scenes_small, 48, 16, seed=1, device=torch.device("cpu"))
    once = _bn_stats(encoder)
    assert any(not torch.equal(once[k], train_stats[k]) for k in once if "running_mean" in k)
    precise_batch_norm(encoder, scenes_small, 48, 16, seed=1, device=torch.device("cpu"))
    twice = _bn_stats(encoder)
    assert all(torch.equal(once[k], twice[k]) for k in once)


def test_training_with_precise_bn_equals_recomputing_after_training(scenes_small, tmp_path):
    """The option only touches the statistics at the end: the weights equal a run without it, the saved
    checkpoint carries the recomputed statistics, and resuming the finished run changes nothing."""
    plain, precise = _method(), _method()
    train(plain, scenes_small, _config())
    summary = train(precise, scenes_small, _config(precise_bn_images=64), out_dir=tmp_path)
    assert summary["precise_bn_images"] == 64
    p, q = plain.encoder.state_dict(), precise.encoder.state_dict()
    assert all(torch.equal(p[k], q[k]) for k in p if "running_" not in k and "num_batches" not in k)
    assert any(not torch.equal(p[k], q[k]) for k in p if "running_mean" in k)
    precise_batch_norm(plain.encoder, scenes_small, 64, 16, seed=3, device=torch.device("cpu"))
    reference = _bn_stats(plain.encoder)
    saved = rs.encoders.load(tmp_path / "encoder.safetensors")
    assert all(torch.equal(reference[k], v) for k, v in _bn_stats(saved).items() if "running_" in k)
    resumed = _method()
    train(resumed, scenes_small, _config(precise_bn_images=64), out_dir=tmp_path, resume=True)
    assert all(torch.equal(reference[k], v) for k, v in _bn_stats(resumed.encoder).items() if "running_" in k)


def test_precise_bn_bad_settings_are_clear_errors(scenes_small):
    with pytest.raises(ValueError, match="precise_bn_images must be >= 0"):
        _config(precise_bn_images=-1)
    with seeded_init(0):
        encoder = rs.encoders.create("convnet_small", widths=(8, 16, 16, 32), dual_bn=True)
    acl = METHODS.create("acl", encoder=encoder, proj_hidden_dim=32, proj_dim=16, views="tiny")
    before = _weights(acl)
    with pytest.raises(ValueError, match="adversarial branch"):
        train(acl, scenes_small, _config(precise_bn_images=64))
    after = acl.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # refused before any step
    vit = rs.encoders.create("vit_tiny", img_size=32, patch_size=8, depth=1)
    rotation = METHODS.create("rotation", encoder=vit)
    with pytest.raises(ValueError, match="no batch-norm layers"):
        train(rotation, scenes_small, _config(precise_bn_images=64))


# --- presets --------------------------------------------------------------------------------------------


def test_every_shipped_preset_is_valid():
    names = presets_mod.list_presets()
    assert "simclr-scenes-tiny" in names
    for name in names:
        preset = presets_mod.load_preset(name)
        options = rs.pretrain.method_options(preset.method)
        assert set(preset.method_options) <= set(options), name
        assert preset.encoder in rs.encoders.names() or ":" in preset.encoder, name
        assert preset.data in rs.data.names(), name
        TrainConfig(**preset.train)


def test_preset_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: simclr\ntrian: {steps: 3}\n")
    with pytest.raises(ValueError, match="trian"):
        presets_mod.load_preset(bad)
    bad.write_text("method: simclr\ntrain: {stpes: 3}\n")
    with pytest.raises(ValueError, match="stpes"):
        presets_mod.load_preset(bad)
    bad.write_text("method: [simclr\n")
    with pytest.raises(ValueError, match="YAML"):
        presets_mod.load_preset(bad)
    with pytest.raises(UnknownNameError, match="simclr-scenes-tiny"):
        presets_mod.load_preset("simclr-scenes-tinny")
    with pytest.raises(ValueError, match="section"):
        presets_mod.override(presets_mod.load_preset("simclr-scenes-tiny"), ["trian.lr=1"])


def test_override_and_unknown_method_option():
    preset = presets_mod.load_preset("simclr-scenes-tiny")
    changed = presets_mod.override(preset, ["train.lr=0.1", "method_options.temperature=0.2", "data=digits"])
    assert changed.train["lr"] == 0.1 and changed.method_options["temperature"] == 0.2
    assert changed.data == "digits" and preset.train["lr"] == 0.5
    assert changed.digest() != preset.digest()
    encoder = rs.encoders.create("convnet_small", widths=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="temprature.*accepted.*temperature"):
        rs.pretrain.build_method("simclr", encoder, temprature=0.1)


def _tiny_preset():
    return presets_mod.override(
        presets_mod.load_preset("simclr-scenes-tiny"),
        [
            "train.steps=2",
            "train.batch_size=16",
            "train.warmup_steps=0",
            "data_options.n=32",
            "method_options.proj_hidden_dim=16",
            "encoder_options.widths=[8, 8, 8, 8]",
        ],
    )


def test_pretrain_preset_reuses_a_finished_run_and_protects_others(tmp_path, monkeypatch):
    preset = _tiny_preset()
    path = presets_mod.pretrain_preset(preset, tmp_path / "a")
    assert rs.encoders.load(path).embed_dim == 8
    import robustssl.pretrain.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert presets_mod.pretrain_preset(preset, tmp_path / "a") == path
    other = presets_mod.override(preset, ["train.lr=0.2"])
    with pytest.raises(ValueError, match="another preset"):
        presets_mod.pretrain_preset(other, tmp_path / "a")


def test_pretrain_cli_with_a_preset_and_list(tmp_path, capsys):
    assert main(["pretrain", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "simclr" in listing and "temperature=0.5" in listing and "simclr-scenes-tiny" in listing
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--preset",
        "simclr-scenes-tiny",
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "data_options.n=32",
        "--set",
        "encoder_options.widths=[8, 8, 8, 8]",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("encoder.safetensors")
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["steps"] == 2 and resolved["method"] == "simclr"
    assert (
        main(
            [
                "pretrain",
                "--preset",
                "simclr-scenes-tiny",
                "--set",
                "method_options.tau=1",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "accepted" in capsys.readouterr().err


# --- DDP ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_script(method: str, out: Path, ranks: int) -> list[float]:
    script = str(HERE / "ddp_pretrain_script.py")
    if ranks == 1:
        cmd = [sys.executable, script, method, str(out)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={ranks}",
            f"--master_port={_free_port()}",
            script,
            method,
            str(out),
        ]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "ROBUSTSSL_PROGRESS": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "params.json").read_text())


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    """Contrastive loss with negatives gathered across ranks, no random views, no BatchNorm: exact match."""
    single = _run_script("contrastive", tmp_path / "one", 1)
    double = _run_script("contrastive", tmp_path / "two", 2)
    assert double[0] == double[1]  # the ranks stay in sync
    one = load_file(str(tmp_path / "one" / "encoder.safetensors"))
    two = load_file(str(tmp_path / "two" / "encoder.safetensors"))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k
    start = rs.encoders.create("vit_tiny", img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    assert abs(single[0] - sum(p.double().sum().item() for p in start.parameters())) > 1e-3  # it trained


@pytest.mark.slow
def test_ddp_simclr_keeps_ranks_in_sync_and_rank0_writes(tmp_path):
    sums = _run_script("simclr", tmp_path, 2)
    assert len(sums) == 2 and sums[0] == sums[1]
    assert (tmp_path / "encoder.safetensors").exists() and (tmp_path / STATE_FILE).exists()
    assert json.loads((tmp_path / "config.json").read_text())["world_size"] == 2


def test_ddp_precise_bn_leaves_every_rank_with_the_statistics_of_one_recomputation(tmp_path):
    """Each rank recomputes the statistics on the same seeded images, so the ranks agree on weights and
    running statistics, and rank 0's saved statistics are what one process recomputes from those weights."""
    sums = _run_script("precise-bn", tmp_path, 2)
    assert len(sums) == 2 and sums[0] == sums[1]
    saved = rs.encoders.load(tmp_path / "encoder.safetensors")
    expected = rs.encoders.load(tmp_path / "encoder.safetensors")
    for bn in _batch_norms_of(expected):
        bn.running_mean.fill_(123.0)  # whatever was there must not matter
    data = rs.data.load("scenes", split="train", size=32, n=64)
    precise_batch_norm(expected, data, 64, 16, seed=1, device=torch.device("cpu"))
    for got, want in zip(_batch_norms_of(saved), _batch_norms_of(expected), strict=True):
        torch.testing.assert_close(got.running_mean, want.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.running_var, want.running_var, rtol=1e-5, atol=1e-6)


def _batch_norms_of(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("name", [n for n in METHODS.names() if not n.startswith("test-")])
def test_every_method_refuses_a_module_without_the_encoder_interface(name):
    from torch import nn

    from robustssl.pretrain import build_method

    with pytest.raises(TypeError, match=r"needs a robustssl Encoder \(embed/dense\), got Conv2d"):
        build_method(name, nn.Conv2d(3, 8, 3))
