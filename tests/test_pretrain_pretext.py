"""Pretext-task pretraining (rotation, jigsaw, selfie, their ensemble): the geometry of each task, the jigsaw
permutation set and its survival across resume, the diversity regularizer, the adversarial versions, a
training step, and clear errors."""

import itertools
import math

import pytest
import torch

import robustssl as rs
from robustssl.pretrain import METHODS, TrainConfig, build_method, train
from robustssl.pretrain.jigsaw import check_permutation_set, crop_tiles, min_hamming_distance, permutation_set
from robustssl.pretrain.presets import list_presets, load_preset
from robustssl.pretrain.pretext import assemble_tiles, craft, cut_tiles, gradient_diversity
from robustssl.pretrain.rotation import rotate
from robustssl.pretrain.selfie import mask_patches
from robustssl.runtime import seeded_init

PRETEXT = ("rotation", "jigsaw", "selfie", "pretext-ensemble")
# small heads and grids that suit 16-px test images
TINY_OPTIONS = {
    "rotation": {"hidden_dim": 16},
    "jigsaw": {"grid": 2, "num_permutations": 6, "tile_dim": 8, "hidden_dim": 16},
    "selfie": {"grid": 2, "num_masked": 2, "dim": 16, "layers": 1, "heads": 2},
    "pretext-ensemble": {
        "rotation_hidden_dim": 16,
        "jigsaw_grid": 2,
        "num_permutations": 6,
        "selfie_grid": 2,
        "num_masked": 2,
        "selfie_dim": 16,
        "selfie_layers": 1,
    },
}


def tiny_encoder(seed: int = 0):
    with seeded_init(seed):
        return rs.encoders.create("convnet_small", widths=(8, 8, 16, 16))


def tiny_method(name: str, seed: int = 0, **options):
    encoder = tiny_encoder(seed)
    with seeded_init(seed + 1):
        return build_method(name, encoder, **{**TINY_OPTIONS[name], **options})


def images(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def scenes32():
    return rs.data.load("scenes", split="train", size=32, n=32)


# --- rotation -----------------------------------------------------------------------------------------------
def test_rotate_matches_rot90_on_an_asymmetric_image():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 96  # no symmetry at all
    for k in range(4):
        out = rotate(x, torch.full((2,), k))
        for i in range(2):
            assert torch.equal(out[i], torch.rot90(x[i], k, dims=(1, 2)))
    # a hand-computed quarter turn (counter-clockwise): [[1, 2], [3, 4]] -> [[2, 4], [1, 3]]
    small = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(1, 3, 2, 2)
    assert torch.equal(rotate(small, torch.tensor([1]))[0, 0], torch.tensor([[2.0, 4.0], [1.0, 3.0]]))
    mixed = rotate(x, torch.tensor([3, 1]))
    assert torch.equal(mixed[0], torch.rot90(x[0], 3, dims=(1, 2)))
    assert torch.equal(mixed[1], torch.rot90(x[1], 1, dims=(1, 2)))


def test_rotation_labels_are_balanced_and_are_the_targets():
    method = tiny_method("rotation")
    x = images(12)
    draw = method.task.draw(x, torch.Generator().manual_seed(1))
    assert torch.bincount(draw["k"], minlength=4).tolist() == [3, 3, 3, 3]
    _, targets = method.task.logits(method.encoder, x, draw)
    assert torch.equal(targets, draw["k"])
    every = tiny_method("rotation", all_rotations=True)
    logits, targets = every.task.logits(every.encoder, x, every.task.draw(x, torch.Generator()))
    assert logits.shape == (48, 4) and torch.bincount(targets).tolist() == [12] * 4


# --- jigsaw -------------------------------------------------------------------------------------------------
def test_cut_tiles_is_row_major_and_assemble_inverts_it():
    x = images(2, 12)
    tiles = cut_tiles(x, 3)
    assert tiles.shape == (2, 9, 3, 4, 4)
    assert torch.equal(tiles[:, 5], x[:, :, 4:8, 8:12])  # tile 5 = row 1, column 2
    assert torch.equal(assemble_tiles(tiles, 3), x)
    odd = images(2, 32)  # 32 = 3 * 10 + 2: the centred 30x30 region is tiled
    assert torch.equal(assemble_tiles(cut_tiles(odd, 3), 3), odd[:, :, 1:31, 1:31])


@pytest.mark.parametrize("size, grid", [(12, 3), (32, 3), (16, 2)])
def test_shuffled_tiles_reassemble_with_the_inverse_permutation(size, grid):
    method = tiny_method("jigsaw", grid=grid, num_permutations=5)
    x = images(6, size)
    draw = method.task.draw(x, torch.Generator().manual_seed(2))
    shuffled = method.task.shuffled_tiles(x, draw)
    inverse = method.task.permutations[draw["label"]].argsort(dim=1)
    restored = shuffled[torch.arange(6)[:, None], inverse]
    t = size // grid
    top = (size - grid * t) // 2
    assert torch.equal(assemble_tiles(restored, grid), x[:, :, top : top + grid * t, top : top + grid * t])
    assert not torch.equal(shuffled, cut_tiles(x, grid))


def test_crop_tiles_takes_each_tile_at_its_offset():
    tiles = torch.rand(2, 4, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    top = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    left = torch.tensor([[2, 0, 1, 1], [0, 2, 0, 1]])
    out = crop_tiles(tiles, top, left, 4, 4)
    for b, i in itertools.product(range(2), range(4)):
        t, s = int(top[b, i]), int(left[b, i])
        assert torch.equal(out[b, i], tiles[b, i, :, t : t + 4, s : s + 4])


def brute_force_min_distance(perms: torch.Tensor) -> int:
    rows = perms.tolist()
    return min(sum(a != b for a, b in zip(p, q, strict=True)) for p, q in itertools.combinations(rows, 2))


def test_permutation_set_has_the_claimed_minimum_hamming_distance_and_is_deterministic():
    perms = permutation_set(9, 30, seed=0)
    check_permutation_set(perms, 9, "test")
    assert min_hamming_distance(perms) == brute_force_min_distance(perms)
    assert torch.equal(perms, permutation_set(9, 30, seed=0))
    assert not torch.equal(perms, permutation_set(9, 30, seed=1))
    # Latin squares exist and extend row by row, so farthest-first reaches the maximum distance n for n rows
    assert brute_force_min_distance(permutation_set(9, 9, seed=4)) == 9
    assert brute_force_min_distance(permutation_set(4, 4, seed=5)) == 4
    # every permutation of a 2x2 grid, each once
    assert sorted(map(tuple, permutation_set(4, 24).tolist())) == list(itertools.permutations(range(4)))
    method = tiny_method("jigsaw", grid=3, num_permutations=30)
    assert method.task.min_hamming_distance == brute_force_min_distance(method.task.permutations) >= 6


def test_permutation_set_survives_save_and_resume(scenes32, tmp_path):
    config = TrainConfig(steps=2, batch_size=8, lr=0.05, device="cpu", seed=0, log_every=0, tensorboard=False)
    first = tiny_method("jigsaw", permutation_seed=0)
    saved = first.task.permutations.clone()
    train(first, scenes32, config, out_dir=tmp_path, method_name="jigsaw")
    # rebuilt from options that would generate another set: the checkpoint's set is what it trains with
    rebuilt = tiny_method("jigsaw", permutation_seed=7)
    assert not torch.equal(rebuilt.task.permutations, saved)
    train(rebuilt, scenes32, config, out_dir=tmp_path, method_name="jigsaw", resume=True)
    assert torch.equal(rebuilt.task.permutations, saved)
    assert torch.equal(tiny_method("jigsaw", permutation_seed=0).task.permutations, saved)  # deterministic
    wrong = tiny_method("jigsaw", num_permutations=5)
    with pytest.raises(ValueError, match=r"permutation set has shape \(6, 4\).*num_permutations=5"):
        train(wrong, scenes32, config, out_dir=tmp_path, method_name="jigsaw", resume=True)


def test_a_corrupt_permutation_set_is_refused_on_load():
    method = tiny_method("jigsaw")
    state = method.state_dict()
    state["task.permutations"] = state["task.permutations"].clone()
    state["task.permutations"][0] = torch.tensor([0, 0, 1, 2])
    with pytest.raises(ValueError, match="not permutations"):
        tiny_method("jigsaw").load_state_dict(state)


# --- selfie -------------------------------------------------------------------------------------------------
def test_selfie_masks_the_right_number_of_patches():
    masked, visible = mask_patches(5, 16, 4, torch.Generator().manual_seed(0))
    assert masked.shape == (5, 4) and visible.shape == (5, 12)
    for m, v in zip(masked.tolist(), visible.tolist(), strict=True):
        assert sorted(m + v) == list(range(16))
    assert len({tuple(sorted(m)) for m in masked.tolist()}) > 1  # drawn per image
    method = tiny_method("selfie", grid=4, num_masked=3)
    x = images(4, 16)
    draw = method.task.draw(x, torch.Generator().manual_seed(1))
    assert draw["masked"].shape == (4, 3) and draw["visible"].shape == (4, 13)
    logits, targets = method.task.logits(method.encoder, x, draw)
    assert logits.shape == (12, 3) and targets.tolist() == [0, 1, 2] * 4


def test_selfie_candidate_order_follows_the_masked_positions():
    # swapping two masked positions swaps the candidates' columns and the queries' rows: the loss is the same
    method = tiny_method("selfie", grid=4, num_masked=3).eval()
    x = images(2, 16)
    draw = method.task.draw(x, torch.Generator().manual_seed(5))
    swapped = {**draw, "masked": draw["masked"][:, [1, 0, 2]]}
    with torch.no_grad():
        a, _ = method.task.logits(method.encoder, x, draw)
        b, _ = method.task.logits(method.encoder, x, swapped)
    a, b = a.view(2, 3, 3), b.view(2, 3, 3)
    assert torch.allclose(b, a[:, [1, 0, 2]][:, :, [1, 0, 2]], atol=1e-6)


# --- ensemble regularizer -----------------------------------------------------------------------------------
def test_gradient_diversity_matches_hand_computed_log_det():
    eps = 1e-3
    g1 = torch.tensor([[2.0, 0.0, 0.0]])
    g2 = torch.tensor([[1.0, math.sqrt(3.0), 0.0]])  # 60 degrees from g1: cosine 1/2
    expected = math.log((1 + eps) ** 2 - 0.25)
    assert gradient_diversity([g1, g2], eps).item() == pytest.approx(expected, rel=1e-5)
    eye = torch.eye(3)
    orthogonal = gradient_diversity([eye[0:1] * 5, eye[1:2], eye[2:3] * 0.1], eps).item()
    parallel = gradient_diversity([eye[0:1], eye[0:1] * 3, eye[0:1] * 0.5], eps).item()
    assert orthogonal == pytest.approx(3 * math.log(1 + eps), rel=1e-4)
    assert parallel == pytest.approx(math.log((3 + eps) * eps**2), rel=1e-4)  # eigenvalues 3 + eps, eps, eps
    assert orthogonal > parallel


def test_ensemble_subtracts_the_weighted_log_det_and_trains_through_it():
    x = images(8, 16)
    losses = {}
    for weight in (0.0, 0.5):
        method = tiny_method("pretext-ensemble", diversity_weight=weight)
        loss, logs = method({"image": x}, torch.Generator().manual_seed(3))
        losses[weight] = (loss, logs)
    (_, plain_logs), (reg, logs) = losses[0.0], losses[0.5]
    assert "log_det" not in plain_logs and logs["task_ce"] == pytest.approx(plain_logs["task_ce"], rel=1e-6)
    assert reg.item() == pytest.approx(logs["task_ce"] - 0.5 * logs["log_det"], rel=1e-5)
    # the regularizer reaches the encoder's weights (double backpropagation): same init, same draws
    grads = []
    for weight in (0.0, 1.0):
        method = tiny_method("pretext-ensemble", diversity_weight=weight)
        loss, _ = method({"image": x}, torch.Generator().manual_seed(3))
        grads.append(torch.autograd.grad(loss, method.encoder.blocks[0].conv.weight)[0])
    assert not torch.allclose(grads[0], grads[1])


# --- adversarial versions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRETEXT)
def test_adversarial_inputs_stay_in_the_ball_and_raise_the_loss(name):
    method = tiny_method(name, adversarial=True, steps=3)
    x = images(8, 16)
    g = torch.Generator().manual_seed(4)
    tasks = method.tasks if name == "pretext-ensemble" else {name: method.task}
    draws = {k: t.draw(x, g) for k, t in tasks.items()}

    def loss_of(z):
        return sum(t.loss(method.encoder, z, draws[k])[0] for k, t in tasks.items())

    running = method.encoder.blocks[0].bn.running_mean.clone()
    x_adv = craft(method, loss_of, x, method.threat, 3, 2 / 255, g)
    assert torch.equal(method.encoder.blocks[0].bn.running_mean, running)  # statistics untouched by PGD
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert loss_of(x_adv) >= loss_of(x)
    _, logs = method({"image": x}, torch.Generator().manual_seed(5))
    for task in tasks:
        assert logs[f"{task}_adv_ce"] >= logs[f"{task}_ce"]


# --- training -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRETEXT)
@pytest.mark.parametrize("adversarial", [False, True])
def test_a_training_step_changes_the_encoder(name, adversarial, scenes32):
    method = tiny_method(name, adversarial=adversarial, steps=2)
    before = [p.detach().clone() for p in method.encoder.parameters()]
    summary = train(method, scenes32, TrainConfig(steps=2, batch_size=8, lr=0.05, device="cpu", log_every=0))
    assert math.isfinite(summary["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.encoder.parameters(), strict=True))


def test_methods_are_registered_with_their_options():
    for name in PRETEXT:
        assert name in METHODS.names()
    assert {"adversarial", "eps", "steps", "step_size"} <= set(rs.pretrain.method_options("jigsaw"))
    assert {"diversity_weight", "diversity_eps"} <= set(rs.pretrain.method_options("pretext-ensemble"))


@pytest.mark.parametrize("augment", ["none", "padcrop", "tiny"])
def test_augmentations_keep_the_batch_shape_and_range(augment):
    method = tiny_method("rotation", augment=augment)
    x = images(4, 16)
    out = x if method.augment is None else method.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (augment == "none") == torch.equal(out, x)
    loss, _ = method({"image": x}, torch.Generator().manual_seed(0))
    assert math.isfinite(loss.item())


@pytest.mark.parametrize(
    "preset", [p for p in list_presets() if p.split("-")[0] in ("rotation", "jigsaw", "selfie", "pretext")]
)
def test_presets_name_a_method_with_valid_options(preset):
    loaded = load_preset(preset)
    assert loaded.method in PRETEXT
    adversarial = "-adv-" in preset
    assert bool(loaded.method_options.get("adversarial", False)) == adversarial
    build_method(loaded.method, tiny_encoder(), **loaded.method_options)


# --- bad input ----------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match=r"8x8 are too small for a 3x3 grid"):
        tiny_method("jigsaw", grid=3)({"image": images(4, 8)}, torch.Generator())
    with pytest.raises(ValueError, match=r"too small for a 4x4 grid"):
        tiny_method("selfie", grid=4)({"image": images(4, 12)}, torch.Generator())
    with pytest.raises(ValueError, match=r"num_permutations must be an int in \[2, 24\].*2x2 grid.*got 30"):
        tiny_method("jigsaw", grid=2, num_permutations=30)
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0.*-0.1"):
        tiny_method("rotation", eps=-0.1)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        tiny_method("selfie", adversarial=True, steps=0)
    with pytest.raises(ValueError, match=r"has no option\(s\) 'grid_size'; accepted: .*grid=3"):
        build_method("jigsaw", tiny_encoder(), grid_size=2)
    with pytest.raises(ValueError, match=r"num_masked must be an int in \[2, 3\]"):
        tiny_method("selfie", grid=2, num_masked=4)
    with pytest.raises(ValueError, match="tile_crop"):
        tiny_method("jigsaw", tile_crop=1.5)
    with pytest.raises(ValueError, match=r"unknown augment 'flip'; accepted: none, padcrop"):
        tiny_method("rotation", augment="flip")
    with pytest.raises(ValueError, match="diversity_weight"):
        tiny_method("pretext-ensemble", diversity_weight=-1.0)
    with pytest.raises(ValueError, match="square images"):
        tiny_method("rotation")({"image": torch.rand(2, 3, 16, 20)}, torch.Generator())
    with pytest.raises(TypeError, match="robustssl Encoder"):
        METHODS.get("rotation")(torch.nn.Linear(3, 3))
