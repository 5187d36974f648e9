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


#: output rows per block of a banded filter product on CPU (see ``banded_spans``)
BAND_BLOCK = 32


def banded_spans(matrix: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Blocks ``(i0, i1, c0, c1)`` covering the rows of a filter matrix, each with the column range outside
    which its rows are zero; empty when blocking would not save at least a third of the dense product.

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
        return []
    return spans


def _tracks_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an op on ``tensors`` (``out=`` products cannot be differentiated)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def band_matmul_last(x: torch.Tensor, matrix: torch.Tensor,
                     spans: list[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
    """``x @ matrix.T`` (a linear map along the last axis), block-banded on CPU where that saves work;
    ``spans`` are ``banded_spans(matrix)``, computed here unless the caller cached them."""
    if x.device.type != "cpu" or _tracks_grad(x, matrix):
        return x @ matrix.T
    spans = banded_spans(matrix) if spans is None else spans
    if not spans:
        return x @ matrix.T
    out = x.new_empty(*x.shape[:-1], matrix.shape[0])
    for i0, i1, c0, c1 in spans:
        # written straight into the output block: a concatenation would cost another pass
        torch.matmul(x[..., c0:c1], matrix[i0:i1, c0:c1].T, out=out[..., i0:i1])
    return out


def band_matmul_rows(matrix: torch.Tensor, x: torch.Tensor,
                     spans: list[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
    """``matrix @ x`` (a linear map along the second-to-last axis), block-banded on CPU where that saves
    work; ``spans`` as for ``band_matmul_last``."""
    if x.device.type != "cpu" or _tracks_grad(x, matrix):
        return matrix @ x
    spans = banded_spans(matrix) if spans is None else spans
    if not spans:
        return matrix @ x
    out = x.new_empty(*x.shape[:-2], matrix.shape[0], x.shape[-1])
    for i0, i1, c0, c1 in spans:
        torch.matmul(matrix[i0:i1, c0:c1], x[..., c0:c1, :], out=out[..., i0:i1, :])
    return out


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
    as scipy does. Always returns a new tensor. The filter matrices and their band blocks are built once per
    setting (``_gaussian_plan``).
    """
    sy, sx = (float(sigma), float(sigma)) if isinstance(sigma, (int, float)) else map(float, sigma)
    h, w = x.shape[-2:]
    plan_x = _gaussian_plan(w, sx, truncate, mode, x.dtype, x.device)
    plan_y = _gaussian_plan(h, sy, truncate, mode, x.dtype, x.device)
    if plan_x is None and plan_y is None:
        return x.clone()  # a new tensor, whatever the sigmas: callers may work on it in place
    if plan_x is not None:
        x = band_matmul_last(x, *plan_x)
    if plan_y is not None:
        x = band_matmul_rows(plan_y[0], x, plan_y[1])
    return x


@functools.lru_cache(maxsize=256)
def _gaussian_plan(n: int, sigma: float, truncate: float, mode: str, dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]] | None:
    """The filter matrix of a 1-D Gaussian on ``n`` samples and its band blocks, built once per setting
    (None for a single tap: the identity)."""
    kernel = gaussian_kernel1d(sigma, truncate, dtype, device)
    if kernel.numel() == 1:
        return None
    matrix = filter_matrix(n, kernel, mode)
    return matrix, banded_spans(matrix) if device.type == "cpu" else []


def _fft_length(n: int) -> int:
    """The smallest length >= ``n`` of the form ``2**a * 3**b * 5**c`` with ``a >= 3`` (below 16: ``n``).

    pocketfft's cost per sample differs by 2x between nearby smooth lengths: those rich in factors of 2 are
    fastest (measured on the CPU: 240 and 256 at about half the per-sample time of 243, 250 or 270), and
    cuFFT likes them too.
    """
    if n < 16:
        return n
    m = -(-n // 8) * 8
    while True:
        rest = m // 8
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 8


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect101") -> torch.Tensor:
    """OpenCV ``filter2D``: correlate each channel of ``(B, C, H, W)`` with an odd ``(k, k)`` kernel, or each
    image with its own kernel from a ``(B, k, k)`` stack.

    Runs through the FFT (as OpenCV does for wide kernels; on CPU torch's single-channel convolution is far
    slower), on the image padded with the border ``mode`` on each side by as far as the kernel reaches
    towards that side, so that the kept region is free of wrap-around. One-sided kernels (motion blur's
    line) get one-sided padding and a smaller transform.
    """
    h, w = x.shape[-2:]
    stack = kernel if kernel.dim() == 3 else kernel[None]
    r = stack.shape[-1] // 2
    # all-zero outer rows and columns contribute nothing: the transform only needs the nonzero bounding box
    nz = (stack != 0).any(0).nonzero()
    if nz.numel() == 0:
        return x * 0
    (r0, c0), (r1, c1) = nz.amin(0).tolist(), nz.amax(0).tolist()
    stack = stack[:, r0:r1 + 1, c0:c1 + 1].to(x.dtype)
    if stack.shape[-2:] == (1, 1) and (r0, c0) == (r, r):
        return x * stack[:, None]
    # out[y, x] = sum_ij k[i, j] img[y + i - r, x + j - r]: rows from r0 - r to r1 - r around y
    top, bottom, left, right = max(0, r - r0), max(0, r1 - r), max(0, r - c0), max(0, c1 - r)
    ph, pw = _fft_length(h + top + bottom), _fft_length(w + left + right)
    padded = pad2d(x, top, ph - h - top, left, pw - w - left, mode)
    # correlation = circular convolution with the flipped kernel, its centre at index (top, left) - (top,
    # left): kernel entry (i, j) lands at ((r - i) mod ph, (r - j) mod pw)
    spread = torch.zeros(stack.shape[0], ph, pw, dtype=x.dtype, device=x.device)
    spread[:, :r1 - r0 + 1, :c1 - c0 + 1] = stack.flip(-2, -1)
    spread = spread.roll((r - r1, r - c1), (1, 2))
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * torch.fft.rfft2(spread)[:, None], s=(ph, pw))
    return out[..., top:top + h, left:left + w].contiguous()


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
def pil_resample_plan(n_in: int, n_out: int, filter_name: str, device: torch.device,
                      dtype: torch.dtype) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """``pil_resample_matrix`` and its ``banded_spans``, built once per setting."""
    matrix = pil_resample_matrix(n_in, n_out, filter_name, device, dtype)
    return matrix, banded_spans(matrix) if device.type == "cpu" else []


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


def interpolation_matrix(n_in: int, n_out: int, mode: str, device: torch.device,
                         dtype: torch.dtype) -> torch.Tensor:
    """The ``(n_out, n_in)`` weights of ``F.interpolate(..., mode, align_corners=False)`` along one axis
    (``mode`` ``"bilinear"`` or ``"bicubic"``), so that resizing ``(..., H, W)`` is ``Mh @ x @ Mw.T``.

    Read off torch's own kernel by resizing an identity, so borders and rounding of the source positions are
    torch's; applied as (banded) matrix products it is several times faster on the CPU than the bicubic
    kernel, which evaluates all 16 taps per output pixel.
    """
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"unknown interpolation mode {mode!r}; accepted: bilinear, bicubic")
    return _interpolation_matrix(n_in, n_out, mode).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _interpolation_matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    # resize the rows of the identity: column j holds the output's weights on input sample j
    return F.interpolate(eye, size=(n_out, n_in), mode=mode, align_corners=False)[0, 0]


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate(x, size, mode, align_corners=False)`` for ``(..., H, W)`` as two matrix products."""
    h, w = x.shape[-2:]
    rows, row_spans = _interpolation_plan(h, size[0], mode, x.dtype, x.device)
    cols, col_spans = _interpolation_plan(w, size[1], mode, x.dtype, x.device)
    return band_matmul_rows(rows, band_matmul_last(x, cols, col_spans), row_spans)


@functools.lru_cache(maxsize=64)
def _interpolation_plan(n_in: int, n_out: int, mode: str, dtype: torch.dtype,
                        device: torch.device) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    matrix = interpolation_matrix(n_in, n_out, mode, device, dtype)
    return matrix, banded_spans(matrix) if device.type == "cpu" else []


def draw_uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 low: float = 0.0, high: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform ``[low, high)`` draws made on the generator's device (CUDA generators only feed CUDA tensors),
    then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype)
    if (low, high) != (0.0, 1.0):
        u.mul_(high - low).add_(low)
    return u.to(device)


def draw_normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                std: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normal ``N(0, std²)`` draws made on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).mul_(std).to(device)


def draw_integers(shape: tuple[int, ...], low: int, high: int, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Integers uniform on ``[low, high)`` (numpy's ``randint`` convention), as int64 on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(low, high, shape, generator=generator, device=gen_device).to(device)



def draw_bytes(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` independent uniformly random bytes, uint8 ``(n,)`` on ``device``.

    Drawn as 64-bit words over their full range and split into bytes: one generator step yields eight
    bytes, where ``torch.rand`` and ``torch.randint`` spend a step per value (the generator runs serially on
    the CPU, so that cost dominates cheap corruptions). Views of the result give wider words, e.g.
    ``draw_bytes(4 * n, ...).view(torch.int32)`` for ``n`` uniform 32-bit integers.
    """
    gen_device = generator.device if generator is not None else device
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=gen_device)
    words.random_(-2 ** 63, None, generator=generator)
    return words.view(torch.uint8)[:n].to(device)


def draw_below(shape: tuple[int, ...], n: int, generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
    """Integers uniform on ``[0, n)`` for ``1 <= n <= 256``, uint8 of ``shape`` on ``device``, one random byte
    each; when ``n`` does not divide 256 the bytes above the last whole multiple of ``n`` are drawn again
    (rejection), so every value is exactly equally likely."""
    if not 1 <= n <= 256:
        raise ValueError(f"draw_below: n must be in 1..256, got {n}")
    count = math.prod(shape)
    out = draw_bytes(count, generator, device)
    if 256 % n:
        limit = 256 - 256 % n
        redo = (out >= limit).nonzero().squeeze(1)
        while redo.numel():
            fresh = draw_bytes(redo.numel(), generator, device)
            out[redo] = fresh
            redo = redo[fresh >= limit]
    if n < 256:
        out.remainder_(n)
    return out.view(shape)
