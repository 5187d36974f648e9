"""Reference check against torchattacks 3.5.1 (a test oracle, installed by ``make install-dev``).

PGD part: from the same initial point, robustssl's textbook PGD (``early_stop=False, keep_best=False``) gives
the same ``x_adv`` as torchattacks' ``PGD`` (L-inf) and ``PGDL2`` within 1e-5. torchattacks draws its random
start from the global RNG, so the test seeds it, replays the draw to get the start, and hands that start to
robustssl as ``x_init`` (the library itself never touches the global RNG).
"""

import pytest
import torch
from torch import nn

from robustssl.threats import OBJECTIVES, ThreatModel
from robustssl.threats.attacks.pgd import PGD

torchattacks = pytest.importorskip("torchattacks")


def _model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def _batch(n: int = 16):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_linf_matches_torchattacks(random_start):
    model, (x, y) = _model(), _batch()
    eps, alpha, steps = 8 / 255, 2 / 255, 10
    x_init = None
    if random_start:
        torch.manual_seed(123)  # torchattacks' first draw: uniform(-eps, eps) over the batch
        x_init = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        torch.manual_seed(123)
    reference = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)(x, y)
    ours = PGD(steps=steps, step_size=alpha, random_start=False, early_stop=False, keep_best=False)
    x_adv = ours.attack(model, x, y, OBJECTIVES.create("ce"), ThreatModel("linf", eps), x_init=x_init)
    assert (x_adv - reference).abs().max().item() <= 1e-5
    # and the attack did something: not the clean batch
    assert (x_adv - x).abs().max().item() > eps / 2


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_l2_matches_torchattacks(random_start):
    model, (x, y) = _model(), _batch()
    eps, alpha, steps = 0.5, 0.1, 10
    x_init = None
    if random_start:
        torch.manual_seed(321)  # torchattacks' draws: a normal direction, then a radius fraction per sample
        delta = torch.empty_like(x).normal_()
        norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        radius = torch.zeros_like(norms).uniform_(0, 1)
        x_init = (x + delta * radius / norms * eps).clamp(0, 1)
        torch.manual_seed(321)
    reference = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)(x, y)
    ours = PGD(steps=steps, step_size=alpha, random_start=False, early_stop=False, keep_best=False)
    x_adv = ours.attack(model, x, y, OBJECTIVES.create("ce"), ThreatModel("l2", eps), x_init=x_init)
    assert (x_adv - reference).abs().max().item() <= 1e-5
    assert ThreatModel("l2", eps).distance(x_adv, x).max().item() > eps / 2


def test_pgd_targeted_linf_matches_torchattacks():
    model, (x, y) = _model(), _batch()
    target = (y + 1) % 10
    eps, alpha, steps = 8 / 255, 2 / 255, 5
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    attack.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    reference = attack(x, y)
    ours = PGD(steps=steps, step_size=alpha, random_start=False, early_stop=False, keep_best=False)
    x_adv = ours.attack(model, x, target, OBJECTIVES.create("ce", targeted=True), ThreatModel("linf", eps))
    assert (x_adv - reference).abs().max().item() <= 1e-5
