"""NT-Xent, the LR schedule and the trainer's guarantees."""

import math

import pytest
import torch
import torch.nn.functional as F

from robustssl.pretrain.losses import nt_xent
from robustssl.pretrain.trainer import TrainConfig, lr_factor


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The SimCLR loss written as the paper's sum over positive pairs, one term at a time."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    b = n // 2
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(num / den)
    return total / n


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_the_per_pair_formula(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-5)


def test_nt_xent_two_orthogonal_pairs_hand_computed():
    # views identical, the two images orthogonal: each row sees exp(1/t) for its partner, exp(0) twice.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert nt_xent(z1, z1.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="equal shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), 0.0)


def test_lr_schedule_warms_up_then_decays_to_zero():
    steps, warm = 100, 10
    f = [lr_factor(s, steps, warm) for s in range(steps)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert lr_factor(steps, steps, warm) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, steps, warm) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"optimizer": "adam2"}, "optimizer"),
        ({"lr": -1.0}, "lr"),
        ({"warmup_steps": 500}, "warmup"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
