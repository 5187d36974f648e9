"""Noisy and masked image modelling (``nim``, ``mae``): noise levels, targets, masking, training, saving."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

from robustssl import encoders
from robustssl.pretrain import METHODS, build_method
from robustssl.pretrain.masked_image import (
    NoiseLevel,
    load_denoiser,
    normalized_patches,
    patch_loss,
    patchify,
    random_keep,
    sample_gamma,
    unpatchify,
)
from robustssl.runtime import make_generator, seeded_init

PRESETS = Path(__file__).resolve().parents[1] / "src" / "robustssl" / "configs" / "pretrain"


def tiny(method: str = "nim", img_size: int = 16, **options):
    """A 1-block ViT on 16-px images with a 1-block decoder: milliseconds per step."""
    with seeded_init(0):
        encoder = encoders.create("vit_tiny", img_size=img_size, patch_size=4, depth=1, embed_dim=32,
                                  num_heads=2)
        return build_method(method, encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2, **options)


def images(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- noise levels -------------------------------------------------------------------------------------------
def test_gamma_sigma_has_the_published_mean_and_spread():
    # sigma ~ Gamma(25, 3) in 0-255 units: mean 75, std sqrt(25) * 3 = 15.
    n = 20000
    sigma = NoiseLevel.parse("gamma").sample(n, make_generator(0)) * 255
    standard_error = 15 / math.sqrt(n)
    assert abs(float(sigma.mean()) - 75) < 4 * standard_error
    assert float(sigma.std()) == pytest.approx(15, rel=0.03)
    assert NoiseLevel.parse("gamma").mean == pytest.approx(75 / 255)


@pytest.mark.parametrize("shape", [0.5, 2.0, 25.0])
def test_gamma_sampler_matches_scipy(shape):
    draws = sample_gamma(shape, 5000, make_generator(1)).double().numpy()
    assert stats.kstest(draws, "gamma", args=(shape,)).pvalue > 1e-3


def test_gamma_sampler_is_reproducible_from_the_generator():
    a = sample_gamma(25.0, 100, make_generator(3))
    b = sample_gamma(25.0, 100, make_generator(3))
    assert torch.equal(a, b) and not torch.equal(a, sample_gamma(25.0, 100, make_generator(4)))


def test_fixed_and_uniform_sigma():
    fixed = NoiseLevel.parse("30/255").sample(50, make_generator(0))
    assert torch.allclose(fixed, torch.full((50,), 30 / 255))
    uniform = NoiseLevel.parse([0.1, 0.3]).sample(20000, make_generator(0))
    assert float(uniform.min()) >= 0.1 and float(uniform.max()) <= 0.3
    # U(0.1, 0.3): mean 0.2, std 0.2 / sqrt(12)
    assert abs(float(uniform.mean()) - 0.2) < 4 * (0.2 / math.sqrt(12)) / math.sqrt(20000)


@pytest.mark.parametrize("bad", [-0.1, [0.3, 0.1], [-1, 1], "lots", float("nan"), [0.1], True])
def test_bad_sigma_is_refused(bad):
    with pytest.raises(ValueError, match="sigma"):
        NoiseLevel.parse(bad)


def test_bad_gamma_parameters_are_refused():
    with pytest.raises(ValueError, match="gamma"):
        NoiseLevel.parse("gamma", gamma_shape=0)


# --- targets and masking ------------------------------------------------------------------------------------
def test_patchify_layout_and_round_trip():
    x = images(2, 8)
    patches = patchify(x, 4)
    assert patches.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block, flattened as (row, col, channel)
    assert torch.equal(patches[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(patches, 4, (2, 2)), x)


def test_per_patch_normalized_target_hand_checked():
    # one 2x2x3 patch with a single 1 among twelve values: mean 1/12, unbiased variance 1/12.
    x = torch.zeros(1, 3, 2, 2)
    x[0, 1, 0, 1] = 1.0
    target = normalized_patches(x, 2)[0, 0]
    std = math.sqrt(1 / 12 + 1e-6)
    position = (0 * 2 + 1) * 3 + 1  # row 0, col 1, channel 1
    assert float(target[position]) == pytest.approx((11 / 12) / std, rel=1e-6)
    others = torch.cat([target[:position], target[position + 1:]])
    assert torch.allclose(others, torch.full((11,), -(1 / 12) / std))


def test_mae_masks_exactly_75_percent_of_patches():
    keep, mask = random_keep(5, 64, 0.75, make_generator(0))
    assert keep.shape == (5, 16)
    assert mask.sum(dim=1).tolist() == [48] * 5
    assert not bool(mask.gather(1, keep).any())  # the kept patches are exactly the unmasked ones


def test_patch_loss_counts_only_masked_patches():
    target = torch.zeros(1, 4, 3)
    pred = target.clone()
    pred[0, 0] = 1.0  # error 1 on a visible patch
    pred[0, 2] = 2.0  # error 4 on a masked patch
    mask = torch.tensor([[False, False, True, True]])
    assert float(patch_loss(pred, target, mask)) == pytest.approx(4.0 / 2)
    assert float(patch_loss(pred, target)) == pytest.approx((1.0 + 4.0) / 4)


def _encoder_inputs(method, x, generator):
    """Token counts seen by the first encoder block during one training loss."""
    seen = []
    hook = method.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        method.training_loss({"image": x}, generator)
    finally:
        hook.remove()
    return seen


def test_mae_encoder_runs_only_visible_patches_and_loss_is_masked_mean():
    method = tiny("mae")
    x = images()
    assert _encoder_inputs(method, x, make_generator(0)) == [1 + 4]  # 16 patches, 25% visible, + CLS
    loss, logs = method.training_loss({"image": x}, make_generator(5))
    # the same draws, replayed from the same seed
    x_in, keep, mask = method.corrupt(x, make_generator(5))
    with torch.no_grad():
        per_patch = (method.predict(x_in, keep) - normalized_patches(x, 4)).pow(2).mean(-1)
    assert torch.equal(x_in, x)  # mae adds no noise
    loss = float(loss.detach())
    assert loss == pytest.approx(float(per_patch[mask].mean()), rel=1e-5)
    assert loss != pytest.approx(float(per_patch.mean()), rel=1e-3)
    assert set(logs) == {"mse", "psnr"}


def test_nim_sees_every_patch_of_a_noisy_image():
    method = tiny("nim", sigma=0.1)
    x = images(16)
    assert _encoder_inputs(method, x, make_generator(0)) == [1 + 16]
    x_in, keep, mask = method.corrupt(x, make_generator(0))
    assert keep is None and mask is None
    assert float((x_in - x).std()) == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("method", ["nim", "mae"])
def test_every_parameter_gets_a_gradient(method):
    # DistributedDataParallel refuses parameters that take no part in the loss (nim builds no mask token)
    model = tiny(method)
    loss, _ = model.training_loss({"image": images()}, make_generator(0))
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert (model.decoder.mask_token is None) == (method == "nim")


def test_one_step_lowers_the_loss_and_training_raises_psnr():
    method = tiny("nim")
    batch = {"image": images(16)}
    optimizer = torch.optim.AdamW(method.parameters(), lr=2e-3)
    before, logs_before = method.training_loss(batch, make_generator(7))
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after, _ = method.training_loss(batch, make_generator(7))  # same noise
    assert after.item() < before.item()
    for _ in range(10):
        loss, _ = method.training_loss(batch, make_generator(7))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, logs_after = method.training_loss(batch, make_generator(7))
    assert logs_after["psnr"] > logs_before["psnr"]


# --- construction, registry, save/load ----------------------------------------------------------------------
def test_both_methods_are_registered():
    assert {"nim", "mae"} <= set(METHODS.names())


def test_non_vit_encoder_is_refused():
    with pytest.raises(TypeError, match="vit_tiny"):
        build_method("nim", encoders.create("convnet_small"))


@pytest.mark.parametrize("method, options, match", [
    ("mae", {"mask_ratio": 1.0}, "mask_ratio"),
    ("mae", {"mask_ratio": 0.0}, "nim"),
    ("mae", {"loss_on": "visible"}, "loss_on"),
    ("nim", {"sigma": -1}, "sigma"),
    ("nim", {"mask_ratio": 0.5}, "option"),
])
def test_bad_options_are_refused(method, options, match):
    with pytest.raises(ValueError, match=match):
        tiny(method, **options)


def test_decoder_width_must_suit_sine_cosine_embeddings():
    with seeded_init(0):
        encoder = encoders.create("vit_tiny", img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    with pytest.raises(ValueError, match="decoder"):
        build_method("nim", encoder, decoder_dim=30, decoder_depth=1, decoder_heads=3)


def test_save_and_load_round_trip(tmp_path):
    method = tiny("nim", sigma=[0, "30/255"])
    path = method.save(tmp_path / "denoiser")
    loaded = load_denoiser(tmp_path / "denoiser.json")
    assert loaded.options == method.options and loaded.noise == method.noise
    x = images(4)
    a = method.purify(x, sigma=0.2, generator=make_generator(0))
    b = loaded.purify(x, sigma=0.2, generator=make_generator(0))
    assert torch.equal(a, b)
    raw = path.read_bytes()
    path.write_bytes(raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:]))
    with pytest.raises(ValueError, match="sha256"):
        load_denoiser(path)


def test_load_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="denoiser"):
        load_denoiser(tmp_path / "nothing")
    encoders.save(encoders.create("convnet_small"), tmp_path / "enc")
    with pytest.raises(ValueError, match="not a denoiser"):
        load_denoiser(tmp_path / "enc")


def test_purify_checks_its_input():
    method = tiny("nim")
    with pytest.raises(ValueError, match="16x16"):
        method.purify(images(2, 32), sigma=0.1, generator=make_generator(0))
    with pytest.raises(ValueError, match="sigma"):
        method.purify(images(2), sigma=-0.1, generator=make_generator(0))


# --- presets ------------------------------------------------------------------------------------------------
PRESET_NAMES = ["nim-scenes-tiny", "nim-digits-tiny", "nim-imagenet-paper", "mae-scenes-tiny",
                "mae-digits-tiny", "mae-imagenet-paper"]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_name_a_method_its_options_and_a_vit(name):
    preset = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    assert set(preset) == {"method", "method_options", "encoder", "encoder_options", "data", "data_options",
                           "train"}
    assert preset["method"] == name.split("-")[0]
    assert preset["encoder"] in ("vit_tiny", "vit_small")
    # the options are accepted (checked on a 1-block encoder of the preset's patch grid, not its full size)
    size, patch = preset["encoder_options"]["img_size"], preset["encoder_options"]["patch_size"]
    with seeded_init(0):
        encoder = encoders.create("vit_tiny", img_size=size, patch_size=patch, depth=1, embed_dim=32,
                                  num_heads=2)
    options = {**preset["method_options"], "decoder_depth": 1}
    build_method(preset["method"], encoder, **options)


@pytest.mark.parametrize("name", ["nim-scenes-tiny", "nim-digits-tiny"])
def test_tiny_nim_presets_train_over_every_noise_level_de3_uses(name):
    """The tiny presets draw sigma ~ U(0, 100/255): from clean images (what the linear probe and the task
    models see) up past De3's test noise (benchmarks/defenses.py: 50/255) and the fine-tuning U(0, 30/255)."""
    from robustssl.pretrain.masked_image import NoiseLevel

    options = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())["method_options"]
    noise = NoiseLevel.parse(options["sigma"])
    assert noise.kind == "uniform" and noise.params[0] == 0 and noise.params[1] >= 75 / 255


def test_a_pretraining_run_folder_loads_as_a_denoiser(tmp_path):
    from robustssl.pretrain.presets import from_dict, pretrain_preset

    preset = from_dict({
        "method": "nim",
        "method_options": {"sigma": 0.1, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "encoder": "vit_tiny",
        "encoder_options": {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        "data": "scenes", "data_options": {"n": 8, "size": 32},
        "train": {"steps": 2, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "tensorboard": False}})
    pretrain_preset(preset, tmp_path / "run")
    loaded = load_denoiser(tmp_path / "run")
    assert loaded.method_name == "nim" and loaded.img_size == 32 and not loaded.training
    trained = encoders.load(tmp_path / "run" / "encoder.safetensors")
    assert all(torch.equal(v, loaded.encoder.state_dict()[k]) for k, v in trained.state_dict().items())
    with pytest.raises(FileNotFoundError, match="pretraining run"):
        load_denoiser(tmp_path)
