"""Weather corruptions (snow, frost, fog, spatter): contract, building blocks against OpenCV / scipy /
skimage, and fidelity to imagecorruptions 1.1.2 (the ImageNet-C reference) in distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustssl.threats.corruptions import CORRUPTIONS, textures, weather

WEATHER = ["snow", "frost", "fog", "spatter"]


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, max(2, h // 8), max(2, w // 8), generator=g)
    smooth = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def test_weather_corruptions_are_registered_as_weather():
    for name in WEATHER:
        assert name in CORRUPTIONS
        assert CORRUPTIONS.meta(name)["family"] == "weather"
        assert CORRUPTIONS.create(name).family == "weather"


@pytest.mark.parametrize("name", WEATHER)
@pytest.mark.parametrize("params,size", [("cifar", (32, 32)), ("imagenet", (48, 80)), ("auto", (21, 37))])
def test_contract_shape_range_and_generator(name, params, size):
    corruption = CORRUPTIONS.create(name)
    x = _images(3, *size)
    for severity in range(1, 6):
        y = corruption(x, severity, torch.Generator().manual_seed(7), params)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
        again = corruption(x, severity, torch.Generator().manual_seed(7), params)
        assert torch.equal(y, again), "same generator seed must give the same output"
    other = corruption(x, 5, torch.Generator().manual_seed(8), params)
    assert not torch.equal(other, corruption(x, 5, torch.Generator().manual_seed(7), params))


@pytest.mark.parametrize("name", WEATHER)
def test_output_keeps_the_input_dtype(name):
    x = _images(2, 32, 32)
    y32 = CORRUPTIONS.create(name)(x, 3, torch.Generator().manual_seed(0))
    y64 = CORRUPTIONS.create(name)(x.double(), 3, torch.Generator().manual_seed(0))
    assert y64.dtype == torch.float64 and torch.allclose(y64.float(), y32)


@pytest.mark.parametrize("name", WEATHER)
def test_samples_get_independent_draws_and_severity_5_hurts_more_than_1(name):
    x = _images(1, 64, 64).repeat(4, 1, 1, 1)
    corruption = CORRUPTIONS.create(name)
    y = corruption(x, 3, torch.Generator().manual_seed(0), "imagenet")
    assert not torch.equal(y[0], y[1]), "identical inputs in one batch must get independent corruptions"
    x = _images(16, 64, 64, seed=1)
    g = torch.Generator().manual_seed(1)
    mild = (corruption(x, 1, g, "imagenet") - x).pow(2).mean()
    harsh = (corruption(x, 5, g, "imagenet") - x).pow(2).mean()
    assert harsh > mild


@pytest.mark.parametrize("name", WEATHER)
def test_bad_input_is_refused(name):
    corruption = CORRUPTIONS.create(name)
    x = _images(1, 32, 32)
    with pytest.raises(ValueError, match="severity"):
        corruption(x, 6)
    with pytest.raises(ValueError, match="parameter set"):
        corruption(x, 1, None, "tiny")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corruption(x * 3, 1)
    with pytest.raises(ValueError, match="NaN"):
        corruption(torch.full_like(x, float("nan")), 1)


def test_parameter_tables_are_the_published_ones():
    # spot checks against make_cifar_c.py / make_imagenet_c.py
    assert weather.SNOW_PARAMS["cifar"][4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)
    assert weather.SNOW_PARAMS["imagenet"][2] == (0.55, 0.3, 4, 0.9, 12, 8, 0.7)
    assert weather.FOG_PARAMS["cifar"][0] == (0.2, 3) and weather.FOG_PARAMS["imagenet"][4] == (3.0, 1.4)
    assert weather.FROST_PARAMS["cifar"][4] == (0.75, 0.45)
    assert weather.FROST_PARAMS["imagenet"][1] == (0.8, 0.6)
    assert weather.SPATTER_PARAMS["cifar"][3] == (0.65, 0.1, 0.7, 0.69, 0.6, 1)
    assert weather.SPATTER_PARAMS["imagenet"][4] == (0.67, 0.4, 1, 0.65, 1.5, 1)


def test_plasma_fractal_is_normalised_and_smoother_with_larger_decay():
    g = torch.Generator().manual_seed(0)
    rough = textures.plasma_fractal(8, 64, 1.2, g, torch.device("cpu"))
    smooth = textures.plasma_fractal(8, 64, 3.0, g, torch.device("cpu"))
    for m in (rough, smooth):
        assert m.shape == (8, 64, 64)
        assert torch.allclose(m.amin(dim=(1, 2)), torch.zeros(8))
        assert torch.allclose(m.amax(dim=(1, 2)), torch.ones(8))

    def roughness(m):  # mean neighbour difference relative to the spread
        return ((m[:, 1:] - m[:, :-1]).abs().mean() / m.std()).item()

    assert roughness(rough) > 1.5 * roughness(smooth)
    with pytest.raises(ValueError, match="power of two"):
        textures.plasma_fractal(1, 48, 2.0, g, torch.device("cpu"))


def test_motion_blur_spreads_an_impulse_along_the_line_with_gaussian_weights():
    x = torch.zeros(2, 1, 31, 31)
    x[:, 0, 15, 15] = 1.0
    out = weather.motion_blur(x, radius=3, sigma=2.0, angle=torch.tensor([0.0, 90.0]))
    weights = np.exp(-np.arange(7) ** 2 / 8.0)
    weights /= weights.sum()
    # tap i reads the pixel i steps along the angle, so the impulse lands i steps against it
    for i, wt in enumerate(weights):
        assert out[0, 0, 15, 15 - i].item() == pytest.approx(wt, abs=1e-6)
        assert out[1, 0, 15 - i, 15].item() == pytest.approx(wt, abs=1e-6)
    assert out.sum(dim=(1, 2, 3)).allclose(torch.ones(2))


def test_clipped_zoom_matches_scipy_zoom():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    zoom = 1.75
    ch = math.ceil(32 / zoom)
    top = (32 - ch) // 2
    ref = ndimage.zoom(x[0, 0, top:top + ch, top:top + ch].double().numpy(), zoom, order=1)
    trim = (ref.shape[0] - 32) // 2
    ref = ref[trim:trim + 32, trim:trim + 32]
    assert np.allclose(weather.clipped_zoom(x, zoom)[0, 0].numpy(), ref, atol=1e-5)


def test_gaussian_blur_matches_skimage():
    filters = pytest.importorskip("skimage.filters")
    x = torch.rand(2, 1, 40, 30, generator=torch.Generator().manual_seed(0))
    for sigma in (0.7, 2.0, 4.0):
        ref = np.stack([filters.gaussian(x[i, 0].double().numpy(), sigma=sigma) for i in range(2)])
        assert np.allclose(weather._gaussian_blur(x, sigma)[:, 0].numpy(), ref, atol=1e-5)


def _liquid_layers(n: int, size: int) -> torch.Tensor:
    """Thresholded blurred noise scaled to 8 bits: the spatter pipeline's input to Canny."""
    g = torch.Generator().manual_seed(3)
    layer = weather._gaussian_blur(0.65 + 0.3 * torch.randn(n, 1, size, size, generator=g), 2.0)
    layer = torch.where(layer < 0.68, torch.zeros_like(layer), layer)
    return torch.floor(layer * 255).clamp(0, 255)


def test_canny_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    images = _liquid_layers(4, 64)
    ours = weather.canny(images, 50, 150)[:, 0].numpy()
    ref = np.stack([cv2.Canny(im[0].numpy().astype(np.uint8), 50, 150) > 0 for im in images])
    assert ref.sum() > 100, "the test images must have edges"
    assert (ours == ref).mean() > 0.995
    assert (ours & ref).sum() / max(1, (ours | ref).sum()) > 0.9


def test_edge_distance_matches_scipy_euclidean_transform():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    edges = torch.rand(3, 1, 50, 70, generator=g) < 0.004
    ours = weather.edge_distance(edges, 20)[:, 0].numpy()
    ref = np.stack([np.minimum(ndimage.distance_transform_edt(~e[0].numpy()), 20) for e in edges])
    assert np.allclose(ours, ref, atol=1e-4)


def test_equalize_hist_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(0)
    images = torch.floor(torch.rand(3, 1, 30, 40, generator=g) ** 2 * 120)
    ours = weather.equalize_hist(images)[:, 0].numpy()
    ref = np.stack([cv2.equalizeHist(im[0].numpy().astype(np.uint8)) for im in images])
    assert np.array_equal(ours.astype(np.uint8), ref)


def test_frost_layer_has_the_photographs_colour_statistics():
    g = torch.Generator().manual_seed(0)
    layer = textures.frost_texture(200, 64, 64, 1.1, g, torch.device("cpu"))
    assert layer.shape == (200, 3, 64, 64) and layer.min() >= 0 and layer.max() <= 255
    styles = torch.tensor(textures.FROST_STYLES)
    expected_mean = styles[:, 0].mean(dim=0)  # styles are drawn uniformly
    assert torch.allclose(layer.mean(dim=(0, 2, 3)), expected_mean, atol=8.0)


# --------------------------------------------------------------- fidelity against imagecorruptions 1.1.2

# Mean PSNR / SSIM to the clean image over 100 natural 224x224 crops, ours vs the reference, per severity.
# Random corruptions can only be compared in distribution. Frost uses a procedural texture instead of the
# reference's photographs, so it gets a wider band (see textures.frost_texture).
TOLERANCE = {"snow": 0.05, "fog": 0.05, "spatter": 0.05, "frost": 0.10}


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("cv2")
    pytest.importorskip("skimage")
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # imagecorruptions 1.1.2's plasma_fractal predates numpy 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ic = pytest.importorskip("imagecorruptions")
    return ic


@pytest.fixture(scope="module")
def natural_images():
    """100 crops of skimage's bundled photographs, resized to 224x224 and quantised to 8 bits."""
    data = pytest.importorskip("skimage.data")
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina()]
    rs = np.random.RandomState(0)
    crops = []
    for k in range(100):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        side = rs.randint(224, min(h, w) + 1)
        top, left = rs.randint(0, h - side + 1), rs.randint(0, w - side + 1)
        crop = torch.from_numpy(src[top:top + side, left:left + side].copy()).permute(2, 0, 1)[None].float()
        crops.append(F.interpolate(crop, size=(224, 224), mode="area"))
    return torch.cat(crops).round().clamp(0, 255).to(torch.uint8)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / (a - b).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10))


def _box7(t: torch.Tensor) -> torch.Tensor:
    """Means over every 7x7 window (valid region) from an integral image: cost independent of the window."""
    c = F.pad(t.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    return (c[..., 7:, 7:] - c[..., :-7, 7:] - c[..., 7:, :-7] + c[..., :-7, :-7]) / 49


class _SSIM:
    """Mean SSIM of images to one reference batch ``x`` ``(B, C, H, W)``, as skimage's
    ``structural_similarity`` defaults on each channel (7x7 uniform window, K1 = 0.01, K2 = 0.03, sample
    covariances; Wang et al. 2004). The reference's window statistics are computed once and reused for every
    comparison."""

    def __init__(self, x: torch.Tensor):
        self.x = x.double()
        self.mu, self.var = _box7(self.x), _box7(self.x * self.x) * 49 / 48
        self.var = self.var - self.mu ** 2 * 49 / 48

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        y = y.double()
        mu_y = _box7(y)
        var_y = (_box7(y * y) - mu_y ** 2) * 49 / 48
        cov = (_box7(self.x * y) - self.mu * mu_y) * 49 / 48
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        num = (2 * self.mu * mu_y + c1) * (2 * cov + c2)
        s = num / ((self.mu ** 2 + mu_y ** 2 + c1) * (self.var + var_y + c2))
        return s.mean(dim=(1, 2, 3))


def _luma(t: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``(B, 1, H, W)``: SSIM on luminance, as Wang et al. evaluate it."""
    return 0.299 * t[:, :1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 40, 50, generator=g)
    b = (a + 0.2 * torch.rand(1, 3, 40, 50, generator=g)).clamp(0, 1)
    ref = metrics.structural_similarity(a[0].double().numpy(), b[0].double().numpy(), channel_axis=0,
                                        data_range=1.0)
    # skimage averages over the window-cropped image, as we do
    assert _SSIM(a)(b).item() == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("name", WEATHER)
def test_matches_imagecorruptions_in_distribution(name, reference, natural_images):
    chunk = 20  # small tensors: large temporaries cost more in page faults than in arithmetic
    state = np.random.get_state()
    np.random.seed(1)  # the reference draws from numpy's global generator
    try:
        hwc = natural_images.permute(0, 2, 3, 1).numpy()
        refs = {s: np.stack([reference.corrupt(im, s, name) for im in hwc]) for s in range(1, 6)}
    finally:
        np.random.set_state(state)
    g = torch.Generator().manual_seed(1)
    corruption = CORRUPTIONS.create(name)
    tol = TOLERANCE[name]
    for severity in range(1, 6):
        scores = {"ref": torch.zeros(2), "ours": torch.zeros(2)}
        for start in range(0, len(natural_images), chunk):
            x = natural_images[start:start + chunk].float() / 255
            ref = torch.from_numpy(refs[severity][start:start + chunk]).permute(0, 3, 1, 2).float() / 255
            ours = (corruption(x, severity, g, "imagenet") * 255).round() / 255  # the reference returns uint8
            ssim = _SSIM(_luma(x))
            for key, y in (("ref", ref), ("ours", ours)):
                scores[key] += torch.stack([_psnr(x, y).sum(), ssim(_luma(y)).sum()])
        for k, metric in enumerate(("PSNR", "SSIM")):
            r, o = scores["ref"][k].item(), scores["ours"][k].item()
            n = len(natural_images)
            assert abs(o / r - 1) <= tol, f"{name} s{severity} {metric}: ours {o / n:.3f} ref {r / n:.3f}"


def test_cifar_frost_matches_the_cifar_10_c_recipe_in_distribution(reference):
    """make_cifar_c.py's frost (photograph shrunk to 0.2x, random 32x32 crop, blended) on imagecorruptions'
    photographs, against our procedural layer with the ``cifar`` parameters: mean PSNR / SSIM within 5%."""
    import glob
    import os

    import cv2

    data = pytest.importorskip("skimage.data")
    folder = os.path.join(os.path.dirname(reference.__file__), "frost")
    photos = [cv2.resize(cv2.imread(f), (0, 0), fx=0.2, fy=0.2)[..., ::-1].astype(np.float32)
              for f in sorted(glob.glob(os.path.join(folder, "frost*")))[:5]]  # randint(5): frost6 never used
    rs = np.random.RandomState(0)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina()]
    crops = []
    for k in range(200):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        side = rs.randint(64, min(h, w) + 1)
        top, left = rs.randint(0, h - side + 1), rs.randint(0, w - side + 1)
        crop = torch.from_numpy(src[top:top + side, left:left + side].copy()).permute(2, 0, 1)[None].float()
        crops.append(F.interpolate(crop, size=(32, 32), mode="area"))
    x8 = torch.cat(crops).round().clamp(0, 255).to(torch.uint8)
    x = x8.float() / 255
    ssim = _SSIM(_luma(x))
    g = torch.Generator().manual_seed(0)
    for severity in range(1, 6):
        a, b = weather.FROST_PARAMS["cifar"][severity - 1]
        refs = []
        for image in x8.permute(0, 2, 3, 1).numpy().astype(np.float32):
            photo = photos[rs.randint(5)]
            i, j = rs.randint(0, photo.shape[0] - 32), rs.randint(0, photo.shape[1] - 32)
            refs.append(np.uint8(np.clip(a * image + b * photo[i:i + 32, j:j + 32], 0, 255)))
        ref = torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2).float() / 255
        ours = (CORRUPTIONS.create("frost")(x, severity, g, "cifar") * 255).round() / 255
        for metric, r, o in (("PSNR", _psnr(x, ref), _psnr(x, ours)),
                             ("SSIM", ssim(_luma(ref)), ssim(_luma(ours)))):
            r, o = r.mean().item(), o.mean().item()
            assert abs(o / r - 1) <= 0.05, f"cifar frost s{severity} {metric}: ours {o:.3f} ref {r:.3f}"
