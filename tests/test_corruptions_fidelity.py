"""Fidelity of the torch corruptions against the references they re-implement.

Oracles: imagecorruptions 1.1.2 (ImageNet-C parameters), and for the CIFAR-10-C parameters the libraries that
make_cifar_c.py calls (scipy.ndimage.zoom, skimage.filters.gaussian, OpenCV filter2D, Pillow).
imagecorruptions 1.1.2 predates numpy 2 / scikit-image 0.19; the patches below restore the two APIs it needs
(see ``_patch``).

* deterministic corruptions: mean absolute difference to the reference <= 2/255 at 224x224, every severity;
* random corruptions: mean PSNR and mean SSIM to the clean image within 5 % of the reference's, per severity,
  over 100 images (64x64 images; glass blur, whose reference is a per-pixel Python loop, on 32x32 images);
* building blocks compared exactly: HSV, Pillow resampling, the JPEG codec, the motion-blur line kernel and
  the glass-blur pixel shuffle (against the sequential loop it vectorizes).
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pkg_resources deprecation inside imagecorruptions
    icc = pytest.importorskip("imagecorruptions.corruptions")
    imagecorruptions = pytest.importorskip("imagecorruptions")

import scipy.ndimage  # noqa: E402
import skimage.color  # noqa: E402
import skimage.data  # noqa: E402
import skimage.filters  # noqa: E402
from PIL import Image  # noqa: E402

from robustssl.threats.corruptions import CORRUPTIONS  # noqa: E402
from robustssl.threats.corruptions.blur import (  # noqa: E402
    draw_swap_offsets,
    motion_blur,
    shuffle_sources,
)
from robustssl.threats.corruptions.colour import hsv_to_rgb, rgb_to_hsv  # noqa: E402
from robustssl.threats.corruptions.jpeg import jpeg_round_trip  # noqa: E402
from robustssl.threats.corruptions.kernels import pil_resample_matrix  # noqa: E402

DETERMINISTIC = ["defocus_blur", "zoom_blur", "gaussian_blur", "contrast", "brightness", "saturate",
                 "pixelate", "jpeg_compression"]
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur",
          "elastic_transform", "glass_blur"]


@pytest.fixture(autouse=True)
def _patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make imagecorruptions 1.1.2 run on today's stack, and give its global RNG a fixed, restored state.

    skimage >= 0.19 dropped ``gaussian(..., multichannel=True)`` (glass_blur, gaussian_blur call it): map it
    to ``channel_axis=-1``. numpy 2 dropped ``np.float_`` (fog's plasma fractal): alias it to float64.
    """
    original = skimage.filters.gaussian

    def gaussian(image, sigma=1, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return original(image, sigma=sigma, **kwargs)

    monkeypatch.setattr(icc, "gaussian", gaussian)
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    state = np.random.get_state()
    np.random.seed(0)  # the reference only draws from numpy's global RNG
    yield
    np.random.set_state(state)


@functools.lru_cache(maxsize=1)
def _photographs() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled colour photographs, shrunk once to at most 400 px (crops are resized anyway)."""
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina"):
        img = Image.fromarray(getattr(skimage.data, name)())
        img.thumbnail((400, 400), Image.BILINEAR)
        out.append(np.asarray(img))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def natural_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 ``(size, size, 3)`` crops of scikit-image's photographs, random position and scale."""
    rng = np.random.default_rng(seed)
    sources = _photographs()
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[top:top + side, left:left + side])
        out.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
    images = np.stack(out)
    images.setflags(write=False)  # shared by the cache
    return images


def to_torch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Our float output on the reference's 8-bit grid (rounded; the reference truncates its floats)."""
    return np.round(x.permute(0, 2, 3, 1).double().numpy() * 255).astype(np.uint8)


def reference(images: np.ndarray, name: str, severity: int) -> np.ndarray:
    return np.stack([imagecorruptions.corrupt(img, severity=severity, corruption_name=name)
                     for img in images])


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 batches ``(N, H, W, 3)``."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean((1, 2, 3))
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM of uint8 batches ``(N, H, W, 3)`` as ``skimage.metrics.structural_similarity`` computes
    it: 7x7 uniform windows, sample (co)variances, K1 = 0.01, K2 = 0.03, mean over channels and the valid
    window positions."""
    x = torch.tensor(a, dtype=torch.float64).permute(0, 3, 1, 2) / 255
    y = torch.tensor(b, dtype=torch.float64).permute(0, 3, 1, 2) / 255

    def mean(t: torch.Tensor) -> torch.Tensor:
        # 7x7 box mean over the valid positions, by differences of cumulative sums along each axis
        for dim in (2, 3):
            c = torch.nn.functional.pad(t.cumsum(dim), (1, 0) if dim == 3 else (0, 0, 1, 0))
            t = (c.narrow(dim, 7, c.shape[dim] - 7) - c.narrow(dim, 0, c.shape[dim] - 7)) / 7
        return t

    mx, my = mean(x), mean(y)
    cov = 49 / 48  # sample covariance over the window
    vx, vy = cov * (mean(x * x) - mx ** 2), cov * (mean(y * y) - my ** 2)
    vxy = cov * (mean(x * y) - mx * my)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    # skimage averages over the window centres at least 3 px from the border: the valid pooling positions
    return s.mean((1, 2, 3)).numpy()


def test_ssim_matches_skimage() -> None:
    from skimage.metrics import structural_similarity

    images = natural_images(3, 48, seed=1)
    noisy = np.clip(images + np.random.normal(0, 20, images.shape), 0, 255).astype(np.uint8)
    expected = [structural_similarity(a, b, channel_axis=-1, data_range=255)
                for a, b in zip(images, noisy, strict=True)]
    np.testing.assert_allclose(ssim(images, noisy), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------- ImageNet-C set

@pytest.fixture(scope="module")
def images224() -> np.ndarray:
    return natural_images(3, 224, seed=2)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_match_imagecorruptions_at_224(name: str, images224: np.ndarray) -> None:
    x = to_torch(images224)
    corruption = CORRUPTIONS.create(name)
    for severity in range(1, 6):
        expected = reference(images224, name, severity).astype(np.float64) / 255
        got = corruption(x, severity, params="imagenet").permute(0, 2, 3, 1).double().numpy()
        mad = np.abs(got - expected).mean()
        assert mad <= 2 / 255, f"{name} severity {severity}: mean |ours - reference| = {mad * 255:.2f}/255"
        # the corruption changed the image: matching would be vacuous for an identity map
        assert np.abs(expected - images224 / 255).mean() > 2 / 255


@pytest.mark.parametrize("name", RANDOM)
def test_random_match_imagecorruptions_in_distribution(name: str) -> None:
    # glass blur's reference visits every pixel in Python; 32 px keeps 500 reference calls in budget
    size = 32 if name == "glass_blur" else 64
    images = natural_images(100, size, seed=3)
    x = to_torch(images)
    corruption = CORRUPTIONS.create(name)
    generator = torch.Generator().manual_seed(0)
    for severity in range(1, 6):
        expected = reference(images, name, severity)
        got = to_uint8(corruption(x, severity, generator, params="imagenet"))
        for metric in (psnr, ssim):
            ref, ours = metric(images, expected).mean(), metric(images, got).mean()
            assert abs(ours / ref - 1) <= 0.05, (
                f"{name} severity {severity}: mean {metric.__name__} {ours:.4f}, imagecorruptions {ref:.4f}")


def test_motion_blur_line_kernel_matches_imagecorruptions() -> None:
    images = natural_images(2, 48, seed=4)
    x = to_torch(images)
    for radius, sigma, angle in ((10, 3, -37.0), (15, 8, 12.5), (20, 15, 44.0), (6, 2, 0.0)):
        expected = np.stack([icc._motion_blur(img, radius=radius, sigma=sigma, angle=angle)
                             for img in images])
        got = motion_blur(x * 255, radius, sigma, torch.full((2,), angle, dtype=torch.float64))
        np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, atol=1e-3)


def sequential_shuffle(image: np.ndarray, dy: np.ndarray, dx: np.ndarray, max_delta: int) -> np.ndarray:
    """The reference's glass-blur loop, verbatim in behaviour, with given offsets ``dy, dx`` per pixel."""
    x = image.copy()
    h, w = x.shape[:2]
    for row in range(h - max_delta, max_delta, -1):
        for col in range(w - max_delta, max_delta, -1):
            r2, c2 = row + dy[row, col], col + dx[row, col]
            x[row, col], x[r2, c2] = x[r2, c2], x[row, col]
    return x


@pytest.mark.parametrize("max_delta", [1, 2, 3, 4])
def test_glass_shuffle_equals_sequential_loop(max_delta: int) -> None:
    images = natural_images(2, 29, seed=5)
    offsets = draw_swap_offsets(2, 29, 29, max_delta, torch.Generator().manual_seed(7), torch.device("cpu"))
    # back to the reference's (dy, dx) per pixel: offsets are dy * 29 + dx with |dx| <= max_delta < 29 / 2
    dy = np.floor_divide(offsets.numpy() + 14, 29).reshape(2, 29, 29)
    dx = offsets.numpy().reshape(2, 29, 29) - 29 * dy
    expected = np.stack([sequential_shuffle(img, dy[i], dx[i], max_delta) for i, img in enumerate(images)])
    x = to_torch(images)
    sources = shuffle_sources(offsets)
    got = x.reshape(2, 3, -1).gather(2, sources[:, None].expand(2, 3, -1)).reshape(x.shape)
    np.testing.assert_array_equal(to_uint8(got), expected)
    assert not np.array_equal(expected, images)
    # two passes composed as index maps equal two sequential loops with the next offsets
    second = draw_swap_offsets(2, 29, 29, max_delta, torch.Generator().manual_seed(8), torch.device("cpu"))
    dy2 = np.floor_divide(second.numpy() + 14, 29).reshape(2, 29, 29)
    dx2 = second.numpy().reshape(2, 29, 29) - 29 * dy2
    twice = np.stack([sequential_shuffle(img, dy2[i], dx2[i], max_delta) for i, img in enumerate(expected)])
    composed = sources.gather(1, shuffle_sources(second))
    got = x.reshape(2, 3, -1).gather(2, composed[:, None].expand(2, 3, -1)).reshape(x.shape)
    np.testing.assert_array_equal(to_uint8(got), twice)


def test_hsv_matches_skimage() -> None:
    rng = np.random.default_rng(6)
    rgb = rng.random((500, 3))
    rgb[:50] = rgb[:50, :1]  # grey pixels
    rgb[50:100, 1] = rgb[50:100, 0]  # ties for the maximum
    x = torch.from_numpy(rgb.T.reshape(1, 3, 500, 1).copy())
    hsv = rgb_to_hsv(x)
    np.testing.assert_allclose(hsv[0, :, :, 0].numpy().T, skimage.color.rgb2hsv(rgb[None])[0], atol=1e-12)
    np.testing.assert_allclose(hsv_to_rgb(hsv)[0, :, :, 0].numpy().T, skimage.color.hsv2rgb(
        skimage.color.rgb2hsv(rgb[None]))[0], atol=1e-12)


@pytest.mark.parametrize(("size_in", "size_out", "filt"), [
    ((37, 50), (22, 30), "box"), ((224, 224), (56, 56), "box"), ((22, 30), (37, 50), "nearest"),
    ((20, 20), (32, 32), "box")])
def test_pil_resampling_matrix_matches_pillow(size_in: tuple[int, int], size_out: tuple[int, int],
                                              filt: str) -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (*size_in, 3), dtype=np.uint8)
    resample = Image.BOX if filt == "box" else Image.NEAREST
    expected = np.asarray(Image.fromarray(image).resize(size_out[::-1], resample)).astype(np.float64)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    cols = pil_resample_matrix(size_in[1], size_out[1], filt, x.device, torch.float64)
    rows = pil_resample_matrix(size_in[0], size_out[0], filt, x.device, torch.float64)
    x = rows @ x @ cols.T
    # Pillow rounds to 8 bits after each pass
    assert np.abs(x[0].permute(1, 2, 0).numpy() - expected).max() <= 1.0


@pytest.mark.parametrize("quality", [7, 25, 50, 80, 95])
@pytest.mark.parametrize("size", [(224, 224), (37, 50)])
def test_jpeg_round_trip_matches_pillow(quality: int, size: tuple[int, int]) -> None:
    images = natural_images(2, max(size), seed=8)[:, :size[0], :size[1]]
    expected = []
    for img in images:
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=quality)
        expected.append(np.asarray(Image.open(buffer)))
    got = to_uint8(jpeg_round_trip(to_torch(images), quality))
    mad = np.abs(got.astype(np.float64) - np.stack(expected)).mean()
    assert mad < 1.0, f"quality {quality}: mean |ours - Pillow| = {mad:.3f} grey levels"


# ------------------------------------------------------------------------------------------ CIFAR-10-C set

@pytest.fixture(scope="module")
def images32() -> np.ndarray:
    return natural_images(8, 32, seed=9)


def _centre_zoom(img: np.ndarray, zoom: float) -> np.ndarray:
    """make_cifar_c.py's clipped_zoom: centre crop, scipy zoom (order 1), centre trim."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    out = scipy.ndimage.zoom(img[top:top + ch, top:top + ch], (zoom, zoom, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim:trim + h, trim:trim + h]


# make_cifar_c.py parameters, repeated here as the oracle's inputs
CIFAR_REFERENCE = {
    "gaussian_blur": ([0.4, 0.6, 0.7, 0.8, 1],
                      lambda x, c: skimage.filters.gaussian(x, sigma=c, channel_axis=-1)),
    "defocus_blur": ([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
                     lambda x, c: np.stack([cv2.filter2D(x[..., d], -1, icc.disk(c[0], alias_blur=c[1]))
                                            for d in range(3)], -1)),
    "zoom_blur": ([np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                   np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
                  lambda x, c: (x + sum(_centre_zoom(x.astype(np.float32), z) for z in c)) / (len(c) + 1)),
    "contrast": ([0.75, 0.5, 0.4, 0.3, 0.15],
                 lambda x, c: (x - x.mean((0, 1), keepdims=True)) * c + x.mean((0, 1), keepdims=True)),
    "saturate": ([(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], None),
    "brightness": ([0.05, 0.1, 0.15, 0.2, 0.3], None),
    "pixelate": ([0.95, 0.9, 0.85, 0.75, 0.65], None),
    "jpeg_compression": ([80, 65, 58, 50, 40], None),
}


def _cifar_reference(name: str, img: np.ndarray, c: object) -> np.ndarray:
    x = img / 255.0
    if name in ("saturate", "brightness"):
        hsv = skimage.color.rgb2hsv(x)
        if name == "saturate":
            hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
        else:
            hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        return skimage.color.hsv2rgb(hsv)
    if name == "pixelate":
        small = Image.fromarray(img).resize((int(32 * c), int(32 * c)), Image.BOX)
        return np.asarray(small.resize((32, 32), Image.BOX)) / 255.0
    if name == "jpeg_compression":
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=c)
        return np.asarray(Image.open(buffer)) / 255.0
    return CIFAR_REFERENCE[name][1](x, c)


@pytest.mark.parametrize("name", sorted(CIFAR_REFERENCE))
def test_deterministic_match_make_cifar_c_at_32(name: str, images32: np.ndarray) -> None:
    x = to_torch(images32)
    corruption = CORRUPTIONS.create(name)
    for severity in range(1, 6):
        c = CIFAR_REFERENCE[name][0][severity - 1]
        expected = np.clip(np.stack([_cifar_reference(name, img, c) for img in images32]), 0, 1)
        got = corruption(x, severity, params="cifar").permute(0, 2, 3, 1).double().numpy()
        mad = np.abs(got - expected).mean()
        assert mad <= 1 / 255, f"{name} severity {severity}: mean |ours - reference| = {mad * 255:.2f}/255"


def test_auto_params_pick_cifar_below_64_pixels(images32: np.ndarray) -> None:
    x = to_torch(images32)
    contrast = CORRUPTIONS.create("contrast")
    torch.testing.assert_close(contrast(x, 3), contrast(x, 3, params="cifar"))
    assert not torch.allclose(contrast(x, 3), contrast(x, 3, params="imagenet"))


def _elastic_reference(image: np.ndarray, field: np.ndarray, alpha: float, sigma: tuple[float, float],
                       affine: np.ndarray | None) -> np.ndarray:
    """The reference pipeline on float ``image`` (H, W, 3) with given random draws: optional OpenCV affine
    warp (make_cifar_c.py), Gaussian-smoothed displacement (skimage, reflect, truncate 3), bilinear
    ``map_coordinates`` with scipy's reflect border."""
    h, w = image.shape[:2]
    if affine is not None:
        image = cv2.warpAffine(image, affine, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = skimage.filters.gaussian(field[0], sigma, mode="reflect", truncate=3) * alpha
    dy = skimage.filters.gaussian(field[1], sigma, mode="reflect", truncate=3) * alpha
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([scipy.ndimage.map_coordinates(image[..., ch], (y + dy, x + dx), order=1, mode="reflect")
                     for ch in range(3)], -1)


@pytest.mark.parametrize("params", ["cifar", "imagenet"])
def test_elastic_transform_equals_reference_pipeline_given_the_draws(params: str) -> None:
    from robustssl.threats.corruptions.kernels import draw_uniform

    size, severity = (32, 3) if params == "cifar" else (64, 4)
    image = natural_images(1, size, seed=11)
    got = CORRUPTIONS.create("elastic_transform")(to_torch(image), severity, torch.Generator().manual_seed(3),
                                                  params=params)
    # replay the draws in the order ElasticTransform makes them
    g = torch.Generator().manual_seed(3)
    cpu = torch.device("cpu")
    affine = None
    if params == "cifar":
        alpha, sigma, jitter = (v * size for v in (0.08, 0.06, 0.06))  # make_cifar_c.py severity 3, x IMSIZE
        centre, half = float(size // 2), float(size // 3)
        pts1 = np.float32([[centre + half, centre + half], [centre + half, centre - half],
                           [centre - half, centre - half]])
        pts2 = pts1 + draw_uniform((1, 3, 2), g, cpu, -jitter, jitter, dtype=torch.float64)[0].numpy()
        affine = cv2.getAffineTransform(pts1, pts2.astype(np.float32))
        field = draw_uniform((1, 2, size, size), g, cpu, -1.0, 1.0)[0].numpy().astype(np.float64)
        sigmas = (sigma, sigma)
    else:
        # imagecorruptions severity 4
        alpha, sigmas, amplitude = 250 * 0.1, (0.01 * size, 0.01 * size), 0.005 * size
        field = draw_uniform((1, 2, size, size), g, cpu, -amplitude, amplitude)[0].numpy().astype(np.float64)
    expected = np.clip(_elastic_reference(image[0] / np.float32(255), field, alpha, sigmas, affine), 0, 1)
    diff = np.abs(got[0].permute(1, 2, 0).double().numpy() - expected)
    assert diff.mean() < 0.5 / 255 and diff.max() < 0.1, (diff.mean() * 255, diff.max())
    assert np.abs(expected - image[0] / 255).mean() > 2 / 255  # the warp did something
