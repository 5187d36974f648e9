"""The random samplers behind the corruptions, against exact distributions.

* ``draw_poisson`` (shot noise): chi-square goodness of fit against the Poisson pmf (scipy) on and between
  the grid rates of its table, at the table's edge and in the transformed-rejection range; seeding and bad
  input.
* ``draw_bytes`` / ``draw_below``: every byte position uniform; values below ``n`` equally likely, also when
  ``n`` does not divide 256 (rejection).
* ``bernoulli_positions``: success counts and per-trial rates of a Bernoulli process.
* ``diamond_square``: the vectorized recursion equals a per-point transcription of ImageNet-C's
  ``plasma_fractal`` fed the same offsets.
* glass blur's ``draw_swap_offsets``: offset pairs uniform over ``[-d, d)²`` inside the visited region, 0
  outside.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustssl.threats.corruptions.blur import draw_swap_offsets
from robustssl.threats.corruptions.kernels import draw_below, draw_bytes
from robustssl.threats.corruptions.poisson import draw_poisson
from robustssl.threats.corruptions.textures import bernoulli_positions, diamond_square

scipy_stats = pytest.importorskip("scipy.stats")
CPU = torch.device("cpu")


def chi_square_p(observed: np.ndarray, expected: np.ndarray) -> float:
    """p-value of Pearson's chi-square test, pooling the cells expected to hold fewer than 5 counts."""
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 5:  # the pooled tail is too thin for the test: merge it into the last kept cell
        obs, exp = np.append(obs[:-2], obs[-2:].sum()), np.append(exp[:-2], exp[-2:].sum())
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(scipy_stats.chi2.sf(stat, len(obs) - 1))


# rates: zero, tiny, on the 1/32 grid, just below a grid point, mid-table, the table's last row and its
# limit (64: transformed rejection from there), and CIFAR-10-C's largest photon count
RATES = (0.0, 0.02, 0.3125, 0.3125 - 1e-6, 2.5, 9.99, 17.3, 63.99, 64.0, 500.0)


@pytest.mark.parametrize("rate", RATES)
def test_poisson_matches_the_poisson_pmf(rate: float) -> None:
    n = 200_000
    draws = draw_poisson(torch.full((n,), rate), torch.Generator().manual_seed(11)).numpy()
    assert draws.dtype == np.float32 and np.all(draws == np.round(draws)) and draws.min() >= 0
    if rate == 0:
        assert not draws.any()
        return
    top = int(draws.max()) + 1
    observed = np.bincount(draws.astype(np.int64), minlength=top)
    expected = scipy_stats.poisson.pmf(np.arange(top), rate) * n
    expected[-1] += scipy_stats.poisson.sf(top - 1, rate) * n  # the mass above the largest draw
    assert chi_square_p(observed, expected) > 1e-3
    assert abs(draws.mean() - rate) < 5 * math.sqrt(rate / n)


def test_poisson_mixed_rates_keep_mean_and_variance() -> None:
    g = torch.Generator().manual_seed(12)
    # every path at once: table, remainder, rejection, and rates far off the table
    rate = torch.rand(300, 1000, generator=g) * 80
    rate[:, :10] = 1e4
    draws = draw_poisson(rate, g)
    assert draws.shape == rate.shape
    z = (draws - rate) / rate.clamp_min(1e-6).sqrt()
    assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1) < 0.02


def test_poisson_is_seeded_and_checks_its_input() -> None:
    rate = torch.rand(4, 3, 20, 20) * 30
    first = draw_poisson(rate, torch.Generator().manual_seed(1))
    torch.testing.assert_close(draw_poisson(rate, torch.Generator().manual_seed(1)), first, rtol=0, atol=0)
    assert not torch.equal(draw_poisson(rate, torch.Generator().manual_seed(2)), first)
    assert draw_poisson(torch.zeros(0, 3)).shape == (0, 3)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and >= 0"):
            draw_poisson(torch.tensor([1.0, bad]))


def test_random_bytes_are_uniform_in_every_position() -> None:
    counts = draw_bytes(8 * 40_000, torch.Generator().manual_seed(3), CPU).view(-1, 8).long()
    for position in range(8):
        observed = np.bincount(counts[:, position].numpy(), minlength=256)
        assert chi_square_p(observed, np.full(256, 40_000 / 256)) > 1e-3


@pytest.mark.parametrize("n", [2, 6, 36, 64, 255])
def test_draw_below_is_uniform(n: int) -> None:
    values = draw_below((300, 200), n, torch.Generator().manual_seed(n), CPU)
    assert values.shape == (300, 200) and values.dtype == torch.uint8 and int(values.max()) < n
    observed = np.bincount(values.view(-1).long().numpy(), minlength=n)
    assert chi_square_p(observed, np.full(n, 60_000 / n)) > 1e-3
    with pytest.raises(ValueError, match="1..256"):
        draw_below((3,), 257, None, CPU)


def test_bernoulli_positions_is_a_bernoulli_process() -> None:
    g = torch.Generator().manual_seed(4)
    n, p = 300_000, 0.03
    counts, hits = [], torch.zeros(100)
    for _ in range(20):
        positions = bernoulli_positions(n, p, g, CPU)
        assert positions.dtype == torch.int64 and bool((positions[1:] > positions[:-1]).all())
        assert 0 <= int(positions[0]) and int(positions[-1]) < n
        counts.append(positions.numel())
        hits += torch.bincount(positions % 100, minlength=100).float()
    # the number of successes is Binomial(n, p): 20 draws within 5 standard deviations of the mean
    assert abs(np.mean(counts) - n * p) < 5 * math.sqrt(n * p * (1 - p) / 20)
    assert chi_square_p(hits.numpy(), np.full(100, hits.sum().item() / 100)) > 1e-3
    # each trial succeeds with probability p, the first ones included
    first = torch.zeros(4)
    for _ in range(4000):
        positions = bernoulli_positions(4, 0.3, g, CPU)
        first[positions] += 1
    assert ((first / 4000 - 0.3).abs() < 0.03).all()


def _plasma_by_points(offsets: list[np.ndarray], decay: float) -> np.ndarray:
    """ImageNet-C's plasma_fractal, point by point with wrap-around neighbours, with given unit offsets
    ``offsets[level]`` ``(3, k, k)`` for the squares' centres, the top and the left edge midpoints."""
    n = 2 * offsets[-1].shape[-1]
    m = np.zeros((n, n))
    wibble, step = 100.0, n
    for off in offsets:
        half, k = step // 2, n // step
        for i in range(k):
            for j in range(k):
                corners = (m[i * step, j * step] + m[(i + 1) * step % n, j * step]
                           + m[i * step, (j + 1) * step % n] + m[(i + 1) * step % n, (j + 1) * step % n])
                m[i * step + half, j * step + half] = corners / 4 + wibble ** 2 * off[0, i, j]
        for kind, (dr, dc) in ((1, (0, half)), (2, (half, 0))):
            for i in range(k):
                for j in range(k):
                    r, c = i * step + dr, j * step + dc
                    around = (m[(r - half) % n, c] + m[(r + half) % n, c] + m[r, (c - half) % n]
                              + m[r, (c + half) % n])
                    m[r, c] = around / 4 + wibble ** 2 * off[kind, i, j]
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def test_diamond_square_equals_the_point_by_point_recursion() -> None:
    g = torch.Generator().manual_seed(5)
    offsets = [torch.rand(3, 2, 2 ** level, 2 ** level, generator=g, dtype=torch.float64) * 2 - 1
               for level in range(5)]
    maps = diamond_square([o.float() for o in offsets], 1.7, 2, CPU)
    assert maps.shape == (2, 32, 32)
    for b in range(2):
        expected = _plasma_by_points([o[:, b].numpy() for o in offsets], 1.7)
        np.testing.assert_allclose(maps[b].numpy(), expected, atol=2e-6)


@pytest.mark.parametrize("max_delta", [1, 3])
def test_glass_offsets_are_uniform_pairs_inside_the_visited_region(max_delta: int) -> None:
    h = w = 40
    offsets = draw_swap_offsets(50, h, w, max_delta, torch.Generator().manual_seed(6), CPU)
    assert offsets.shape == (50, h * w) and offsets.dtype == torch.int32
    grid = offsets.view(50, h, w)
    lo, hi = max_delta + 1, h - max_delta
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[lo:hi + 1, lo:hi + 1] = False
    assert not grid[:, outside].any()
    inside = grid[:, lo:hi + 1, lo:hi + 1].reshape(-1).long()
    # offsets dy * w + dx with dy, dx in [-max_delta, max_delta): decode and count each pair
    dy = torch.div(inside + w // 2, w, rounding_mode="floor")
    dx = inside - dy * w
    side = 2 * max_delta
    assert dy.min() >= -max_delta and dy.max() < max_delta and dx.min() >= -max_delta and dx.max() < max_delta
    observed = np.bincount(((dy + max_delta) * side + dx + max_delta).numpy(), minlength=side * side)
    assert chi_square_p(observed, np.full(side * side, inside.numel() / side ** 2)) > 1e-3


@pytest.mark.parametrize("name", ["shot_noise", "gaussian_noise", "impulse_noise", "glass_blur"])
def test_output_does_not_depend_on_the_thread_count(name: str) -> None:
    from robustssl.threats.corruptions import CORRUPTIONS

    # 50 images of 64 px span two CPU chunks, whose random draws follow one another
    x = torch.rand(50, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    corruption = CORRUPTIONS.create(name)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = corruption(x, 2, torch.Generator().manual_seed(8))
        torch.set_num_threads(2)
        two = corruption(x, 2, torch.Generator().manual_seed(8))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two, rtol=0, atol=0)
