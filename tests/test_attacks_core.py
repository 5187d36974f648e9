"""Attack engine: FGSM/PGD/APGD/APGD-T behaviour, EOT, BPDA, transfer, sweeps, checks and the API."""

import warnings

import pytest
import torch
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.heads.task_model import TaskModel
from robustssl.registry import UnknownNameError
from robustssl.threats import (
    ATTACKS,
    OBJECTIVES,
    GradientMaskingWarning,
    MultiTaskObjective,
    ThreatModel,
    attack,
    check_gradient_masking,
)
from robustssl.threats.attacks import APGD, EOT, PGD, Transfer
from robustssl.threats.attacks.eot import accepts_generator


def _seeded(module: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def mlp(seed: int = 0, classes: int = 10) -> nn.Module:
    return _seeded(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, classes)), seed, 0.3
    )


def images(n: int = 32, seed: int = 1, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels_of(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# --- FGSM / PGD ---------------------------------------------------------------------------------------------
def test_fgsm_linf_on_a_linear_model_is_the_hand_computed_sign_step():
    linear = _seeded(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), 3)
    x = images(6)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    eps = 4 / 255
    weight = linear[1].weight
    with torch.no_grad():
        probs = linear(x).softmax(1)
    # d CE / d x = W^T (softmax - onehot)
    grad = ((probs - torch.nn.functional.one_hot(y, 4).float()) @ weight).view_as(x)
    expected = (x + eps * grad.sign()).clamp(0, 1)
    x_adv = ATTACKS.create("fgsm", early_stop=False)(
        linear, x, y, OBJECTIVES.create("ce"), ThreatModel("linf", eps)
    )
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_pgd_counts_forward_and_backward_passes_per_image():
    model, x = mlp(), images(8)
    y = labels_of(model, x)
    pgd = PGD(steps=5, early_stop=False)
    pgd(model, x, y, OBJECTIVES.create("ce"), ThreatModel("linf", 8 / 255), gen())
    # 5 gradient steps and one evaluation of the last point, per image (ce needs no clean reference)
    assert pgd.counts == {"fwd": 8 * (5 + 1), "bwd": 8 * 5}
    pgd(model, x, None, OBJECTIVES.create("embed-l2"), ThreatModel("linf", 8 / 255), gen())
    assert pgd.counts == {"fwd": 8 * (1 + 5 + 1), "bwd": 8 * 5}  # plus the clean reference


def test_pgd_early_stop_saves_backward_passes_and_finds_the_same_successes():
    model, x = mlp(), images(32)
    y = labels_of(model, x)
    threat, ce = ThreatModel("linf", 16 / 255), OBJECTIVES.create("ce")
    stopping, full = PGD(steps=20), PGD(steps=20, early_stop=False)
    adv_stop = stopping(model, x, y, ce, threat, gen())
    adv_full = full(model, x, y, ce, threat, gen())
    assert stopping.counts["bwd"] < full.counts["bwd"]
    assert accuracy(model, adv_stop, y) == accuracy(model, adv_full, y) < 1.0


def test_pgd_keep_best_returns_a_point_at_least_as_good_as_the_last_iterate():
    model, x = mlp(), images(16)
    objective, threat = OBJECTIVES.create("embed-l2"), ThreatModel("linf", 8 / 255)
    embed = model  # the logits as an "embedding": any (B, D) output works
    with torch.no_grad():
        clean = embed(x)
    best = PGD(steps=8, step_size=0.05)(embed, x, None, objective, threat, gen())
    last = PGD(steps=8, step_size=0.05, keep_best=False)(embed, x, None, objective, threat, gen())
    with torch.no_grad():
        loss_best, loss_last = (
            objective.loss(embed(best), None, clean),
            objective.loss(embed(last), None, clean),
        )
    assert (loss_best >= loss_last - 1e-6).all() and (loss_best > 0).all()


def test_same_seed_same_result_other_seed_other_start():
    model, x = mlp(), images(8)
    y = labels_of(model, x)
    args = (model, x, y, OBJECTIVES.create("ce"), ThreatModel("l2", 0.5))
    a = PGD(steps=3, early_stop=False)(*args, gen(5))
    b = PGD(steps=3, early_stop=False)(*args, gen(5))
    c = PGD(steps=3, early_stop=False)(*args, gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_l1_stays_in_the_l1_ball():
    model, x = mlp(), images(8)
    y = labels_of(model, x)
    threat = ThreatModel("l1", 2.0)
    x_adv = PGD(steps=5)(model, x, y, OBJECTIVES.create("ce"), threat, gen())
    assert (threat.distance(x_adv, x) <= 2.0 + 1e-6).all()
    assert accuracy(model, x_adv, y) < 1.0


# --- APGD ---------------------------------------------------------------------------------------------------
def test_apgd_checkpoints_follow_the_paper_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times N = 100
    assert APGD(steps=100).checkpoints() == [22, 41, 57, 70, 80, 87, 93, 99]
    assert APGD(steps=10, n_checkpoints=4).checkpoints() == [2, 4, 6, 8]


def test_apgd_is_at_least_as_strong_as_fgsm_and_lowers_accuracy():
    model, x = mlp(), images(48)
    y = labels_of(model, x)
    threat, ce = ThreatModel("linf", 16 / 255), OBJECTIVES.create("ce")
    acc_fgsm = accuracy(model, ATTACKS.create("fgsm")(model, x, y, ce, threat, gen()), y)
    acc_apgd = accuracy(model, APGD(steps=20)(model, x, y, ce, threat, gen()), y)
    assert acc_apgd <= acc_fgsm and acc_apgd < 1.0


def test_apgd_objective_override_ascends_dlr_but_judges_by_misclassification():
    model, x = mlp(), images(32)
    y = labels_of(model, x)
    threat = ThreatModel("linf", 16 / 255)
    x_adv = APGD(steps=10, objective_override="dlr")(model, x, y, OBJECTIVES.create("ce"), threat, gen())
    assert accuracy(model, x_adv, y) < 1.0
    with pytest.raises(UnknownNameError):
        APGD(objective_override="nope")


def test_apgd_targeted_attacks_still_robust_points_per_target_class():
    model, x = mlp(classes=6), images(32)
    y = labels_of(model, x)
    threat, ce = ThreatModel("linf", 12 / 255), OBJECTIVES.create("ce")
    one = ATTACKS.create("apgd-t", steps=10, n_target_classes=1)
    three = ATTACKS.create("apgd-t", steps=10, n_target_classes=3)
    acc_one = accuracy(model, one(model, x, y, ce, threat, gen()), y)
    acc_three = accuracy(model, three(model, x, y, ce, threat, gen()), y)
    # more target classes only add attempts on the points still robust
    assert acc_three <= acc_one < 1.0
    with pytest.raises(ValueError, match="at least 4 classes"):
        one(mlp(classes=3), x, labels_of(mlp(classes=3), x), ce, threat, gen())


# --- robust accuracy is monotone ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_robust_accuracy_does_not_rise_with_eps_or_steps(name):
    model, x = mlp(), images(48)
    y = labels_of(model, x)
    sweep = attack(model, x, y, name, eps=[2 / 255, 4 / 255, 8 / 255, 16 / 255], steps=10)
    accs = [r.robust_accuracy for r in sweep]
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]
    by_steps = [attack(model, x, y, name, eps=12 / 255, steps=s).robust_accuracy for s in (1, 5, 25)]
    assert by_steps == sorted(by_steps, reverse=True)


def test_sweep_reuses_successes_and_spends_less_at_larger_eps():
    model, x = mlp(), images(32)
    y = labels_of(model, x)
    sweep = attack(model, x, y, "pgd", eps=[16 / 255, 8 / 255], steps=10)  # given out of order
    small, large = sweep
    assert sweep.eps == [8 / 255, 16 / 255]
    assert (large.success >= small.success).all()
    kept = small.success
    assert torch.equal(large.x_adv[kept], small.x_adv[kept])
    alone = attack(model, x, y, "pgd", eps=16 / 255, steps=10)
    assert small.success.any() and large.bwd < alone.bwd
    assert "robust_accuracy" in sweep.table()
    assert (large.distance <= 16 / 255 + 1e-6).all()


# --- multi-task ---------------------------------------------------------------------------------------------
class MultiHead(nn.Module):
    """A shared conv trunk with classification, segmentation, depth and embedding heads."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.cls = nn.Linear(8, 5)
        self.seg = nn.Conv2d(8, 4, 1)
        self.depth = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        f = self.trunk(x)
        pooled = f.mean(dim=(2, 3))
        return {
            "cls": self.cls(pooled),
            "seg": self.seg(f),
            "depth": nn.functional.softplus(self.depth(f)) + 0.1,
            "emb": pooled,
        }


def test_multitask_attack_lowers_every_heads_metric():
    model, x = _seeded(MultiHead(), 4), images(16)
    with torch.no_grad():
        clean = model(x)
    target = {"cls": clean["cls"].argmax(1), "seg": clean["seg"].argmax(1), "depth": clean["depth"][:, 0]}
    objective = MultiTaskObjective(
        {"cls": ("ce", 1.0), "seg": ("seg-ce", 1.0), "depth": ("depth-silog", 1.0), "emb": ("embed-cos", 1.0)}
    )
    result = attack(model, x, target, "pgd", eps=8 / 255, steps=10, objective=objective)
    with torch.no_grad():
        adv = model(result.x_adv)
    assert (adv["cls"].argmax(1) == target["cls"]).float().mean() < 1.0
    assert (adv["seg"].argmax(1) == target["seg"]).float().mean() < 1.0
    assert ((adv["depth"][:, 0] - target["depth"]).abs() / target["depth"]).mean() > 0.01
    assert nn.functional.cosine_similarity(adv["emb"], clean["emb"]).mean() < 1 - 1e-5
    assert result.loss.mean() > result.clean_loss.mean()


# --- EOT, BPDA, transfer ------------------------------------------------------------------------------------
class RandomSignLinear(nn.Module):
    """Each input pixel's sign flips with probability 0.3 per call: a single draw's gradient is noisy,
    the expectation is the linear model scaled by 0.4."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x, generator=None):
        device = generator.device if generator is not None else x.device
        u = torch.rand(x.flatten(1).shape, generator=generator, device=device).to(x.device)
        sign = torch.where(u < 0.7, 1.0, -1.0)
        return self.linear((x.flatten(1) - 0.5) * sign)

    def expected(self, x):
        return self.linear((x.flatten(1) - 0.5) * 0.4)


def test_eot_is_at_least_as_strong_as_pgd_on_a_randomized_model():
    model, x = _seeded(RandomSignLinear(), 5, 0.2), images(64)
    with torch.no_grad():
        y = model.expected(x).argmax(1)
    threat, ce = ThreatModel("linf", 3 / 255), OBJECTIVES.create("ce")
    x_pgd = PGD(steps=10)(model, x, y, ce, threat, gen())
    x_eot = EOT("pgd", samples=16, steps=10)(model, x, y, ce, threat, gen())
    with torch.no_grad():
        acc_pgd = float((model.expected(x_pgd).argmax(1) == y).float().mean())
        acc_eot = float((model.expected(x_eot).argmax(1) == y).float().mean())
    assert acc_eot <= acc_pgd and acc_eot < 1.0


def test_eot_passes_its_generator_to_the_model_and_is_reproducible():
    model, x = _seeded(RandomSignLinear(), 5, 0.2), images(8)
    assert accepts_generator(model) and not accepts_generator(mlp())
    y = labels_of(model.expected, x)
    eot = EOT("pgd", samples=4, steps=3)
    a = eot(model, x, y, OBJECTIVES.create("ce"), ThreatModel("linf", 4 / 255), gen(2))
    b = eot(model, x, y, OBJECTIVES.create("ce"), ThreatModel("linf", 4 / 255), gen(2))
    assert torch.equal(a, b)
    assert eot.counts["bwd"] % 4 == 0 and eot.counts["bwd"] > 0


def _quantize(x):
    return torch.round(x * 4) / 4


def test_bpda_breaks_a_non_differentiable_preprocessing_that_stops_pgd():
    classifier, x = mlp(), images(32)
    defended = lambda images: classifier(_quantize(images))  # noqa: E731
    y = labels_of(defended, x)
    threat, ce = ThreatModel("linf", 16 / 255), OBJECTIVES.create("ce")
    x_pgd = PGD(steps=10, random_start=False)(defended, x, y, ce, threat, gen())
    assert torch.equal(x_pgd, x)  # the rounding has zero gradient: plain PGD cannot move
    bpda = ATTACKS.create("bpda", preprocess=_quantize, steps=10)
    x_bpda = bpda(classifier, x, y, ce, threat, gen())
    assert accuracy(defended, x_bpda, y) < 1.0
    result = attack(classifier, x, y, "bpda", eps=16 / 255, preprocess=_quantize, steps=10)
    assert result.robust_accuracy == pytest.approx(accuracy(defended, result.x_adv, y))


def test_transfer_crafts_on_the_surrogate_without_querying_the_target():
    surrogate, x = mlp(0), images(16)
    y = labels_of(surrogate, x)
    calls = []

    def target(images):
        calls.append(images.shape[0])
        return mlp(1)(images)

    threat, ce = ThreatModel("linf", 8 / 255), OBJECTIVES.create("ce")
    transfer = Transfer(surrogate, "pgd", steps=5)
    x_adv = transfer(target, x, y, ce, threat, gen(3))
    assert calls == []
    direct = PGD(steps=5)(surrogate, x, y, ce, threat, gen(3))
    assert torch.equal(x_adv, direct) and transfer.counts["bwd"] > 0


# --- gradient-masking checks --------------------------------------------------------------------------------
def test_checks_flag_randomness_softmax_and_zero_gradients():
    x = images(8)
    noisy = _seeded(RandomSignLinear(), 5, 0.2)
    with pytest.warns(GradientMaskingWarning, match="randomized"):
        report = check_gradient_masking(noisy, x)
    assert report.randomized and not report.ok

    softmax = nn.Sequential(mlp(), nn.Softmax(dim=1))
    with pytest.warns(GradientMaskingWarning, match="probabilities"):
        assert check_gradient_masking(softmax, x).softmax_output

    quantized = lambda images: mlp()(_quantize(images))  # noqa: E731
    y = labels_of(quantized, x)
    with pytest.warns(GradientMaskingWarning, match="zero"):
        report = check_gradient_masking(quantized, x, y, OBJECTIVES.create("ce"))
    assert report.zero_gradient_fraction == 1.0


def test_checks_are_quiet_on_a_plain_model():
    model, x = mlp(), images(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        report = check_gradient_masking(model, x, labels_of(model, x), OBJECTIVES.create("ce"))
        emb_report = check_gradient_masking(model, x, None, OBJECTIVES.create("embed-l2"))
    assert report.ok and report.zero_gradient_fraction == 0.0 and emb_report.ok


# --- API ----------------------------------------------------------------------------------------------------
class TinyEncoder(Encoder):
    embed_dim, dense_dim, stride = 8, 8, 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def _dense(self, x):
        return torch.relu(self.conv(x))

    def _embed(self, x):
        return self._dense(x).mean(dim=(2, 3))


@pytest.mark.parametrize(
    "task, objective",
    [
        ("classification", "ce"),
        ("segmentation", "seg-ce"),
        ("depth", "depth-silog"),
        ("embedding", "embed-l2"),
    ],
)
def test_api_picks_the_objective_from_the_task_model(task, objective):
    encoder = _seeded(TinyEncoder(), 0)
    head = {
        "classification": lambda: nn.Linear(8, 5),
        "segmentation": lambda: _DenseHead(8, 3),
        "depth": lambda: _DenseHead(8, 1, positive=True),
        "embedding": lambda: None,
    }[task]()
    model = TaskModel(encoder, head, task).eval()
    x = images(4)
    with torch.no_grad():
        out = model(x)
    target = {
        "classification": out.argmax(1) if out.dim() == 2 else None,
        "embedding": None,
        "segmentation": out.argmax(1) if out.dim() == 4 else None,
        "depth": out[:, 0] * 1.5 if out.dim() == 4 else None,
    }[task]
    result = attack(model, x, target, "pgd", eps=8 / 255, steps=3)
    assert result.objective == objective
    assert result.loss.mean() >= result.clean_loss.mean()


class _DenseHead(nn.Module):
    def __init__(self, dim, out, positive=False):
        super().__init__()
        self.conv, self.positive = nn.Conv2d(dim, out, 1), positive

    def forward(self, f, size):
        y = nn.functional.interpolate(self.conv(f), size=size, mode="bilinear", align_corners=False)
        return nn.functional.softplus(y) + 0.1 if self.positive else y


def test_api_reports_counts_seconds_and_metrics():
    model, x = mlp(), images(16)
    y = labels_of(model, x)
    result = attack(model, x, y, "pgd", eps=16 / 255, steps=4)
    assert result.n == 16 and result.clean_accuracy == 1.0 and result.robust_accuracy < 1.0
    assert result.fwd > 16 and result.bwd > 0 and result.seconds > 0
    assert result.row()["max_distance"] <= 16 / 255 + 1e-6


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"eps": -0.1}, ValueError, "eps must be"),
        ({"name": "pgdd"}, UnknownNameError, "Valid attack names: .*pgd"),
        ({"objective": "cee"}, UnknownNameError, "Valid objective names: .*embed-l2"),
        ({"objective": "multitask"}, ValueError, "MultiTaskObjective"),
        ({"norm": "l3"}, ValueError, "linf, l2, l1"),
        ({"eps": []}, ValueError, "empty"),
    ],
)
def test_api_rejects_bad_arguments(kwargs, error, match):
    model, x = mlp(), images(4)
    with pytest.raises(error, match=match):
        attack(model, x, labels_of(model, x), **kwargs)


def test_api_rejects_images_outside_the_box_and_wrong_targets():
    model, x = mlp(), images(4)
    y = labels_of(model, x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 2, y)
    with pytest.raises(ValueError, match="leading dimension of 4"):
        attack(model, x, y[:3])
    with pytest.raises(ValueError, match="class indices"):
        attack(model, x, y + 100)
    with pytest.raises(ValueError, match="NaN"):
        attack(model, x.clone().fill_(float("nan")), y)


def test_eot_lifts_apgds_objective_override_over_the_draws():
    model, x = _seeded(RandomSignLinear(), 5, 0.2), images(8)
    y = labels_of(model.expected, x)
    eot = EOT(APGD(steps=3, objective_override="dlr"), samples=2)
    x_adv = eot(model, x, y, OBJECTIVES.create("ce"), ThreatModel("linf", 8 / 255), gen())
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(x_adv, x)


def test_a_model_that_detaches_its_input_is_a_clear_error():
    model, x = mlp(), images(4)

    def detached(images):
        return model(images.detach())

    with pytest.raises(RuntimeError, match="bpda"):
        PGD(steps=2)(detached, x, labels_of(model, x), OBJECTIVES.create("ce"), ThreatModel("linf", 0.1))
