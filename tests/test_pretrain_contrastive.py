"""The adversarial contrastive methods (acl, advcl, deacl) and their parts: the high-pass filter, k-means, the
multi-view NT-Xent and cluster-head losses, the weak views, the pseudo-label cache, the frozen teacher."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import robustssl as rs
from robustssl.data.base import TensorDataset
from robustssl.encoders.batchnorm import DualBatchNorm2d
from robustssl.pretrain import METHODS, build_method, method_options
from robustssl.pretrain import advcl as advcl_module
from robustssl.pretrain import deacl as deacl_module
from robustssl.pretrain.advcl import cluster_heads_loss
from robustssl.pretrain.clustering import kmeans
from robustssl.pretrain.deacl import distillation_loss
from robustssl.pretrain.frequency import high_frequency_view, high_pass
from robustssl.pretrain.losses import multi_view_nt_xent, nt_xent
from robustssl.pretrain.presets import load_preset
from robustssl.pretrain.weak_views import PadCropFlip
from robustssl.runtime import make_generator, seeded_init

EPS = 8 / 255
WIDTHS = (4, 8, 8, 16)
PRESET_DIR = Path(rs.__file__).parent / "configs" / "pretrain"


def tiny_encoder(dual_bn: bool = True, seed: int = 0):
    with seeded_init(seed):
        return rs.encoders.create("convnet_small", widths=WIDTHS, dual_bn=dual_bn)


def tiny_dataset(n: int = 40, size: int = 16, seed: int = 0) -> TensorDataset:
    g = make_generator(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g), name="noise", split="train")


def batch_of(dataset: TensorDataset, n: int = 8) -> dict[str, torch.Tensor]:
    batch = next(dataset.batches(n))
    batch["index"] = torch.arange(n)
    return batch


def small_options(name: str, tmp_path: Path, **extra):
    opts = {"proj_hidden_dim": 16, "proj_dim": 8} if name in ("acl", "advcl") else {}
    if name == "advcl":
        opts.update(cluster_ks=[2, 3], cache_dir=tmp_path / "cache", feature_encoder=tiny_encoder(False, 5))
    return {**opts, **extra}


# --- high-pass filter ---------------------------------------------------------------------------------------
def test_high_pass_zeroes_a_constant_image_and_keeps_a_checkerboard():
    constant = torch.full((2, 3, 16, 16), 0.7)
    assert high_pass(constant, 8).abs().max() < 1e-6
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((rows + cols) % 2).float().expand(1, 3, 16, 16) - 0.5  # all energy at (8, 8): radius 11.3
    assert torch.allclose(high_pass(checker, 8), checker, atol=1e-5)
    # with its mean 0.5 added back the checkerboard loses exactly its zero frequency
    assert torch.allclose(high_pass(checker + 0.5, 8), checker, atol=1e-5)


def test_high_pass_splits_frequencies_at_the_radius():
    x = torch.arange(32).float()
    low = torch.cos(2 * math.pi * 3 * x / 32).expand(32, 32)  # 3 cycles per image: inside r = 8
    high = torch.cos(2 * math.pi * 12 * x / 32).expand(32, 32)  # 12 cycles: outside
    out = high_pass(low + high, 8)
    assert torch.allclose(out, high, atol=1e-5)
    assert torch.allclose(high_pass(low + high, 0), low + high, atol=1e-5)  # radius 0: identity


def test_high_frequency_view_is_an_image():
    x = torch.rand(4, 3, 16, 16, generator=make_generator(0))
    view = high_frequency_view(x, 4)
    assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1
    with pytest.raises(ValueError, match="radius"):
        high_pass(x, -1)


# --- k-means ------------------------------------------------------------------------------------------------
def blobs(seed: int = 0):
    g = make_generator(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(25)
    return centres[truth] + 0.3 * torch.randn(100, 2, generator=g), truth


def test_kmeans_recovers_well_separated_blobs():
    x, truth = blobs()
    result = kmeans(x, 4, make_generator(1), chunk=7)  # small chunk: the batched distances are exercised
    assert result.converged
    # each true blob is one cluster, and the four clusters are distinct
    mapping = {int(t): set(result.labels[truth == t].tolist()) for t in range(4)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 4
    expected = sum(((x[truth == t] - x[truth == t].mean(0)) ** 2).sum() for t in range(4))
    assert result.inertia == pytest.approx(float(expected), rel=1e-4)


def test_kmeans_is_deterministic_for_a_fixed_generator():
    x = torch.randn(200, 5, generator=make_generator(3))
    a, b = kmeans(x, 6, make_generator(9)), kmeans(x, 6, make_generator(9))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert set(a.labels.tolist()) == set(range(6))


def test_kmeans_rejects_bad_input():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, N\] = \[1, 5\]"):
        kmeans(x, 6, make_generator(0))
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0, float("nan")]] * 3), 2, make_generator(0))


# --- losses -------------------------------------------------------------------------------------------------
def test_multi_view_nt_xent_equals_nt_xent_for_two_views():
    g = make_generator(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    expected = nt_xent(z1, z2, 0.3).item()
    assert multi_view_nt_xent(torch.stack([z1, z2], 1), 0.3).item() == pytest.approx(expected)


def test_multi_view_nt_xent_three_identical_views_hand_computed():
    # two orthogonal images, three identical views each, t = 1: an anchor sees exp(1) twice (its positives)
    # and exp(0) three times among its 5 candidates.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, None, :].expand(2, 3, 2)
    expected = -math.log(math.e / (2 * math.e + 3))
    assert multi_view_nt_xent(z, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_cluster_heads_loss_hand_computed():
    labels = torch.tensor([[0, 3], [1, 0]])
    zero = [torch.zeros(2, 2), torch.zeros(2, 4)]  # uniform: CE = log k per head
    assert cluster_heads_loss(zero, labels).item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    sure = [torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.zeros(2, 4)]
    head0 = math.log(1 + math.exp(-5))  # both rows put logit 5 on the right label
    assert cluster_heads_loss(sure, labels).item() == pytest.approx((head0 + math.log(4)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="one column per head"):
        cluster_heads_loss(zero, labels[:, :1])


def test_distillation_loss_hand_computed():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # cosines 1/sqrt(2) and 1
    adv = torch.tensor([[-1.0, 0.0], [0.0, 3.0]])  # cosines -1 and 1
    loss, cos_t, cos_a = distillation_loss(s, adv, t, 2.0)
    assert cos_t.item() == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert cos_a.item() == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(1 - cos_t.item() + 2.0 * 1.0)


# --- weak views ---------------------------------------------------------------------------------------------
def test_pad_crop_flip_is_a_translation_and_a_mirror():
    x = torch.rand(5, 3, 8, 8, generator=make_generator(0))
    assert torch.equal(PadCropFlip(padding=0, flip_p=0.0)(x, make_generator(1)), x)
    assert torch.equal(PadCropFlip(padding=0, flip_p=1.0)(x, make_generator(1)), x.flip(3))
    out = PadCropFlip(padding=2)(x, make_generator(2))
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(5):  # every output is one window of the padded image, mirrored or not
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


# --- the methods --------------------------------------------------------------------------------------------
def test_methods_are_registered_with_their_options():
    for name in ("acl", "advcl", "deacl"):
        assert name in METHODS
    assert {"eps", "steps", "step_size", "adv_weight"} <= set(method_options("acl"))
    advcl_options = {"ce_weight", "cluster_ks", "hfc_radius", "cache_dir", "feature_encoder"}
    assert advcl_options <= set(method_options("advcl"))
    assert {"teacher", "weight", "attack_anchor"} <= set(method_options("deacl"))
    with pytest.raises(ValueError, match="no option"):
        build_method("acl", tiny_encoder(), lambda_=0.2)


@pytest.mark.parametrize("name", ["acl", "advcl"])
def test_dual_bn_methods_refuse_a_plain_encoder(name, tmp_path):
    with pytest.raises(ValueError, match=r"dual_bn=True.*create\('resnet18_cifar', dual_bn=True\)"):
        build_method(name, tiny_encoder(dual_bn=False), **small_options(name, tmp_path))


@pytest.mark.parametrize("name", ["acl", "advcl", "deacl"])
def test_negative_eps_is_refused(name, tmp_path):
    with pytest.raises(ValueError, match=f"{name}: eps must be a number in"):
        build_method(name, tiny_encoder(), **small_options(name, tmp_path, eps=-0.01))


def test_negative_lambda_and_weight_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"ce_weight \(λ\) must be >= 0"):
        build_method("advcl", tiny_encoder(), **small_options("advcl", tmp_path, ce_weight=-0.2))
    with pytest.raises(ValueError, match=r"weight \(ω\) must be >= 0"):
        build_method("deacl", tiny_encoder(), weight=-1.0)


def bn_stats(encoder, branch: str) -> torch.Tensor:
    layers = [m for m in encoder.modules() if isinstance(m, DualBatchNorm2d)]
    return torch.cat([getattr(m, branch).running_mean for m in layers])


def prepared(name: str, tmp_path: Path, **extra):
    dataset = tiny_dataset()
    method = build_method(name, tiny_encoder(), **small_options(name, tmp_path, **extra))
    method.setup(dataset, torch.device("cpu"), make_generator(4))
    return method.train(), dataset


@pytest.mark.parametrize("name", ["acl", "advcl", "deacl"])
def test_one_step_trains_the_encoder_and_nothing_frozen(name, tmp_path):
    method, dataset = prepared(name, tmp_path)
    frozen = {k: v.clone() for k, v in method.teacher.state_dict().items()} if name == "deacl" else {}
    labels = method.pseudo_labels.clone() if name == "advcl" else None
    before = [p.detach().clone() for p in method.encoder.parameters()]
    clean_stats, adv_stats = (bn_stats(method.encoder, b).clone() for b in ("clean", "adv"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05)
    loss, logs = method(batch_of(dataset), make_generator(1))
    assert loss.dim() == 0 and torch.isfinite(loss) and logs
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert method.training and all(m.training for m in method.modules())  # the attack's eval mode undone
    assert any(not torch.equal(a, b) for a, b in zip(before, method.encoder.parameters(), strict=True))
    if name == "deacl":
        assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in frozen.items())
    if name == "advcl":
        assert torch.equal(labels, method.pseudo_labels)
    if name in ("acl", "advcl"):  # each branch saw its own inputs: both moved, differently
        new_clean, new_adv = bn_stats(method.encoder, "clean"), bn_stats(method.encoder, "adv")
        assert not torch.equal(new_clean, clean_stats) and not torch.equal(new_adv, adv_stats)
        assert not torch.allclose(new_clean, new_adv)


@pytest.mark.parametrize("name", ["acl", "advcl", "deacl"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(name, tmp_path):
    method, dataset = prepared(name, tmp_path, eps=0.0, steps=1)
    batch = batch_of(dataset, 16)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss, _ = method(batch, make_generator(3))  # the same views every step
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]


def test_acl_adversarial_views_stay_in_the_ball_and_raise_the_loss(tmp_path):
    method, dataset = prepared("acl", tmp_path, steps=3)
    x = batch_of(dataset)["image"]
    x1, x2 = method.views(x, make_generator(0)), method.views(x, make_generator(1))
    a1, a2 = method.adversarial_pair(x1, x2, make_generator(2))
    for clean, adv in ((x1, a1), (x2, a2)):
        assert (adv - clean).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    method.eval()
    with torch.no_grad():
        def pair_loss(u, v):
            return nt_xent(method.project(u, "adv"), method.project(v, "adv"), method.temperature).item()

        assert pair_loss(a1, a2) > pair_loss(x1, x2)


def test_advcl_and_deacl_adversarial_examples_stay_in_the_ball(tmp_path, monkeypatch):
    seen = []
    original = advcl_module.maximize

    def recording(loss_fn, x, **kw):
        out = original(loss_fn, x, **kw)
        seen.append((x, out))
        return out

    for module_name, module in (("advcl", advcl_module), ("deacl", deacl_module)):
        monkeypatch.setattr(module, "maximize", recording)
        method, dataset = prepared(module_name, tmp_path)
        method(batch_of(dataset), make_generator(0))
    assert len(seen) == 2
    for x, adv in seen:
        assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert not torch.equal(adv, x)


# --- AdvCL pseudo-labels ------------------------------------------------------------------------------------
def counting_kmeans(monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1])
        return kmeans(*args, **kwargs)

    monkeypatch.setattr(advcl_module, "kmeans", counted)
    return calls


def test_advcl_pseudo_labels_are_cached_and_invalidated_by_a_new_feature_encoder(tmp_path, monkeypatch):
    calls = counting_kmeans(monkeypatch)
    dataset = tiny_dataset()
    first, _ = prepared("advcl", tmp_path)
    assert calls == [2, 3] and first.pseudo_labels.shape == (40, 2)
    assert first.cache_file.is_file() and first.cache_file.parent == tmp_path / "cache"
    assert set(first.pseudo_labels[:, 1].tolist()) == {0, 1, 2}

    again, _ = prepared("advcl", tmp_path)  # a rerun / resume: same options, same generator
    assert calls == [2, 3] and torch.equal(again.pseudo_labels, first.pseudo_labels)

    other = build_method("advcl", tiny_encoder(),
                         **small_options("advcl", tmp_path, feature_encoder=tiny_encoder(False, 6)))
    other.setup(dataset, torch.device("cpu"), make_generator(4))
    assert calls == [2, 3, 2, 3] and other.cache_file != first.cache_file


def test_advcl_caps_k_and_refuses_k_above_the_dataset(tmp_path):
    method = build_method("advcl", tiny_encoder(), **small_options("advcl", tmp_path, cluster_ks=[2, 10, 50]))
    assert method.ks_for(40) == [2, 4, 4]  # capped at n / 10
    method.setup(tiny_dataset(), torch.device("cpu"), make_generator(0))
    assert method.pseudo_labels.shape == (40, 3)
    assert method.cluster_logits(torch.zeros(2, 16))[2].shape == (2, 4)
    uncapped = build_method("advcl", tiny_encoder(),
                            **small_options("advcl", tmp_path, cluster_ks=[2, 50], max_k_fraction=None))
    with pytest.raises(ValueError, match=r"cluster k=50 is larger than dataset 'noise' \(40 samples\)"):
        uncapped.setup(tiny_dataset(), torch.device("cpu"), make_generator(0))
    with pytest.raises(ValueError, match="cluster_ks must be a non-empty list of ints >= 2"):
        build_method("advcl", tiny_encoder(), **small_options("advcl", tmp_path, cluster_ks=[1]))


def test_advcl_needs_setup_before_training(tmp_path):
    method = build_method("advcl", tiny_encoder(), **small_options("advcl", tmp_path))
    with pytest.raises(RuntimeError, match="call setup"):
        method(batch_of(tiny_dataset()), make_generator(0))


def test_advcl_pretrains_and_caches_its_own_feature_encoder(tmp_path, monkeypatch):
    calls = counting_kmeans(monkeypatch)
    options = small_options("advcl", tmp_path, feature_encoder="simclr", feature_steps=2,
                            feature_batch_size=8, feature_options={"proj_hidden_dim": 8, "proj_dim": 4})
    first = build_method("advcl", tiny_encoder(), **options)
    first.setup(tiny_dataset(), torch.device("cpu"), make_generator(4))
    cached = sorted(p.name for p in (tmp_path / "cache").glob("simclr-*.safetensors"))
    assert len(cached) == 1 and len(calls) == 2
    second = build_method("advcl", tiny_encoder(), **options)
    second.setup(tiny_dataset(), torch.device("cpu"), make_generator(4))
    assert len(calls) == 2 and torch.equal(first.pseudo_labels, second.pseudo_labels)


def test_advcl_refuses_an_unknown_feature_encoder(tmp_path):
    method = build_method("advcl", tiny_encoder(),
                          **small_options("advcl", tmp_path, feature_encoder=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretraining method"):
        method.setup(tiny_dataset(), torch.device("cpu"), make_generator(0))


# --- DeACL teacher ------------------------------------------------------------------------------------------
def test_deacl_teacher_is_a_frozen_copy_outside_the_parameters(tmp_path):
    teacher = tiny_encoder(dual_bn=False, seed=3)
    path = rs.encoders.save(teacher, tmp_path / "teacher")
    student = tiny_encoder(dual_bn=False, seed=1)
    method = build_method("deacl", student, teacher=str(path))
    for key, value in teacher.state_dict().items():  # the student starts from the teacher
        assert torch.equal(student.state_dict()[key], value)
    names = {n for n, _ in method.named_parameters()}
    assert names == {f"encoder.{n}" for n, _ in student.named_parameters()}
    assert all(k.startswith("encoder.") for k in method.state_dict())
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert method.teacher is not student


def test_deacl_without_teacher_copies_the_initial_weights():
    encoder = tiny_encoder(dual_bn=False)
    method = build_method("deacl", encoder)
    x = torch.rand(2, 3, 16, 16, generator=make_generator(0))
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(method.teacher.embed(x), encoder.embed(x))


def test_deacl_refuses_a_teacher_of_another_architecture(tmp_path):
    with seeded_init(0):
        wide = rs.encoders.create("convnet_small", widths=(4, 8, 8, 32))
    path = rs.encoders.save(wide, tmp_path / "wide")
    with pytest.raises(ValueError, match="different architectures.*init_from_teacher=False"):
        build_method("deacl", tiny_encoder(dual_bn=False), teacher=str(path))
    with pytest.raises(ValueError, match="embed_dim"):
        build_method("deacl", tiny_encoder(dual_bn=False), teacher=str(path), init_from_teacher=False)
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretraining method"):
        build_method("deacl", tiny_encoder(dual_bn=False), teacher=str(tmp_path / "nothing"))


def test_deacl_pretrains_its_teacher_in_setup_and_reuses_the_cache(tmp_path):
    options = {"teacher": "simclr", "teacher_steps": 2, "teacher_batch_size": 8, "cache_dir": tmp_path,
               "teacher_options": {"proj_hidden_dim": 8, "proj_dim": 4}}
    method = build_method("deacl", tiny_encoder(dual_bn=False), **options)
    with pytest.raises(RuntimeError, match="call it before training"):
        method(batch_of(tiny_dataset()), make_generator(0))
    method.setup(tiny_dataset(), torch.device("cpu"), make_generator(4))
    [cached] = tmp_path.glob("simclr-*.safetensors")
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(method.encoder.state_dict()[key], value)
    stamp = cached.stat().st_mtime_ns
    again = build_method("deacl", tiny_encoder(dual_bn=False), **options)
    again.setup(tiny_dataset(), torch.device("cpu"), make_generator(4))
    assert cached.stat().st_mtime_ns == stamp and len(list(tmp_path.glob("simclr-*.safetensors"))) == 1
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(again.teacher.state_dict()[key], value)


# --- presets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")
                                        if p.stem.split("-")[0] in ("acl", "advcl", "deacl")))
def test_presets_name_valid_options(name):
    preset = load_preset(name)
    assert preset.method == name.split("-")[0] and preset.data in ("scenes", "digits", "cifar10")
    assert set(preset.method_options) <= set(method_options(preset.method))
    if name.endswith("-tiny"):  # small enough to construct here
        with seeded_init(0):
            encoder = rs.encoders.create(preset.encoder, **preset.encoder_options)
        build_method(preset.method, encoder, **preset.method_options)


def test_every_method_has_its_presets():
    names = {p.stem for p in PRESET_DIR.glob("*.yaml")}
    for method in ("acl", "advcl", "deacl"):
        assert {f"{method}-scenes-tiny", f"{method}-digits-tiny", f"{method}-cifar10-paper"} <= names


# --- the exported encoder keeps the branch the method names for downstream use ------------------------------
def test_acl_checkpoint_loads_with_the_adversarial_branch(tmp_path):
    from robustssl.encoders.batchnorm import bn_branch, get_bn_branch
    from robustssl.pretrain.trainer import TrainConfig, train

    method = build_method("acl", tiny_encoder(), **small_options("acl", tmp_path), steps=1)
    assert method.eval_bn_branch == "adv"
    config = TrainConfig(steps=2, batch_size=8, warmup_steps=0, lr=0.1)
    summary = train(method, tiny_dataset(), config, out_dir=tmp_path / "run")
    loaded = rs.encoders.load(summary["checkpoint"])
    assert get_bn_branch(loaded) == "adv"
    assert get_bn_branch(method.encoder) == "clean"  # the training module is left as it was
    x = torch.rand(4, 3, 16, 16, generator=make_generator(1))
    trained = method.encoder.eval()
    with torch.no_grad(), bn_branch(trained, "adv"):
        adv = trained.embed(x)
    with torch.no_grad(), bn_branch(trained, "clean"):
        clean = trained.embed(x)
    with torch.no_grad():
        got = loaded.embed(x)
    torch.testing.assert_close(got, adv)
    assert not torch.allclose(got, clean)  # the two branches differ after training, so the check has teeth


@pytest.mark.filterwarnings("ignore:.*missing key")
def test_a_checkpoint_naming_a_branch_needs_a_dual_bn_encoder(tmp_path):
    import json

    path = rs.encoders.checkpoints.save(tiny_encoder(dual_bn=False), tmp_path / "plain")
    assert json.loads(path.with_suffix(".json").read_text())["bn_branch"] is None
    dual = rs.encoders.checkpoints.save(tiny_encoder(dual_bn=True), tmp_path / "dual")
    sidecar = dual.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    assert meta["bn_branch"] == "clean"
    meta["encoder_config"]["dual_bn"] = False
    meta["bn_branch"] = "adv"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no dual batch-norm layers"):
        rs.encoders.load(dual, strict=False)
