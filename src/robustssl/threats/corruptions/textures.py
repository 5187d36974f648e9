"""Procedural textures for the weather corruptions: plasma fractals (fog) and frost, batched torch.

Every texture is drawn on the generator's device from an explicit ``torch.Generator`` (or torch's default
generator on ``device`` when ``generator`` is None) and returned on ``device``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustssl.threats.corruptions.kernels import draw_bytes, resize


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
            low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Uniform ``[low, high)`` float32 samples of ``shape`` drawn from ``generator``, moved to ``device``."""
    source = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=source)
    if (low, high) != (0.0, 1.0):
        u.mul_(high - low).add_(low)
    return u.to(device)


def normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
           mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Gaussian float32 samples of ``shape`` drawn from ``generator`` and moved to ``device``."""
    source = generator.device if generator is not None else device
    z = torch.randn(shape, generator=generator, device=source)
    return z.mul_(std).add_(mean).to(device)


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def plasma_fractal(batch: int, mapsize: int, wibbledecay: float, generator: torch.Generator | None,
                   device: torch.device) -> torch.Tensor:
    """Diamond-square height maps, ``(batch, mapsize, mapsize)`` in [0, 1], one independent map per sample.

    The recursion of ImageNet-C's ``plasma_fractal`` (hendrycks/robustness, itself after FLHerne/mapgen):
    corner value 0, a random offset uniform on ``[-wibble**2, wibble**2)`` (``wibble`` starts at 100) added
    to every new midpoint, ``wibble`` divided by ``wibbledecay`` per level, wrap-around neighbours, then
    min-max normalisation. Larger ``wibbledecay`` gives smoother maps. ``mapsize`` must be a power of two.
    The offsets are 24-bit uniforms (as ``torch.rand``'s) cut from random 32-bit words, see
    ``diamond_square``.
    """
    if mapsize < 1 or mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two, got {mapsize}")
    if wibbledecay <= 0:
        raise ValueError(f"plasma_fractal: wibbledecay must be > 0, got {wibbledecay}")
    counts = [3 * batch * 4 ** level for level in range(mapsize.bit_length() - 1)]
    words = draw_bytes(4 * sum(counts), generator, device).view(torch.int32)
    # the top 24 bits as a signed integer in [-2**23, 2**23): exactly uniform on [-1, 1) in steps of 2**-23
    units = torch.bitwise_right_shift(words, 8).float().mul_(2.0 ** -23)
    offsets = [part.view(3, batch, 2 ** level, 2 ** level) for level, part in enumerate(units.split(counts))]
    return diamond_square(offsets, wibbledecay, batch, device)


def diamond_square(offsets: list[torch.Tensor], wibbledecay: float, batch: int,
                   device: torch.device) -> torch.Tensor:
    """The diamond-square recursion of ``plasma_fractal`` with given unit offsets: ``offsets[level]`` is
    ``(3, batch, 2**level, 2**level)`` in [-1, 1), scaled by ``wibble**2``, for the squares' centres, the
    top and the left edge midpoints of that level. Returns ``(batch, n, n)`` in [0, 1], ``n = 2**levels``.

    Each level holds the grid of corners ``c`` (``k x k``, wrapping around) and builds the centres and edge
    midpoints as separate ``k x k`` grids from circularly padded copies, then interleaves the four into the
    next level's ``2k x 2k`` corners: dense passes instead of strided reads and writes into one map.
    """
    corners = torch.zeros(batch, 1, 1, device=device)
    wibble = 100.0
    for noise in offsets:
        k = corners.shape[-1]
        scale = wibble * wibble
        # c padded with its first row and column after the last: c[i + 1, j], c[i, j + 1], c[i + 1, j + 1]
        c = F.pad(corners[:, None], (0, 1, 0, 1), mode="circular")[:, 0]
        total = c[:, 1:, :k] + c[:, :k, :k]
        total.add_(c[:, :k, 1:]).add_(c[:, 1:, 1:])
        centres = noise[0].mul(scale).add_(total, alpha=0.25)
        # centres padded with their last row and column before the first: m[i - 1, j], m[i, j - 1]
        m = F.pad(centres[:, None], (1, 0, 1, 0), mode="circular")[:, 0]
        # top midpoint (i, j + 1/2): centres below and above it, corners left and right of it
        top = m[:, :k, 1:] + centres
        top.add_(corners).add_(c[:, :k, 1:])
        top = noise[1].mul(scale).add_(top, alpha=0.25)
        # left midpoint (i + 1/2, j): centres right and left of it, corners above and below it
        left = m[:, 1:, :k] + centres
        left.add_(corners).add_(c[:, 1:, :k])
        left = noise[2].mul(scale).add_(left, alpha=0.25)
        rows = torch.stack((torch.stack((corners, top), -1), torch.stack((left, centres), -1)), 2)
        corners = rows.view(batch, 2 * k, 2 * k)
        wibble /= wibbledecay
    maps = corners
    flat = maps.view(batch, -1)
    lo = flat.amin(dim=1).view(batch, 1, 1)
    span = (flat.amax(dim=1).view(batch, 1, 1) - lo).clamp_min(1e-12)
    return maps.sub_(lo).div_(span)


# Colour statistics (0..255, RGB) of the five frost photographs ImageNet-C draws from (imagecorruptions 1.1.2
# frost1.png .. frost5.jpg; ``np.random.randint(5)`` never picks frost6.jpg, and frost2/frost3 are the same
# picture), measured from the photographs: per-channel mean, mean standard deviation within 200x200 crops (the
# crop size the reference takes, in photograph pixels) and standard deviation over the whole photograph (the
# difference is crop-to-crop variation of the mean brightness).
FROST_STYLES = (
    ((77.7, 149.1, 165.7), (23.1, 13.8, 13.1), (26.9, 16.5, 15.3)),     # frost1: teal window frost
    ((200.8, 205.4, 214.5), (18.9, 19.5, 20.2), (21.4, 22.1, 22.6)),    # frost2: dense white frost
    ((200.8, 205.4, 214.5), (18.9, 19.5, 20.2), (21.4, 22.1, 22.6)),    # frost3 (= frost2)
    ((137.6, 152.8, 165.2), (25.8, 25.9, 27.2), (28.5, 28.5, 29.9)),    # frost4: grey-blue crystals
    ((112.4, 123.4, 134.8), (36.1, 35.7, 34.9), (44.4, 43.3, 41.7)),    # frost5: high-contrast ferns
)
# Texture mix, fitted so that, per channel, the share of the texture's variance inside an 11x11 Gaussian
# window (what SSIM sees) and the mean local standard deviation approach the photographs' at ImageNet-C's
# scale (0.41 and 13.5; dense short needles keep the local contrast as even as in the photographs).
_FILM_DECAY, _NEEDLE_WEIGHT, _NEEDLE_LENGTH, _NEEDLE_DENSITY = 1.3, 1.05, 6, 0.03


def _centred(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` minus its mean over the last two dimensions, and its (unbiased) standard deviation there.

    Written as mean, subtraction and a sum of squares over flattened planes: several times faster on the CPU
    than ``torch.std_mean`` over two dimensions."""
    flat = t.flatten(-2)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    var = (centred * centred).sum(dim=-1, keepdim=True) / max(flat.shape[-1] - 1, 1)
    return centred.view_as(t), var.sqrt_().unsqueeze(-1)


def _standardize(t: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the last two dimensions."""
    centred, std = _centred(t)
    return centred.div_(std.clamp_min(1e-6))


def shift_sum(x: torch.Tensor, off_y: torch.Tensor, off_x: torch.Tensor, weights: list[float],
              mode: str = "constant") -> torch.Tensor:
    """``out[b, :, y, x] = sum_k weights[k] * x[b, :, y + off_y[b, k], x + off_x[b, k]]`` on ``(B, C, H, W)``
    with per-sample integer offsets ``(B, K)``: a sparse per-sample convolution. ``mode`` pads the border
    (``"replicate"`` repeats edge pixels, ``"constant"`` reads zeros).

    Each tap is an in-place ``add_`` of a shifted view of one padded sample: no index tensors (a flat
    ``gather`` per tap cost several times more in index arithmetic and memory traffic), and one sample's
    planes stay in cache across its taps."""
    b, c, h, w = x.shape
    pad = int(max(off_y.abs().max(), off_x.abs().max())) if off_y.numel() else 0
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode) if pad else x
    out = torch.zeros(b, c, h, w, device=x.device, dtype=x.dtype)
    for i, (dys, dxs) in enumerate(zip((off_y + pad).tolist(), (off_x + pad).tolist(), strict=True)):
        target, source = out[i], padded[i]
        for dy, dx, wt in zip(dys, dxs, weights, strict=True):
            target.add_(source[:, dy:dy + h, dx:dx + w], alpha=wt)
    return out


def bernoulli_positions(n: int, p: float, generator: torch.Generator | None,
                        device: torch.device) -> torch.Tensor:
    """The indices, ascending int64, at which ``n`` independent Bernoulli(``p``) trials succeed.

    Drawn as the gaps between successes, which are independent geometric variables ``floor(log U / log(1 -
    p)) + 1``: one uniform per success instead of one per trial, and no scan over the ``n`` trials.
    """
    if not 0 < p < 1:
        raise ValueError(f"bernoulli_positions: p must be in (0, 1), got {p}")
    scale = 1 / math.log1p(-p)
    parts, end = [], -1
    while True:
        expected = (n - 1 - end) * p
        count = int(expected + 6 * math.sqrt(expected) + 16)
        # 1 - U lies in (0, 1]: its log is finite
        gaps = torch.floor(torch.log1p(-uniform((count,), generator, device)) * scale) + 1
        positions = end + gaps.to(torch.int64).cumsum(0)
        parts.append(positions[positions < n])
        if int(positions[-1]) >= n:
            return torch.cat(parts)
        end = int(positions[-1])


def _needles(batch: int, height: int, width: int, base: torch.Tensor, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    """Frost needles ``(batch, height, width)``: in each of three families (angles ``base + k * 60°``,
    ``base`` ``(batch,)`` in radians) a pixel seeds a needle with probability ``_NEEDLE_DENSITY``, of
    strength uniform on [0.5, 1), smeared into a straight streak of ``_NEEDLE_LENGTH`` pixels that fades
    linearly (a line-kernel convolution of the sparse seeds).

    Only the ~3 % of pixels that seed are drawn (``bernoulli_positions``) and scattered along their streaks
    (``index_add_``), so the cost follows the seeds, not the pixels.
    """
    plane, length = height * width, _NEEDLE_LENGTH
    seeds = bernoulli_positions(3 * batch * plane, _NEEDLE_DENSITY, generator, device)
    # seeds index (family, sample, y, x); streaks are drawn on planes with a margin of `length` pixels all
    # round, so that no streak leaves its plane (the margins are cut off at the end)
    group, pixel = seeds.div(plane, rounding_mode="floor"), seeds.remainder(plane)
    wide = width + 2 * length
    start = (group.remainder(batch) * (height + 2 * length) + length) * wide + length
    start += pixel.div(width, rounding_mode="floor") * wide + pixel.remainder(width)
    angle = base[None, :] + torch.arange(3, device=device)[:, None] * (math.pi / 3)  # (family, sample)
    steps = torch.arange(length, device=device, dtype=torch.float32)
    shift = (torch.round(steps * torch.sin(angle)[..., None]) * wide
             + torch.round(steps * torch.cos(angle)[..., None])).long().view(3 * batch, length)
    strength = uniform((seeds.numel(), 1), generator, device, 0.5, 1.0)
    needles = torch.zeros(batch, height + 2 * length, wide, device=device)
    needles.view(-1).index_add_(0, (start[:, None] + shift[group]).view(-1),
                                (strength * (1 - steps / length)).view(-1))
    return needles[:, length:length + height, length:length + width]


def frost_texture(batch: int, height: int, width: int, scale: float, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Procedural frost layers, ``(batch, 3, height, width)`` float32 in [0, 255] (the photographs' units).

    Replaces ImageNet-C's six frost photographs (which robustssl does not ship): a rough plasma fractal (the
    uneven thickness of the ice film) plus dendritic needles (short streaks in three directions 60 degrees
    apart, as hexagonal ice grows, with a random rotation per sample), standardised and coloured with the
    statistics of one of the five photographs the reference samples from (``FROST_STYLES``). ``scale`` is
    output pixels per photograph pixel: the texture is synthesised at photograph resolution and resized, as
    the reference resizes its photographs.
    """
    h0, w0 = max(2, math.ceil(height / scale)), max(2, math.ceil(width / scale))
    size = next_power_of_two(max(h0, w0))
    film = _standardize(plasma_fractal(batch, size, _FILM_DECAY, generator, device)[:, :h0, :w0])
    # needles in three families 60 degrees apart, with a random base angle per sample
    base = uniform((batch,), generator, device, 0.0, math.pi)
    needles = _needles(batch, h0, w0, base, generator, device)
    texture = _standardize(needles).mul_(_NEEDLE_WEIGHT).add_(film)[:, None]
    # the reference shrinks photographs with cv2.INTER_LINEAR (no antialiasing) and enlarges with INTER_CUBIC
    mode = "bilinear" if scale < 1 else "bicubic"
    texture = resize(texture, (height, width), mode)
    texture, t_std = _centred(texture)
    styles = torch.tensor(FROST_STYLES, dtype=torch.float32, device=device)  # (5, 3 statistics, 3 channels)
    pick = torch.floor(uniform((batch,), generator, device, 0.0, len(FROST_STYLES))).long()
    style = styles[pick.clamp_max(len(FROST_STYLES) - 1)][..., None, None]  # (B, 3, 3, 1, 1)
    mean, crop_std, whole_std = style[:, 0], style[:, 1], style[:, 2]
    # crop-to-crop brightness variation, so that the layer's total variance matches the photographs'
    offset = normal((batch, 1, 1, 1), generator, device) * (whole_std ** 2 - crop_std ** 2).sqrt()
    # mean + offset + crop_std * standardised texture, as one fused pass over the full-size layer
    gain = crop_std / t_std.clamp_min(1e-6)
    return torch.addcmul(mean + offset, texture, gain).clamp_(0.0, 255.0)
