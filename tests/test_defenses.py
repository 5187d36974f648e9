"""De³ (denoise-then-predict): the wrapper's contract, fine-tuning on denoised images, adaptive evaluation."""

import argparse
import copy
import csv
from dataclasses import replace as dataclasses_replace

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F

from robustssl import data, encoders, threats
from robustssl.cli import defend
from robustssl.defenses import (
    DefenseEvalConfig,
    DenoisedModel,
    denoise_then_classify,
    evaluate_defense,
    finetune_on_denoised,
    headline,
    mae_reconstruction,
    paired_draw_difference,
    tradeoff_curve,
    write_curve,
)
from robustssl.heads.build import build
from robustssl.pretrain import build_method
from robustssl.runtime import make_generator, seeded_init

SIZE = 16


def vit(img_size: int = SIZE):
    return encoders.create("vit_tiny", img_size=img_size, patch_size=4, depth=1, embed_dim=32, num_heads=2)


def denoiser(method: str = "nim", img_size: int = SIZE, **options):
    with seeded_init(0):
        return build_method(method, vit(img_size), decoder_dim=32, decoder_depth=1, decoder_heads=2,
                            **options).eval()


def task_model(task: str = "classification", img_size: int = SIZE):
    with seeded_init(1):
        # scenes: 6 shape classes; masks add the background (7)
        kwargs = {"depth_range": (1.0, 12.0)} if task == "depth" else {
            "num_classes": 7 if task == "segmentation" else 6}
        return build(task, vit(img_size), **kwargs).eval()


@pytest.fixture(scope="module")
def scenes():
    """24 test scenes downsampled to 16 px (labels, masks and depth follow)."""
    ds = data.load("scenes", split="test", n=24, size=32)
    batch = next(ds.batches(24))
    image = F.interpolate(batch["image"], size=SIZE, mode="bilinear", antialias=True).clamp(0, 1)
    mask = batch["mask"][:, ::2, ::2].contiguous()
    depth = batch["depth"][:, ::2, ::2].contiguous()
    return data.TensorDataset(image, name="scenes16", split="test", num_classes=6, depth_range=ds.depth_range,
                              label=batch["label"], mask=mask, depth=depth)


def _x(scenes, n=8):
    return next(scenes.batches(n))["image"]


# --- the wrapper --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, shape", [("classification", (8, 6)), ("segmentation", (8, 7, SIZE, SIZE)),
                                         ("depth", (8, 1, SIZE, SIZE))])
def test_output_shape_per_task(scenes, task, shape):
    defended = denoise_then_classify(denoiser(), task_model(task), sigma=0.2)
    assert defended.task == task
    assert tuple(defended(_x(scenes)).shape) == shape


def test_random_across_calls_and_reproducible_from_the_seed(scenes):
    x = _x(scenes)
    first = denoise_then_classify(denoiser(), task_model(), sigma=0.2, seed=3)
    a, b = first(x), first(x)
    assert not torch.equal(a, b)  # a fresh draw per call
    second = denoise_then_classify(denoiser(), task_model(), sigma=0.2, seed=3)
    assert torch.equal(second(x), a) and torch.equal(second(x), b)  # the same stream from the same seed
    first.reseed()
    assert torch.equal(first(x), a)
    g1, g2 = make_generator(9), make_generator(9)
    assert torch.equal(first(x, generator=g1), second(x, generator=g2))  # an explicit generator rules


def test_sigma_zero_nim_is_deterministic_and_mae_masking_is_random(scenes):
    x = _x(scenes)
    plain = denoise_then_classify(denoiser(), task_model(), sigma=0.0)
    assert torch.equal(plain(x), plain(x))
    masked = mae_reconstruction(denoiser("mae"), task_model())
    assert masked.mask_ratio == 0.75 and masked.sigma == 0
    assert not torch.equal(masked(x), masked(x))


def test_purified_images_are_the_clamped_reconstruction(scenes):
    x = _x(scenes)
    model = denoiser()
    defended = denoise_then_classify(model, task_model(), sigma=0.5)
    purified = defended.purify(x, generator=make_generator(0))
    # the same draws, replayed, without the clamp
    x_in, _, _ = model.corrupt(x, make_generator(0), sigma=0.5, mask_ratio=0.0)
    with torch.no_grad():
        raw = model.to_image(model.predict(x_in), x)
    assert float(raw.min()) < 0 or float(raw.max()) > 1  # the clamp has work to do
    assert torch.allclose(purified, raw.clamp(0, 1), atol=1e-6)
    assert float(purified.detach().min()) >= 0 and float(purified.detach().max()) <= 1


def test_bpda_twin_has_the_same_outputs_and_passes_gradients_through_the_clamp(scenes):
    x = _x(scenes).requires_grad_(True)
    defended = denoise_then_classify(denoiser(), task_model(), sigma=0.5)
    twin = defended.bpda()
    assert twin.straight_through and twin.denoiser is defended.denoiser and twin.model is defended.model
    hard = defended.purify(x, make_generator(0))
    through = twin.purify(x, make_generator(0))
    assert torch.equal(hard, through)
    assert bool(((hard == 0) | (hard == 1)).any())  # saturated pixels, where the two gradients differ
    weights = torch.rand(hard.shape, generator=torch.Generator().manual_seed(1))
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), x)
    (grad_through,) = torch.autograd.grad((through * weights).sum(), x)
    assert not torch.allclose(grad_hard, grad_through)
    assert torch.equal(defended(x, generator=make_generator(2)), twin(x, generator=make_generator(2)))


def test_gradients_flow_through_the_whole_pipeline(scenes):
    x = _x(scenes).requires_grad_(True)
    defended = denoise_then_classify(denoiser(), task_model(), sigma=0.2)
    defended(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


# --- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [-0.01, float("nan"), float("inf"), "0.1", None])
def test_bad_sigma_is_refused(sigma):
    with pytest.raises(ValueError, match="sigma"):
        denoise_then_classify(denoiser(), task_model(), sigma=sigma)


def test_image_size_mismatch_is_refused(scenes):
    with pytest.raises(ValueError, match="16x16.*32x32"):
        denoise_then_classify(denoiser(img_size=16), task_model(img_size=32), sigma=0.1)
    defended = denoise_then_classify(denoiser(), task_model(), sigma=0.1)
    with pytest.raises(ValueError, match="16x16"):
        defended(torch.rand(2, 3, 32, 32))


def test_channel_mismatch_is_refused():
    grey = task_model()
    grey.encoder.in_channels = 1
    with pytest.raises(ValueError, match="channels"):
        denoise_then_classify(denoiser(), grey, sigma=0.1)
    with pytest.raises(ValueError, match="channels"):
        denoise_then_classify(denoiser(), task_model(), sigma=0.1)(torch.rand(2, 1, SIZE, SIZE))


def test_other_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="nim"):
        denoise_then_classify(vit(), task_model(), sigma=0.1)
    with pytest.raises(ValueError, match="mask_ratio"):
        denoise_then_classify(denoiser(), task_model(), sigma=0.1, mask_ratio=1.0)
    with pytest.raises(FileNotFoundError):
        denoise_then_classify("no/such/denoiser", task_model(), sigma=0.1)
    with pytest.raises(ValueError, match="threat"):
        DefenseEvalConfig(threats=("pgd", "fgsm"))


def test_the_wrapper_loads_a_saved_denoiser(tmp_path, scenes):
    model = denoiser()
    model.save(tmp_path / "nim")
    x = _x(scenes)
    from_path = denoise_then_classify(tmp_path / "nim.safetensors", task_model(), sigma=0.2)
    in_memory = denoise_then_classify(model, task_model(), sigma=0.2)
    assert torch.equal(from_path(x), in_memory(x))


# --- fine-tuning on denoised images -------------------------------------------------------------------------
@pytest.mark.parametrize("task, denoised", [("classification", True), ("segmentation", True),
                                            ("classification", False)])
def test_finetune_on_denoised_trains_the_head_only(scenes, task, denoised):
    model, nim = task_model(task), denoiser() if denoised else None
    encoder_before = copy.deepcopy(model.encoder.state_dict())
    head_before = copy.deepcopy(model.head.state_dict())
    info = finetune_on_denoised(model, nim, scenes, epochs=6, batch_size=12, lr=1e-2)
    assert info["sigma"] == (0.0, 30 / 255) and info["steps"] == 12
    assert info["history"][-1] < info["history"][0]
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())
    assert all(p.requires_grad for p in model.encoder.parameters()) and not model.training


def test_finetune_draws_sigma_from_the_range(scenes, monkeypatch):
    nim, seen = denoiser(), []
    original = nim.purify

    def spy(x, *, sigma, mask_ratio, generator):
        seen.append(sigma.clone())
        return original(x, sigma=sigma, mask_ratio=mask_ratio, generator=generator)

    monkeypatch.setattr(nim, "purify", spy)
    finetune_on_denoised(task_model(), nim, scenes, sigma=(0.1, 0.2), epochs=2, batch_size=12)
    drawn = torch.cat(seen)
    assert drawn.numel() == 48 and float(drawn.min()) >= 0.1 and float(drawn.max()) <= 0.2
    assert len(set(drawn.tolist())) == 48  # one sigma per image


def test_finetune_refuses_bad_arguments(scenes):
    with pytest.raises(ValueError, match="sigma"):
        finetune_on_denoised(task_model(), denoiser(), scenes, sigma=(0.2, 0.1))
    with pytest.raises(ValueError, match="sigma"):
        finetune_on_denoised(task_model(), denoiser(), scenes, sigma=(-0.1, 0.1))
    with pytest.raises(ValueError, match="TaskModel"):
        finetune_on_denoised(task_model("classification").encoder, denoiser(), scenes)


# --- adaptive evaluation ------------------------------------------------------------------------------------
def _expected_loss(model, x, y, draws=16):
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y).item() for _ in range(draws)) / draws


@pytest.fixture(scope="module")
def trained(template_data):
    """A tiny nim denoiser and a classifier trained on its reconstructions (template images, 16 px)."""
    g = torch.Generator().manual_seed(0)
    x, y = template_data(400, g, SIZE, 5)
    nim = denoiser(sigma=[0.0, 0.3])
    optimizer = torch.optim.AdamW(nim.parameters(), lr=3e-3)
    for step in range(60):
        loss, _ = nim.training_loss({"image": x[(step % 4) * 100:(step % 4 + 1) * 100]}, make_generator(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    nim.eval()
    with seeded_init(2):
        model = build("classification", vit(), num_classes=10)
    train = data.TensorDataset(x, name="templates", split="train", num_classes=10, label=y)
    finetune_on_denoised(model, nim, train, sigma=(0.0, 0.2), epochs=8, batch_size=50, lr=3e-3,
                         train_encoder=True)
    x_test, y_test = template_data(64, g, SIZE, 5)
    test = data.TensorDataset(x_test, name="templates", split="test", num_classes=10, label=y_test)
    return nim, model, test


@pytest.mark.slow
def test_eot_pgd_is_at_least_as_strong_as_pgd_on_the_defence(trained):
    nim, model, test = trained
    defended = denoise_then_classify(nim, model, sigma=0.15)
    batch = next(test.batches(64))
    x, y = batch["image"], batch["label"]
    common = {"eps": 8 / 255, "steps": 10, "generator": make_generator(0)}
    plain = threats.attack(defended, x, y, "pgd", **common).x_adv
    eot = threats.attack(defended, x, y, "eot", inner="pgd", samples=8, **common).x_adv
    defended.reseed(1)
    clean_acc = sum((defended(x).argmax(1) == y).float().mean().item() for _ in range(8)) / 8
    assert clean_acc > 0.5  # the defended model works, so the comparison means something
    assert _expected_loss(defended, eot, y) >= _expected_loss(defended, plain, y)
    rows = evaluate_defense(model, defended, test, DefenseEvalConfig(
        eps=8 / 255, steps=10, eot_samples=8, n=64, batch_size=64, eval_draws=4, threats=("pgd", "eot-pgd"),
        device="cpu"))
    assert headline(rows, "defended", "eot-pgd") <= headline(rows, "defended", "pgd")
    assert headline(rows, "defended", "clean") == pytest.approx(clean_acc, abs=0.1)


def test_evaluate_defense_rows_for_every_threat_and_task(scenes):
    config = DefenseEvalConfig(eps=4 / 255, steps=2, eot_samples=2, square_queries=5, autoattack_steps=2,
                               autoattack_eot_samples=2, n=6, batch_size=6, device="cpu")
    for task in ("classification", "depth"):
        model = task_model(task)
        defended = denoise_then_classify(denoiser(), model, sigma=0.1)
        rows = evaluate_defense(model, defended, scenes, config)
        seen = {(r["model"], r["threat"]) for r in rows}
        expected = {("undefended", "clean"), ("undefended", "pgd"), ("defended", "clean"),
                    ("defended", "pgd"), ("defended", "eot-pgd"), ("defended", "bpda-eot-pgd"),
                    ("defended", "transfer-pgd"), ("defended", "square")}
        if task == "classification":
            expected.add(("defended", "autoattack-rand"))
        assert seen == expected
        assert all(r["n"] == 6 and r["value"] == r["value"] for r in rows)
        eot = next(r for r in rows if r["threat"] == "eot-pgd")
        plain = next(r for r in rows if r["threat"] == "pgd" and r["model"] == "defended")
        assert eot["fwd"] > plain["fwd"]  # EOT spends its draws


def test_every_threat_is_evaluated_on_the_same_draws(scenes):
    """Common random numbers: with eps 0 every attack returns the clean images, so every defended row must
    equal the clean one draw for draw (before, each threat saw other draws); the attacks' own stream is left
    alone, and the paired difference over draws is then exactly 0."""
    model = task_model("segmentation")
    defended = denoise_then_classify(denoiser(), model, sigma=0.2, seed=5)
    config = DefenseEvalConfig(eps=0.0, steps=2, eot_samples=2, n=8, batch_size=8, eval_draws=3,
                               threats=("pgd", "eot-pgd"), device="cpu")
    rows = evaluate_defense(model, defended, scenes, config)
    miou = {r["threat"]: r for r in rows if r["model"] == "defended" and r["metric"] == "miou"}
    assert len(miou["clean"]["draws"]) == 3
    assert len(set(miou["clean"]["draws"])) > 1  # the draws do differ from one another
    assert miou["pgd"]["draws"] == miou["clean"]["draws"] == miou["eot-pgd"]["draws"]
    assert paired_draw_difference(rows, "defended", "eot-pgd", "pgd") == (0.0, 0.0)
    again = evaluate_defense(model, defended, scenes, dataclasses_replace(config, eval_seed=77))
    other = next(r for r in again
                 if r["model"] == "defended" and r["threat"] == "clean" and r["metric"] == "miou")
    assert other["draws"] != miou["clean"]["draws"]  # eval_seed picks the draws
    assert defended.seed == 5  # the wrapper's own seed is restored after evaluation
    with pytest.raises(ValueError, match="eval_seed"):
        DefenseEvalConfig(eval_seed=-1)


def test_tradeoff_curve_files_exist_and_parse(tmp_path, scenes):
    config = DefenseEvalConfig(steps=2, eot_samples=2, n=6, batch_size=6, device="cpu")
    model = task_model()
    rows = tradeoff_curve(denoiser(), model, scenes, [0.0, 0.1, 0.3], config=config)
    rows += tradeoff_curve(denoiser("mae"), model, scenes, [0.5, 0.75], knob="mask_ratio", config=config)
    csv_path, png_path = write_curve(rows, tmp_path / "curve.csv", tmp_path / "curve.png",
                                     undefended={"clean": 0.5, "robust": 0.1})
    with csv_path.open() as fh:
        parsed = list(csv.DictReader(fh))
    assert [(r["defense"], r["knob"], float(r["value"])) for r in parsed] == [
        ("nim", "sigma", 0.0), ("nim", "sigma", 0.1), ("nim", "sigma", 0.3), ("mae", "mask_ratio", 0.5),
        ("mae", "mask_ratio", 0.75)]
    assert all(0 <= float(r["clean"]) <= 1 and 0 <= float(r["robust"]) <= 1 for r in parsed)
    image = matplotlib.image.imread(png_path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match="knob"):
        tradeoff_curve(denoiser(), model, scenes, [0.1], knob="temperature", config=config)


def test_defend_cli_runs_end_to_end(tmp_path, capsys):
    nim = denoiser(img_size=32)
    nim.save(tmp_path / "nim")
    parser = argparse.ArgumentParser()
    defend.register(parser.add_subparsers())
    args = parser.parse_args([
        "defend", "--denoiser", str(tmp_path / "nim.safetensors"), "--data", "scenes", "--data-arg", "n=40",
        "--task", "classification", "--sigma", "20/255", "--n", "6", "--steps", "2", "--eot-samples", "2",
        "--threats", "pgd,eot-pgd", "--finetune-epochs", "1", "--batch-size", "16", "--curve", "0,20/255",
        "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert args.func(args) == 0
    shown = capsys.readouterr().out
    assert "eot-pgd" in shown and "undefended" in shown
    assert (tmp_path / "out" / "defense.csv").is_file() and (tmp_path / "out" / "tradeoff.png").is_file()
    args.sigma = None
    with pytest.raises(ValueError, match="--sigma"):
        args.func(args)


def test_defense_keeps_the_wrapped_model_untouched(scenes):
    model = task_model()
    before = copy.deepcopy(model.state_dict())
    defended = DenoisedModel(denoiser(), model, sigma=0.1)
    threats.attack(defended, _x(scenes, 4), next(scenes.batches(4))["label"], "eot", inner="pgd", samples=2,
                   steps=2, eps=4 / 255)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
