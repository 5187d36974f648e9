"""FAB and Square: the exact hyperplane-box projection against scipy, FAB's minimum norm on a linear model
against the closed form, and the attack contract (ball, box, mode/weights, generator-only randomness,
counts) for every registered entry, on a small ConvNet trained in the module fixture."""

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from robustssl.threats import ATTACKS, OBJECTIVES, ThreatModel
from robustssl.threats.attacks.fab import FAB, project_hyperplane_box
from robustssl.threats.attacks.square import Square, l2_square_pattern, square_fraction

NAMES = ["fab", "fab-t", "square"]
EPS = {"linf": 8 / 255, "l2": 0.5}


@pytest.fixture(scope="module")
def trained(small_classifier):
    return small_classifier(template_seed=7, size=12, n_train=1200, n_test=64, epochs=6)


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# --- the projection FAB is built on ---------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_scipy(norm):
    g = torch.Generator().manual_seed(3)
    n, d = 24, 7
    p, w = torch.rand(n, d, generator=g), torch.randn(n, d, generator=g)
    c = torch.randn(n, generator=g) * 0.5
    w[0, :4] = 0  # zero coordinates must not move
    out = project_hyperplane_box(p, w, c, norm)
    checked = 0
    for i in range(n):
        pi, wi, ci = p[i].double().numpy(), w[i].double().numpy(), float(c[i])
        bounds = list(zip(-pi, 1 - pi, strict=True))
        if norm == "linf":  # min t s.t. |d_j| <= t, box, w·d = c: a linear program
            a_ub = np.vstack([np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)]])
            res = linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[wi, 0][None],
                          b_eq=[ci], bounds=bounds + [(0, None)])
            if res.status != 0:
                continue
            reference, got = res.fun, out[i].abs().max().item()
        else:
            res = minimize(lambda v: (v ** 2).sum(), np.zeros(d), jac=lambda v: 2 * v, method="SLSQP",
                           constraints=[{"type": "eq", "fun": lambda v, wi=wi, ci=ci: wi @ v - ci}],
                           bounds=bounds, options={"ftol": 1e-12, "maxiter": 500})
            if not res.success:
                continue
            reference, got = float(np.sqrt(res.fun)), out[i].norm().item()
        checked += 1
        assert got == pytest.approx(reference, abs=1e-5)
        assert float(wi @ out[i].double().numpy()) == pytest.approx(ci, abs=1e-5)
        assert (p[i] + out[i]).min() >= -1e-6 and (p[i] + out[i]).max() <= 1 + 1e-6
    assert checked >= n // 2
    assert out[0, :4].abs().max() == 0


def test_projection_infeasible_goes_to_the_closest_corner():
    p = torch.full((1, 3), 0.5)
    w = torch.tensor([[1.0, -2.0, 0.0]])
    out = project_hyperplane_box(p, w, torch.tensor([10.0]), "linf")  # max reachable w·d is 1.5
    assert torch.allclose(out, torch.tensor([[0.5, -0.5, 0.0]]))


# --- FAB finds the minimum norm on a linear classifier --------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_reaches_the_analytic_minimum_on_a_linear_model(norm):
    g = torch.Generator().manual_seed(5)
    d, k, n = 12, 4, 6
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
        lin.bias.zero_()
    x = 0.5 + 0.02 * torch.randn(n, d, generator=g)  # centre of the box: the box never binds
    with torch.no_grad():
        logits = lin(x)
    y = logits.argmax(1)
    # Distance to the boundary with class j: (z_y − z_j) / ‖w_y − w_j‖_dual; the minimum over j ≠ y.
    wdiff = lin.weight[None] - lin.weight[y][:, None]  # (n, k, d)
    dual = wdiff.abs().sum(-1) if norm == "linf" else wdiff.norm(dim=-1)
    dist = ((logits.gather(1, y[:, None]) - logits) / dual).detach()
    dist[torch.arange(n), y] = float("inf")
    expected = dist.min(dim=1).values
    threat = ThreatModel(norm, 1.0)
    fab = FAB(steps=30, early_stop=False)
    x_adv = fab.attack(lin, x, y, None, threat, torch.Generator().manual_seed(0))
    got = threat.distance(x_adv, x)
    assert (lin(x_adv).argmax(1) != y).all()
    assert (got >= expected * (1 - 1e-4)).all()  # cannot beat the true minimum
    assert (got <= expected * 1.02).all()


# --- the contract, for every registered entry ----------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", NAMES)
def test_contract_and_accuracy_drop(trained, name, norm):
    model, x, y = trained
    # A larger radius than EPS, so that a short score-based run also has something to find.
    threat = ThreatModel(norm, {"linf": 12 / 255, "l2": 1.0}[norm])
    kwargs = {"n_queries": 150} if name == "square" else {"steps": 15}
    attack = ATTACKS.create(name, **kwargs)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x_adv = attack.attack(model, x, y, OBJECTIVES.create("cw" if name == "square" else "ce"), threat,
                          torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG must not be touched"
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert threat.distance(x_adv, x).max() <= threat.eps + 1e-6
    clean, robust = _accuracy(model, x, y), _accuracy(model, x_adv, y)
    assert clean >= 0.7
    # Gradient-based FAB finds far more than 150 queries of random search (APGD-20 leaves ~0.2 / ~0.15).
    drop = 0.1 if name == "square" else 0.4
    assert robust <= clean - drop, f"{name} {norm}: accuracy {clean:.2f} -> {robust:.2f}"
    assert attack.counts["fwd"] > 0
    if name == "square":
        assert attack.counts["bwd"] == 0
    else:
        assert attack.counts["bwd"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_same_result(trained, name):
    model, x, y = trained
    x, y = x[:16], y[:16]
    threat = ThreatModel("linf", EPS["linf"])
    kwargs = {"n_queries": 40} if name == "square" else {"steps": 5, "restarts": 2}
    runs = [ATTACKS.create(name, **kwargs).attack(model, x, y, OBJECTIVES.create("cw"), threat,
                                                  torch.Generator().manual_seed(s)) for s in (4, 4)]
    assert torch.equal(runs[0], runs[1])


def test_fab_t_targets_only_top_classes_and_rejects_bad_input(trained):
    model, x, y = trained
    threat = ThreatModel("linf", EPS["linf"])
    with pytest.raises(ValueError, match="labels"):
        FAB(targeted=True).attack(model, x, None, None, threat)
    with pytest.raises(ValueError, match="norms"):
        FAB().attack(model, x, y, None, ThreatModel("l1", 1.0))
    with pytest.raises(ValueError, match="steps"):
        FAB(steps=0)
    with pytest.raises(ValueError, match="logits"):
        FAB().attack(lambda t: t.flatten(1)[:, :1].unsqueeze(-1), x, y, None, threat)
    # One target = one targeted run per step: forward passes stay within (steps + 2) per image + clean.
    one = FAB(steps=4, targeted=True, n_target_classes=1, early_stop=False)
    one.attack(model, x, y, None, threat)
    assert one.counts["bwd"] <= 2 * 4 * x.shape[0]


# --- Square specifics -------------------------------------------------------------------------------------


def test_square_p_schedule_hand_values():
    assert square_fraction(0.8, 10, 5000, rescale=False) == 0.8
    assert square_fraction(0.8, 11, 5000, rescale=False) == 0.4
    assert square_fraction(0.8, 51, 5000, rescale=False) == 0.2
    assert square_fraction(0.8, 4001, 5000, rescale=False) == pytest.approx(0.8 / 128)
    assert square_fraction(0.8, 9000, 10000, rescale=False) == pytest.approx(0.8 / 512)
    # rescaled to 1000 queries: iteration 100 is iteration 1000 of the 10k schedule (4 halvings: >10..>500)
    assert square_fraction(0.8, 100, 1000, rescale=True) == pytest.approx(0.8 / 16)


def test_l2_pattern_is_unit_norm_and_zero_mean():
    for size in (3, 5, 8):
        pattern = l2_square_pattern(size, torch.device("cpu"))
        assert pattern.shape == (size, size)
        assert pattern.norm().item() == pytest.approx(1.0, abs=1e-5)
        if size % 2 == 0:
            assert pattern.sum().abs().item() < 1e-5


def test_square_early_stop_and_query_accounting(trained):
    model, x, y = trained
    threat = ThreatModel("linf", EPS["linf"])
    square = Square(n_queries=60)
    x_adv = square.attack(model, x, y, OBJECTIVES.create("cw"), threat, torch.Generator().manual_seed(0))
    fooled = model(x_adv).argmax(1) != y
    assert fooled.any() and (~fooled).any()
    assert (square.queries[~fooled] == 60).all()  # robust points spend the whole budget
    assert (square.queries[fooled] < 60).all()  # fooled ones stop early (or were misclassified to begin with)
    assert square.counts["fwd"] == int(square.queries.sum())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_attacks_an_embedding_objective(norm):
    g = torch.Generator().manual_seed(2)
    encoder = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    x = torch.rand(8, 3, 10, 10, generator=g)
    threat = ThreatModel(norm, EPS[norm])
    objective = OBJECTIVES.create("embed-mse")
    square = Square(n_queries=80, p_init=0.3)
    x_adv = square.attack(encoder, x, None, objective, threat, torch.Generator().manual_seed(0))
    assert threat.distance(x_adv, x).max() <= threat.eps + 1e-6
    assert (square.queries == 80).all()  # no success criterion: the whole budget
    with torch.no_grad():
        clean = encoder(x)
        attacked = objective.loss(encoder(x_adv), None, clean)
        # a random corner of the ball (L-inf) / random direction at full norm (L2), for comparison
        noise = torch.randn(x.shape, generator=g)
        noise = noise.sign() * threat.eps if norm == "linf" else noise / noise.flatten(1).norm(
            dim=1).view(-1, 1, 1, 1) * threat.eps
        random = objective.loss(encoder((x + noise).clamp(0, 1)), None, clean)
    assert (attacked > random).float().mean() >= 0.75


def test_square_rejects_bad_input(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="n_queries"):
        Square(n_queries=0)
    with pytest.raises(ValueError, match="p_init"):
        Square(p_init=1.5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Square().attack(model, x.flatten(1), y, OBJECTIVES.create("cw"), ThreatModel("linf", 0.1))
