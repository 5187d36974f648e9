"""Filters and resampling for the corruptions: border-exact padding, Gaussian / disk / line kernels, Pillow's
resampling matrices and the random draws the corruptions make. All batched over ``(B, C, H, W)``.

Border modes are named after what they do, because every reference library spells them differently:

* ``"replicate"``  -- ``aaa|abcd|ddd``  (scipy/skimage ``nearest``, OpenCV ``BORDER_REPLICATE``)
* ``"symmetric"``  -- ``cba|abcd|dcb``  (scipy/skimage ``reflect``: half-sample symmetric)
* ``"reflect101"`` -- ``dcb|abcd|cba``  (OpenCV ``BORDER_REFLECT_101``, as in ``filter2D``; torch ``reflect``)

Where ``F.pad`` cannot (symmetric borders, reflections wider than the image: ImageNet-C kernels are up to
21 px wide and must still apply to a 16-px image) padding falls back to index arithmetic, valid for any width.
Filtering avoids torch's CPU convolution, which is slow for one-channel kernels: separable filters are dense
matrix products with the border folded in, 2-D kernels go through the FFT.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

BORDER_MODES = ("replicate", "symmetric", "reflect101")


def border_index(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Indices into a length-``n`` axis, padded by ``before``/``after`` samples in ``mode``. (n + pads,)"""
    if mode not in BORDER_MODES:
        raise ValueError(f"unknown border mode {mode!r}; accepted: {', '.join(BORDER_MODES)}")
    i = torch.arange(-before, n + after, device=device)
    if mode == "replicate" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "symmetric":
        period = 2 * n
        i = i.remainder(period)
        return torch.where(i >= n, period - 1 - i, i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def pad2d(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of ``(..., H, W)`` with a named border ``mode`` (any width)."""
    h, w = x.shape[-2:]
    # torch's own padding is much faster than index_select where it applies
    if x.dim() in (3, 4) and (mode == "replicate" or (mode == "reflect101" and max(top, bottom) < h
                                                       and max(left, right) < w)):
        return F.pad(x, (left, right, top, bottom), mode="replicate" if mode == "replicate" else "reflect")
    if top or bottom:
        x = x.index_select(-2, border_index(h, top, bottom, mode, x.device))
    if left or right:
        x = x.index_select(-1, border_index(w, left, right, mode, x.device))
    return x


def gaussian_kernel1d(sigma: float, truncate: float, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, normalized to sum 1. (2r+1,)"""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2) if sigma > 0 else (t == 0).double()
    return (k / k.sum()).to(device=device, dtype=dtype)


def filter_matrix(n: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """The ``(n, n)`` matrix of correlating a length-``n`` axis with an odd ``kernel`` under border ``mode``:
    row ``i`` holds the weights of output ``i``, with the border samples folded onto the pixels they copy."""
    k = kernel.numel()
    taps = torch.arange(n, device=kernel.device)[:, None] + torch.arange(k, device=kernel.device)[None, :]
    source = border_index(n, k // 2, k // 2, mode, kernel.device)[taps]
    matrix = torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device)
    return matrix.scatter_add_(1, source, kernel.expand(n, k).contiguous())


#: output rows per block of a banded filter product on CPU (see ``_banded_spans``)
BAND_BLOCK = 32


def _banded_spans(matrix: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    """Blocks ``(i0, i1, c0, c1)`` covering the rows of a filter matrix, each with the column range outside
    which its rows are zero; None when blocking would not save at least a third of the dense product.

    A short kernel's matrix is a band (border folds stay within the kernel radius of the edge), so multiplying
    ``BAND_BLOCK``-row blocks by only their columns does the same sums, skipping the zeros: ~1.3-1.5x faster
    on CPU for the small Gaussians of glass blur, gaussian blur and the elastic field. Spans come from the
    actual nonzeros, so any border mode is handled (a wrapping one just falls back to the dense product).
    """
    m, n = matrix.shape
    nonzero = matrix != 0
    first = nonzero.to(torch.uint8).argmax(1).tolist()
    last = (n - 1 - nonzero.flip(1).to(torch.uint8).argmax(1)).tolist()
    spans = []
    for i0 in range(0, m, BAND_BLOCK):
        i1 = min(m, i0 + BAND_BLOCK)
        spans.append((i0, i1, min(first[i0:i1]), max(last[i0:i1]) + 1))
    if sum((i1 - i0) * (c1 - c0) for i0, i1, c0, c1 in spans) * 3 > 2 * m * n:
        return None
    return spans


def band_matmul_last(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``x @ matrix.T`` (a linear map along the last axis), block-banded on CPU where that saves work."""
    spans = _banded_spans(matrix) if x.device.type == "cpu" else None
    if spans is None:
        return x @ matrix.T
    return torch.cat([x[..., c0:c1] @ matrix[i0:i1, c0:c1].T for i0, i1, c0, c1 in spans], -1)


def band_matmul_rows(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` (a linear map along the second-to-last axis), block-banded on CPU where that saves
    work."""
    spans = _banded_spans(matrix) if x.device.type == "cpu" else None
    if spans is None:
        return matrix @ x
    return torch.cat([matrix[i0:i1, c0:c1] @ x[..., c0:c1, :] for i0, i1, c0, c1 in spans], -2)


def correlate_separable(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate each channel of ``(B, C, H, W)`` with ``ky ⊗ kx`` (odd lengths), border ``mode``.

    Computed as ``My @ x @ Mx.T`` with the borders folded into filter matrices: for kernels of up to ~50 taps
    a BLAS matrix product is several times faster on CPU than torch's single-channel convolution, and for
    short kernels the products are split into blocks that skip the zeros off the band.
    """
    h, w = x.shape[-2:]
    if kx.numel() > 1:
        x = band_matmul_last(x, filter_matrix(w, kx.to(x.dtype), mode))
    if ky.numel() > 1:
        x = band_matmul_rows(filter_matrix(h, ky.to(x.dtype), mode), x)
    return x


def gaussian_filter(x: torch.Tensor, sigma: float | tuple[float, float], mode: str = "replicate",
                    truncate: float = 4.0) -> torch.Tensor:
    """``skimage.filters.gaussian`` per channel of ``(B, C, H, W)``; ``sigma`` is one value or ``(sy, sx)``.

    Defaults are skimage's (``mode="nearest"`` = replicate, truncate 4). A sigma of 0 leaves that axis alone,
    as scipy does.
    """
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    ky = gaussian_kernel1d(sy, truncate, x.dtype, x.device)
    kx = gaussian_kernel1d(sx, truncate, x.dtype, x.device)
    return correlate_separable(x, ky, kx, mode)


def _fft_length(n: int) -> int:
    """The smallest length >= ``n`` with no prime factor above 5 (fast for pocketfft / cuFFT)."""
    m = n
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect101") -> torch.Tensor:
    """OpenCV ``filter2D``: correlate each channel of ``(B, C, H, W)`` with an odd ``(k, k)`` kernel, or each
    image with its own kernel from a ``(B, k, k)`` stack.

    Runs through the FFT (as OpenCV does for wide kernels; on CPU torch's single-channel convolution is far
    slower), on the image padded with the border ``mode`` by at least the kernel radius, so that the kept
    region is free of wrap-around.
    """
    h, w = x.shape[-2:]
    stack = kernel if kernel.dim() == 3 else kernel[None]
    # all-zero outer rings contribute nothing, so cropping them is exact and saves most of the work for the
    # 17x17 support that small defocus disks are drawn on
    r = stack.shape[-1] // 2
    nz = (stack != 0).any(0).nonzero()
    keep = int((nz - r).abs().max()) if nz.numel() else 0
    stack = stack[:, r - keep:r + keep + 1, r - keep:r + keep + 1].to(x.dtype)
    if keep == 0:
        return x * stack[:, None, :1, :1]
    ph, pw = _fft_length(h + 2 * keep), _fft_length(w + 2 * keep)
    padded = pad2d(x, keep, ph - h - keep, keep, pw - w - keep, mode)
    # correlation = convolution with the flipped kernel, centred on index 0 of the circular grid
    spread = torch.zeros(stack.shape[0], ph, pw, dtype=x.dtype, device=x.device)
    spread[:, :2 * keep + 1, :2 * keep + 1] = stack.flip(-2, -1)
    spread = spread.roll((-keep, -keep), (1, 2))
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * torch.fft.rfft2(spread)[:, None], s=(ph, pw))
    return out[..., keep:keep + h, keep:keep + w].contiguous()


def disk_kernel(radius: float, alias_blur: float, device: torch.device) -> torch.Tensor:
    """ImageNet-C's defocus disk: the aliased disk ``x²+y² <= r²`` on a grid of half-width ``max(8, r)``,
    normalized, then smoothed by an OpenCV Gaussian of ``alias_blur`` (3x3 for r <= 8, else 5x5) to antialias.

    Returns a float64 ``(k, k)`` kernel summing to 1 (make_imagenet_c.py / imagecorruptions ``disk``).
    """
    half = 8 if radius <= 8 else radius
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    # the reference builds the aliased disk in float32 before normalizing
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).to(torch.float32).double()
    disk = disk / disk.sum()
    ksize = 3 if radius <= 8 else 5
    # OpenCV getGaussianKernel for sigma > 0: exp(-(i - (k-1)/2)² / (2 sigma²)), normalized
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-(t ** 2) / (2 * alias_blur ** 2))
    g = g / g.sum()
    blurred = correlate_separable(disk[None, None], g, g, "reflect101")[0, 0]
    return blurred.to(device)


def motion_taps(radius: int, sigma: float) -> torch.Tensor:
    """ImageMagick's motion-blur weights as imagecorruptions re-implements them: ``2·radius+1`` samples of a
    one-sided Gaussian ``exp(-i²/2σ²)``, normalized. (2r+1,) float64."""
    width = 2 * radius + 1
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i ** 2) / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
    return k / k.sum()


def pil_resample_matrix(n_in: int, n_out: int, filter_name: str, device: torch.device,
                        dtype: torch.dtype) -> torch.Tensor:
    """The ``(n_out, n_in)`` weight matrix of Pillow's ``Image.resize`` along one axis.

    ``"box"``: Pillow's convolution resampler with the box filter (support scaled by the downscale factor, a
    pixel counts when ``-0.5 < (j + 0.5 - centre) / scale <= 0.5``); ``"nearest"``: source ``floor((i + 0.5) ·
    n_in / n_out)``. Follows Pillow's src/libImaging/Resample.c (``precompute_coeffs``) and Geometry.c.
    """
    if filter_name not in ("box", "nearest"):
        raise ValueError(f"unknown resampling filter {filter_name!r}; accepted: box, nearest")
    return _pil_resample_matrix(n_in, n_out, filter_name).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _pil_resample_matrix(n_in: int, n_out: int, filter_name: str) -> torch.Tensor:
    """CPU float64 ``pil_resample_matrix``, cached: the per-row loop costs more than applying the matrix."""
    scale = n_in / n_out
    out = torch.zeros(n_out, n_in, dtype=torch.float64)
    if filter_name == "nearest":
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale).floor().long().clamp(0, n_in - 1)
        out[torch.arange(n_out), src] = 1.0
        return out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = torch.arange(lo, hi, dtype=torch.float64)
        arg = (j - centre + 0.5) / filterscale
        weight = ((arg > -0.5) & (arg <= 0.5)).double()
        if weight.sum() > 0:
            out[i, lo:hi] = weight / weight.sum()
    return out


def draw_uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 low: float = 0.0, high: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform ``[low, high)`` draws made on the generator's device (CUDA generators only feed CUDA tensors),
    then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype)
    return (u * (high - low) + low).to(device)


def draw_normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                std: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normal ``N(0, std²)`` draws made on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return (torch.randn(shape, generator=generator, device=gen_device, dtype=dtype) * std).to(device)


def draw_integers(shape: tuple[int, ...], low: int, high: int, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Integers uniform on ``[low, high)`` (numpy's ``randint`` convention), as int64 on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=gen_device).to(device)

