"""Procedural textures for the weather corruptions: plasma fractals (fog) and frost, batched torch.

Every texture is drawn on the generator's device from an explicit ``torch.Generator`` (or torch's default
generator on ``device`` when ``generator`` is None) and returned on ``device``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
            low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Uniform ``[low, high)`` float32 samples of ``shape`` drawn from ``generator``, moved to ``device``."""
    source = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=source)
    return (low + (high - low) * u).to(device)


def normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
           mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Gaussian float32 samples of ``shape`` drawn from ``generator`` and moved to ``device``."""
    source = generator.device if generator is not None else device
    z = torch.randn(shape, generator=generator, device=source)
    return (mean + std * z).to(device)


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def plasma_fractal(batch: int, mapsize: int, wibbledecay: float, generator: torch.Generator | None,
                   device: torch.device) -> torch.Tensor:
    """Diamond-square height maps, ``(batch, mapsize, mapsize)`` in [0, 1], one independent map per sample.

    The recursion of ImageNet-C's ``plasma_fractal`` (hendrycks/robustness, itself after FLHerne/mapgen):
    corner value 0, a random offset of amplitude ``wibble**2`` (``wibble`` starts at 100) added to every new
    midpoint, ``wibble`` divided by ``wibbledecay`` per level, wrap-around neighbours, then min-max
    normalisation. Larger ``wibbledecay`` gives smoother maps. ``mapsize`` must be a power of two.
    """
    if mapsize < 1 or mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two, got {mapsize}")
    if wibbledecay <= 0:
        raise ValueError(f"plasma_fractal: wibbledecay must be > 0, got {wibbledecay}")
    maps = torch.zeros(batch, mapsize, mapsize, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        # the same draw as uniform(-wibble^2, wibble^2), scaled in place to save passes over the level
        u = uniform(tuple(total.shape), generator, device)
        return u.mul_(2 * wibble * wibble).sub_(wibble * wibble).add_(total, alpha=0.25)

    while step >= 2:
        half = step // 2
        # squares: the centre of every step-sized square is the mean of its four corners
        corners = maps[:, 0::step, 0::step]
        total = corners + torch.roll(corners, -1, dims=1)
        total.add_(torch.roll(total, -1, dims=2))  # in place (as below): same sums, fewer allocations
        maps[:, half::step, half::step] = wibbled_mean(total)
        # diamonds: edge midpoints from the two adjacent centres and the two adjacent corners
        centres, corners = maps[:, half::step, half::step], maps[:, 0::step, 0::step]
        top = (centres + torch.roll(centres, 1, dims=1)).add_(corners).add_(torch.roll(corners, -1, dims=2))
        maps[:, 0::step, half::step] = wibbled_mean(top)
        left = (centres + torch.roll(centres, 1, dims=2)).add_(corners).add_(torch.roll(corners, -1, dims=1))
        maps[:, half::step, 0::step] = wibbled_mean(left)
        step //= 2
        wibble /= wibbledecay
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


def _line_streaks(seeds: torch.Tensor, angles: torch.Tensor, length: int) -> torch.Tensor:
    """Each nonzero pixel of ``seeds`` ``(B, H, W)`` smeared into a straight streak of ``length`` pixels at
    the per-sample angle ``angles`` ``(B,)`` (radians), fading linearly along the streak (a line-kernel
    convolution)."""
    steps = torch.arange(length, device=seeds.device, dtype=torch.float32)
    off_y = -torch.round(steps[None] * torch.sin(angles)[:, None]).long()
    off_x = -torch.round(steps[None] * torch.cos(angles)[:, None]).long()
    return shift_sum(seeds[:, None], off_y, off_x, [1 - i / length for i in range(length)])[:, 0]


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
    # Needles: sparse seeds, each grown into a streak; three families 60 degrees apart, random base angle.
    base = uniform((batch,), generator, device, 0.0, math.pi)
    needles = torch.zeros(batch, h0, w0, device=device)
    for k in range(3):
        # one draw gives both the seed mask and its strength: given u < density, u / density is uniform on
        # [0, 1), so seeds are uniform on [0.5, 1) as with a second draw, at half the random numbers
        u = uniform((batch, h0, w0), generator, device)
        seeds = torch.where(u < _NEEDLE_DENSITY, u.mul_(0.5 / _NEEDLE_DENSITY).add_(0.5), 0.0)
        needles = needles + _line_streaks(seeds, base + k * math.pi / 3, _NEEDLE_LENGTH)
    texture = _standardize(needles).mul_(_NEEDLE_WEIGHT).add_(film)[:, None]
    # the reference shrinks photographs with cv2.INTER_LINEAR (no antialiasing) and enlarges with INTER_CUBIC
    mode = "bilinear" if scale < 1 else "bicubic"
    texture = F.interpolate(texture, size=(height, width), mode=mode, align_corners=False)
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
