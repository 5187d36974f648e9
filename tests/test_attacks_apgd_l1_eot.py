"""l1-APGD (Croce & Hein 2021), target classes side by side in APGD-T/FAB-T, and EOT around any gradient
attack: the exact projection onto the L1 ball intersected with the box (against an independent bisection
and the projection's variational inequality), l1-APGD against L1 PGD with the same budget on a trained
model, batched targets against one-after-another, APGD-T and FAB under EOT, and the regression test of
APGD's ``objective_override`` inside (nested) EOT."""

import pytest
import torch
from torch import nn

from robustssl.runtime.seeding import split_generator
from robustssl.threats import ATTACKS, OBJECTIVES, ThreatModel, attack
from robustssl.threats.attacks import APGD, EOT, FAB, APGDTargeted, AutoAttack
from robustssl.threats.attacks import fab as fab_module
from robustssl.threats.attacks.apgd import l1_sparse_direction, project_l1_box
from robustssl.threats.attacks.base import BestPoints, first_best_per_group, targets_side_by_side


@pytest.fixture(scope="module")
def trained(small_classifier):
    return small_classifier(template_seed=11, size=10, n_train=1000, n_test=128, epochs=5)


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# --- the projection onto the L1 ball within the box ---------------------------------------------------------
def _bisection_projection(x: torch.Tensor, point: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference: the same closed form with ``λ`` found by 200 bisection steps in float64, per row."""
    shape = x.shape
    x, delta = x.double().flatten(1), (point.double() - x.double()).flatten(1)
    room = torch.where(delta > 0, 1 - x, x)
    out = []
    for d, r in zip(delta, room, strict=True):
        def shrunk(lam, d=d, r=r):
            return torch.minimum((d.abs() - lam).clamp_min(0), r)
        lo, hi = 0.0, float(d.abs().max())
        if float(shrunk(0.0).sum()) > eps:
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if float(shrunk(mid).sum()) > eps else (lo, mid)
        else:
            hi = 0.0
        out.append(d.sign() * shrunk(hi))
    return (x + torch.stack(out)).float().view(shape)


@pytest.mark.parametrize("eps", [0.0, 0.3, 2.0, 50.0])
def test_l1_box_projection_is_exact(eps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 5, 5, generator=g)
    x[0, 0] = 0.0  # pixels on the box's faces
    x[1, 1] = 1.0
    scale = torch.tensor([0.05, 0.3, 1.0, 3.0, 0.01, 0.5]).view(-1, 1, 1, 1)
    point = x + torch.randn(x.shape, generator=g) * scale
    z = project_l1_box(x, point, eps)
    assert z.min() >= 0 and z.max() <= 1
    assert ((z - x).abs().flatten(1).sum(1) <= eps + 1e-6).all()
    assert torch.allclose(z, _bisection_projection(x, point, eps), atol=1e-5)
    # Variational inequality of a Euclidean projection onto a convex set C: <p − z, w − z> <= 0 for w in C.
    for _ in range(20):
        w = project_l1_box(x, x + torch.randn(x.shape, generator=g) * 3, eps)
        inner = ((point - z) * (w - z)).flatten(1).sum(1)
        assert (inner <= 1e-4).all(), inner
    inside = project_l1_box(x, x + 1e-3 * (z - x), eps)
    assert torch.allclose(inside, x + 1e-3 * (z - x), atol=1e-7)  # a feasible point projects to itself


def test_l1_sparse_direction_moves_the_largest_gradient_coordinates():
    grad = torch.tensor([[0.1, -3.0, 0.5, 2.0, 0.0, -0.2, 1.0, 0.3, -0.05, 0.4]])
    direction = l1_sparse_direction(grad, torch.tensor([0.3]))
    assert torch.equal(direction, torch.tensor([[0, -1, 0, 1, 0, 0, 1, 0, 0, 0]]) / 3.0)
    assert torch.equal(l1_sparse_direction(torch.zeros(2, 4), torch.tensor([0.5, 1.0])), torch.zeros(2, 4))


def test_first_best_per_group_picks_the_first_maximum_of_each_group():
    index = torch.tensor([0, 1, 0, 2, 1, 0])
    score = torch.tensor([1.0, 5.0, 3.0, float("nan"), 5.0, 3.0])
    assert first_best_per_group(index, score, 4).tolist() == [False, True, True, True, False, False]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_projection_newton_agrees_with_its_sorting_fallback(monkeypatch, norm):
    g = torch.Generator().manual_seed(1)
    point = torch.rand(64, 50, generator=g)
    point[:, :10] = point[:, :10].round()  # coordinates on the box's faces
    w = torch.randn(64, 50, generator=g) * (torch.rand(64, 50, generator=g) < 0.8)
    c = torch.randn(64, generator=g) * torch.linspace(0.01, 8.0, 64)  # from easy to infeasible
    newton = fab_module.project_hyperplane_box(point, w, c, norm)
    # Was NaN for L2 on infeasible rows with some w_i = 0 (inf * 0): such coordinates must stay put.
    assert torch.isfinite(newton).all() and (newton[w == 0] == 0).all()
    monkeypatch.setattr(fab_module, "_NEWTON_STEPS", 0)  # every row takes the sorting path
    assert torch.allclose(newton, fab_module.project_hyperplane_box(point, w, c, norm), atol=1e-5)


# --- l1-APGD ------------------------------------------------------------------------------------------------
def test_apgd_l1_checkpoints_every_four_percent_of_the_steps():
    assert APGD(steps=100).checkpoints("l1") == list(range(4, 101, 4))
    assert APGD(steps=10).checkpoints("l1") == list(range(1, 11))


def test_apgd_l1_stays_in_the_ball_and_the_box_and_beats_l1_pgd(trained):
    model, x, y = trained
    eps = 1.0
    apgd, pgd = [], []
    for seed in range(2):
        res = attack(model, x, y, "apgd", norm="l1", eps=eps, steps=20,
                     generator=torch.Generator().manual_seed(seed))
        assert float(res.distance.max()) <= eps + 1e-6
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        apgd.append(res.robust_accuracy)
        pgd.append(attack(model, x, y, "pgd", norm="l1", eps=eps, steps=20,
                          generator=torch.Generator().manual_seed(seed)).robust_accuracy)
    # Seen: 0.547-0.555 (l1-APGD) against 0.609-0.617 (PGD with the SLIDE step), clean 0.766.
    assert max(apgd) < min(pgd) - 0.02, (apgd, pgd)


def test_apgd_l1_is_sparse_after_adapting(trained):
    model, x, y = trained
    x_adv = APGD(steps=20)(model, x, y, OBJECTIVES.create("ce"), ThreatModel("l1", 1.0), torch.Generator())
    changed = ((x_adv - x).abs() > 0).flatten(1).float().mean(1)
    # The box-aware step and the shrinking top-k keep most pixels untouched (Linf/L2 APGD move all of them).
    assert float(changed.median()) < 0.25, changed


# --- target classes side by side ---------------------------------------------------------------------------
def test_best_points_keep_the_best_of_repeated_samples():
    best = BestPoints.empty(torch.zeros(3, 2))
    index = torch.tensor([0, 0, 1, 1, 0])
    x = torch.arange(10.0).view(5, 2)
    success = torch.tensor([False, False, True, False, False])
    best.update(index, x, torch.tensor([1.0, 3.0, 2.0, 5.0, 2.0]), success, unique=False)
    # sample 0: the largest loss (row 1); sample 1: the successful row (2) despite row 3's larger loss
    assert torch.equal(best.x, torch.tensor([[2.0, 3.0], [4.0, 5.0], [0.0, 0.0]]))
    assert best.loss.tolist() == [3.0, 2.0, float("-inf")] and best.success.tolist() == [False, True, False]
    best.update(torch.tensor([0, 0]), x[:2] + 100, torch.tensor([9.0, 4.0]), torch.tensor([False, True]),
                unique=False)
    assert torch.equal(best.x[0], x[1] + 100) and bool(best.success[0])  # success beats a larger loss


def test_target_groups_respect_the_batch_cap():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert targets_side_by_side(None, 10, 9, cpu) == 9  # 90 images <= 128
    assert targets_side_by_side(None, 64, 9, cpu) == 2 and targets_side_by_side(None, 200, 9, cpu) == 1
    assert targets_side_by_side(None, 10_000, 9, gpu) == 9
    assert targets_side_by_side(1, 5, 9, cpu) == 1 and targets_side_by_side(50, 5, 3, cpu) == 3
    with pytest.raises(ValueError, match="target_batch"):
        APGDTargeted(target_batch=0)


def test_batched_targets_break_as_many_points_as_one_after_another(trained):
    model, x, y = trained
    threat, ce = ThreatModel("linf", 6 / 255), OBJECTIVES.create("ce")
    # FAB-T is deterministic: each (point, target) row runs exactly as it would alone.
    fab = [_accuracy(model, FAB(steps=8, targeted=True, n_target_classes=4, target_batch=b)(
        model, x, y, None, threat), y) for b in (4096, 1)]
    assert fab[0] == fab[1] and fab[0] < _accuracy(model, x, y)
    apgd = [_accuracy(model, APGDTargeted(steps=8, n_target_classes=4, target_batch=b)(
        model, x, y, ce, threat, torch.Generator().manual_seed(0)), y) for b in (4096, 1)]
    assert abs(apgd[0] - apgd[1]) <= 2 / len(y) + 1e-9, apgd  # different random starts


# --- EOT around any gradient attack -------------------------------------------------------------------------
class RandomSignLinear(nn.Module):
    """Each input pixel's sign flips with probability 0.3 per call: one draw's gradient is noisy, the
    expectation is the linear model scaled by 0.4."""

    def __init__(self, seed: int = 5):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 10)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x, generator=None):
        device = generator.device if generator is not None else x.device
        u = torch.rand(x.flatten(1).shape, generator=generator, device=device).to(x.device)
        return self.linear((x.flatten(1) - 0.5) * torch.where(u < 0.7, 1.0, -1.0))

    def expected(self, x):
        return self.linear((x.flatten(1) - 0.5) * 0.4)


class Deterministic(nn.Module):
    """A deterministic model that accepts (and ignores) a generator, as randomized models do."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, generator=None):
        return self.net(x)


def _random_sign_batch(n: int = 64):
    model = RandomSignLinear()
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model.expected(x).argmax(1)
    return model, x, y


def test_eot_apgd_t_runs_on_a_randomized_model_and_beats_plain_apgd_t():
    model, x, y = _random_sign_batch()
    threat, ce = ThreatModel("linf", 3 / 255), OBJECTIVES.create("ce")
    eot = EOT(APGDTargeted(steps=10, n_target_classes=3), samples=16)
    x_eot = eot(model, x, y, ce, threat, torch.Generator().manual_seed(0))
    plain = APGDTargeted(steps=10, n_target_classes=3)
    x_plain = plain(model, x, y, ce, threat, torch.Generator().manual_seed(0))
    assert float(threat.distance(x_eot, x).max()) <= threat.eps + 1e-6
    assert eot.counts["bwd"] > 0 and eot.counts["bwd"] % 16 == 0
    with torch.no_grad():
        acc_eot = float((model.expected(x_eot).argmax(1) == y).float().mean())
        acc_plain = float((model.expected(x_plain).argmax(1) == y).float().mean())
    # Seen: 0.84 with EOT against 1.00 without (single draws' gradients point nowhere in particular).
    assert acc_eot < acc_plain - 0.05, (acc_eot, acc_plain)
    again = EOT(APGDTargeted(steps=10, n_target_classes=3), samples=16)(model, x, y, ce, threat,
                                                                         torch.Generator().manual_seed(0))
    assert torch.equal(x_eot, again)


@pytest.mark.parametrize("inner", ["fab-t", "apgd-t", "apgd"])
def test_eot_over_a_deterministic_model_is_the_inner_attack(trained, inner):
    """Two identical draws average to the draw itself (exactly, in floating point), so EOT must reproduce
    the inner attack run with the generator EOT hands it."""
    model, x, y = trained
    x, y = x[:32], y[:32]
    threat, ce = ThreatModel("linf", 6 / 255), OBJECTIVES.create("ce")
    kwargs = {"steps": 5} if inner == "apgd" else {"steps": 5, "n_target_classes": 3}
    wrapped = EOT(ATTACKS.create(inner, **kwargs), samples=2)(Deterministic(model), x, y, ce, threat,
                                                              torch.Generator().manual_seed(3))
    inner_gen = split_generator(torch.Generator().manual_seed(3), 2)[1]
    alone = ATTACKS.create(inner, **kwargs)(model, x, y, ce, threat, inner_gen)
    assert torch.equal(wrapped, alone)


def test_apgd_objective_override_inside_nested_eot_regression():
    """Was: AttributeError 'Draws' object has no attribute 'float' — the override read the draws of an
    inner EOT as one output. Lifted through every EOT level it is the plain attack on a deterministic
    model, and runs on a randomized one."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.2)
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    threat, ce = ThreatModel("linf", 8 / 255), OBJECTIVES.create("ce")
    nested = EOT(EOT(APGD(steps=4, objective_override="dlr"), samples=2), samples=2)
    x_nested = nested(Deterministic(net), x, y, ce, threat, torch.Generator().manual_seed(0))
    inner_gen = split_generator(split_generator(torch.Generator().manual_seed(0), 2)[1], 2)[1]
    alone = APGD(steps=4, objective_override="dlr")(net, x, y, ce, threat, inner_gen)
    assert torch.equal(x_nested, alone) and not torch.equal(alone, x)
    model, x, y = _random_sign_batch(16)
    x_adv = nested(model, x, y, ce, threat, torch.Generator().manual_seed(0))
    assert float(threat.distance(x_adv, x).max()) <= threat.eps + 1e-6


def test_autoattack_rand_runs_apgd_t_under_eot_through_a_randomized_model():
    model, x, y = _random_sign_batch(32)
    threat = ThreatModel("linf", 3 / 255)
    settings = {"version": "rand", "attacks": ["apgd-ce", "apgd-t"], "steps": 5, "n_target_classes": 3,
                "eot_samples": 4}
    aa = AutoAttack(**settings)
    x_adv = aa.attack(model, x, y, None, threat, torch.Generator().manual_seed(0))
    report = aa.last_report
    assert [s.attack for s in report.stages] == ["apgd-ce", "apgd-t"]
    assert report.stages[1].attacked == report.n - report.stages[0].broken - round(
        (1 - report.clean_accuracy) * report.n)
    assert report.stages[1].bwd > 0 and report.stages[1].bwd % 4 == 0
    assert float(threat.distance(x_adv, x).max()) <= threat.eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    again = AutoAttack(**settings)
    assert torch.equal(x_adv, again.attack(model, x, y, None, threat, torch.Generator().manual_seed(0)))
