"""Exact, vectorized Poisson sampling for shot noise: ``draw_poisson(rate, generator)``.

``torch.poisson`` draws one value at a time on the CPU (~60 ns each, serial), which made shot noise the
slowest corruption at 224 px. This sampler is exact in distribution and costs a handful of elementwise
passes:

* rates below ``TABLE_LIMIT`` (64; every ImageNet-C shot-noise rate): write ``rate = r + d`` with ``r`` on
  a grid of step ``1/32`` and ``0 <= d < 1/32``; then ``Poisson(rate) = Poisson(r) + Poisson(d)`` for
  independent draws. ``Poisson(r)`` is drawn by inversion with a guide table (Chen & Asau, 1974): the top 8
  bits of the uniform pick one of 256 bins, and for most (grid rate, bin) pairs the whole bin maps to one
  value, read from a table; only when a CDF step falls inside the bin are further uniform bits drawn and
  compared with the tabulated CDF. ``Poisson(d)`` is 0 unless its uniform exceeds ``exp(-d) >=
  exp(-1/32)``, which its top byte rules out 97% of the time; the rest is settled by sequential inversion.
* larger rates (CIFAR-10-C's photon counts, up to 500): ``torch.poisson`` (Hörmann's transformed rejection,
  in double precision). A vectorized version of it measured no faster on the CPU: its float64 arithmetic
  costs about as much per value as the serial sampler.

Random bits come from ``generator`` as 64-bit words split into bytes (8 draws per call of the generator),
plus float uniforms for the few ambiguous cases; resolved uniforms have at least 32 bits, so each outcome
probability is exact to within ``2**-32`` (the tabulated CDF is float64).
"""

from __future__ import annotations

import functools
import math

import torch

from robustssl.threats.corruptions.kernels import draw_bytes

#: grid rows per unit rate (a power of two, so ``rate * ROWS_PER_UNIT`` and the remainder are exact in float)
ROWS_PER_UNIT = 32
#: rates below this use the table; above, torch.poisson
TABLE_LIMIT = 64
_ROWS = TABLE_LIMIT * ROWS_PER_UNIT
#: guide bins per row: one random byte
_BINS = 256
#: tabulated CDF values per row; Poisson(64) exceeds 159 with probability < 1e-14
_KMAX = 160
# guide entries: the value itself (< 128) when the bin maps to one value; else one or several CDF steps inside
_ONE_STEP, _STEPS = 254, 255
# CDF values compared per gather in the tail bins, which hold several steps
_WINDOW = 8
# a byte below this leaves the uniform under exp(-1/32) <= exp(-d): Poisson(d) is certainly 0
_ZERO_CUT = math.floor(_BINS * math.exp(-1 / ROWS_PER_UNIT))


@functools.lru_cache(maxsize=8)
def _tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(guide, bounds, cdf)``: the flat ``(rows * 256,)`` uint8 guide, the ``(2, rows * 256)`` uint8 least
    and greatest value of each bin, and the flat ``(rows * _KMAX,)`` float64 CDF of Poisson(row /
    ROWS_PER_UNIT); built once per device."""
    rate = torch.arange(_ROWS, dtype=torch.float64) / ROWS_PER_UNIT
    k = torch.arange(_KMAX, dtype=torch.float64)
    log_pmf = -rate[:, None] + k * torch.log(rate.clamp_min(1e-300))[:, None] - torch.lgamma(k + 1)
    log_pmf[0] = torch.where(k == 0, 0.0, -math.inf)  # Poisson(0) is 0
    cdf = torch.exp(log_pmf).cumsum(1)
    edges = torch.arange(_BINS + 1, dtype=torch.float64) / _BINS
    # smallest value whose CDF reaches the bin's lower edge, and the same just below its upper edge
    first = torch.searchsorted(cdf, edges[:-1].expand(_ROWS, _BINS).contiguous())
    last = torch.searchsorted(cdf, edges[1:].expand(_ROWS, _BINS).contiguous())
    guide = torch.where(last == first, first, torch.where(last == first + 1, _ONE_STEP, _STEPS))
    bounds = torch.stack((first, last)).to(torch.uint8).reshape(2, -1)
    return guide.to(torch.uint8).reshape(-1).to(device), bounds.to(device), cdf.reshape(-1).to(device)


def draw_poisson(rate: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent Poisson draws with means ``rate`` (any shape, finite, >= 0), float32 on ``rate``'s device.

    Random draws are made on the generator's device (torch's default generator when None), as
    ``torch.poisson`` does; the same generator state gives the same draws.
    """
    if rate.numel() == 0:
        return torch.zeros(rate.shape, dtype=torch.float32, device=rate.device)
    device = generator.device if generator is not None else rate.device
    flat = rate.detach().reshape(-1).to(device=device, dtype=torch.float32)
    low, high = (float(v) for v in torch.aminmax(flat))
    if not (low >= 0 and math.isfinite(high)):
        raise ValueError(f"draw_poisson: rates must be finite and >= 0, got values in [{low}, {high}]")
    n = flat.numel()
    top, zero_byte = draw_bytes(2 * n, generator, device).view(2, n)
    row = (flat * ROWS_PER_UNIT).int()
    large = flat >= TABLE_LIMIT if high >= TABLE_LIMIT else None
    if large is not None:
        # off the table: a placeholder row, and no settling (their values come from torch.poisson below)
        row.clamp_(max=_ROWS - 1)
        zero_byte = zero_byte.masked_fill(large, 0)
    guide, bounds, cdf = _tables(device)
    key = row.mul_(_BINS).add_(top)
    entry = guide.index_select(0, key)
    if large is not None:
        entry.masked_fill_(large, 0)
    out = entry.float()
    special = torch.maximum(entry, zero_byte).ge_(_ZERO_CUT).nonzero().squeeze(1)
    if special.numel():
        values = _settle(flat, special, key, entry, top, zero_byte, generator, bounds, cdf)
        out.index_copy_(0, special, values)
    if large is not None:
        at = large.nonzero().squeeze(1)
        out.index_copy_(0, at, torch.poisson(flat.index_select(0, at), generator=generator))
    return out.view(rate.shape).to(rate.device)


def _settle(flat: torch.Tensor, special: torch.Tensor, key: torch.Tensor, entry: torch.Tensor,
            top: torch.Tensor, zero_byte: torch.Tensor, generator: torch.Generator | None,
            bounds: torch.Tensor, cdf: torch.Tensor) -> torch.Tensor:
    """Exact values at the ``special`` positions (a few % of them): a CDF step inside the guide bin, or a
    possibly nonzero remainder draw. Each byte is extended to a finer uniform by 24 more random bits. Written
    with few, whole-subset operations: on these small subsets the cost per call dominates."""
    device = flat.device
    slot = key.index_select(0, special)
    row = torch.bitwise_right_shift(slot, 8)
    value = entry.index_select(0, special)
    fine = torch.rand(2, special.numel(), generator=generator, device=device).double()
    steps = (value >= _ONE_STEP).nonzero().squeeze(1)
    value = value.long()
    if steps.numel():
        # grid part: the value is the number of tabulated CDF values below the uniform, counted from the bin's
        # least value up to its greatest (past which the CDF exceeds every uniform in the bin)
        at = slot.index_select(0, steps)
        u = fine[0].index_select(0, steps).add_(torch.bitwise_and(at, _BINS - 1)).div_(_BINS)
        low, high = bounds.index_select(1, at).long()
        base = row.index_select(0, steps).long().mul_(_KMAX)
        # most bins hold one CDF step, settled by one comparison
        below = cdf.take(base + low) < u
        low += below
        wide = (below & (high > low)).nonzero().squeeze(1)
        window = torch.arange(_WINDOW, device=device)
        while wide.numel():
            # tail bins hold several steps: compare with the next few CDF values in one gather, and go on
            # where all of them were below
            at_row = (low.index_select(0, wide)[:, None] + window).clamp_(max=_KMAX - 1)
            at_row += base.index_select(0, wide)[:, None]
            count = (cdf.take(at_row) < u.index_select(0, wide)[:, None]).sum(1)
            low.index_add_(0, wide, count)
            wide = wide.index_select(0, (count == _WINDOW).nonzero().squeeze(1))
        value.index_copy_(0, steps, low)
    # remainder part: Poisson(d) for d = rate - grid rate < 1/32, by inversion where it can be nonzero
    maybe = (zero_byte.index_select(0, special) >= _ZERO_CUT).nonzero().squeeze(1)
    if maybe.numel():
        at = special.index_select(0, maybe)
        d = flat.index_select(0, at).double().sub_(row.index_select(0, maybe).double() / ROWS_PER_UNIT)
        v = fine[1].index_select(0, maybe).add_(zero_byte.index_select(0, at)).div_(_BINS)
        # count the CDF values of Poisson(d) below v: terms until none is left (P(Z > 4) < 3e-10)
        pmf = torch.exp(-d)
        cum = pmf.clone()
        count = torch.zeros_like(value.index_select(0, maybe))
        k = 0
        while True:
            below = v > cum
            if not bool(below.any()):
                break
            count += below
            k += 1
            pmf.mul_(d).div_(k)
            cum += pmf
        value.index_add_(0, maybe, count)
    return value.float()
