"""The corruption contract for every registered corruption, and hand-checked properties of building blocks.

Parametrized over ``CORRUPTIONS.names()``, so corruptions registered elsewhere (weather) are covered too.
Fidelity against the reference implementations lives in test_corruptions_fidelity.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robustssl.registry import UnknownNameError
from robustssl.threats.corruptions import CORRUPTIONS
from robustssl.threats.corruptions.blur import local_shuffle, motion_blur, zoom_grid
from robustssl.threats.corruptions.colour import hsv_to_rgb, rgb_to_hsv
from robustssl.threats.corruptions.jpeg import LUMA_QUANT, dct_matrix, jpeg_round_trip, quantization_table
from robustssl.threats.corruptions.kernels import border_index, gaussian_filter, pil_resample_matrix

ALL = CORRUPTIONS.names()
PARAMS = ("cifar", "imagenet")
# the 15 implemented in noise.py, blur.py, digital.py and extra.py (half precision is their feature)
OWN = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
       "zoom_blur", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
       "speckle_noise", "gaussian_blur", "saturate")


def smooth_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Natural-ish test images ``(b, 3, h, w)`` in [0.05, 0.95]: smooth random colours plus a step edge."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(b, 3, 5, 6, generator=g), size=(h, w), mode="bicubic",
                          align_corners=False)
    edge = (torch.arange(w) > w // 2).float().view(1, 1, 1, w) * torch.rand(b, 3, 1, 1, generator=g)
    return (0.6 * field + 0.4 * edge).clamp(0, 1) * 0.9 + 0.05


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return smooth_images(3, 40, 48)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------- contract

@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("name", ALL)
def test_output_contract(name: str, params: str, images: torch.Tensor) -> None:
    before = images.clone()
    corruption = CORRUPTIONS.create(name)
    for severity in (1, 3, 5):
        out = corruption(images, severity, generator(0), params=params)
        assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 1e-3, "severity 5 should visibly change the image"
    torch.testing.assert_close(images, before, rtol=0, atol=0)  # the input is left untouched


@pytest.mark.parametrize("name", ALL)
def test_any_resolution_and_float64(name: str) -> None:
    corruption = CORRUPTIONS.create(name)
    for shape in ((2, 3, 17, 23), (1, 3, 70, 33)):
        x = smooth_images(*shape[:1], *shape[2:]).double()
        out = corruption(x, 2, generator(0))
        assert out.shape == x.shape and out.dtype == torch.float64
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", [n for n in ALL if n in OWN])
def test_half_precision_input(name: str, images: torch.Tensor) -> None:
    out = CORRUPTIONS.create(name)(images.to(torch.bfloat16), 3, generator(0))
    assert out.dtype == torch.bfloat16 and out.shape == images.shape
    if getattr(CORRUPTIONS.create(name), "deterministic", False):
        # computed in float32, so only the final rounding to bfloat16 differs
        reference = CORRUPTIONS.create(name)(images.to(torch.bfloat16).float(), 3)
        torch.testing.assert_close(out.float(), reference, rtol=0, atol=2 ** -7)


@pytest.mark.parametrize("name", ALL)
def test_seeded(name: str, images: torch.Tensor) -> None:
    corruption = CORRUPTIONS.create(name)
    first = corruption(images, 3, generator(1))
    torch.testing.assert_close(corruption(images, 3, generator(1)), first, rtol=0, atol=0)
    other = corruption(images, 3, generator(2))
    if getattr(corruption, "deterministic", False):
        torch.testing.assert_close(other, first, rtol=0, atol=0)
    else:
        assert not torch.equal(other, first), "different seeds should give different corruptions"


@pytest.mark.parametrize("name", ALL)
def test_batched_equals_per_image(name: str, images: torch.Tensor) -> None:
    corruption = CORRUPTIONS.create(name)
    batched = corruption(images, 4, generator(3))
    if getattr(corruption, "deterministic", False):
        for i in range(images.shape[0]):
            torch.testing.assert_close(corruption(images[i:i + 1], 4), batched[i:i + 1], rtol=1e-5, atol=1e-6)
    else:
        twins = corruption(images[:1].expand(2, -1, -1, -1).contiguous(), 4, generator(3))
        assert not torch.equal(twins[0], twins[1]), "samples in a batch should get independent randomness"


@pytest.mark.parametrize("name", ALL)
def test_severity_5_distorts_more_than_1(name: str) -> None:
    x = smooth_images(4, 64, 64, seed=4)
    corruption = CORRUPTIONS.create(name)
    weak = (corruption(x, 1, generator(5), params="imagenet") - x).abs().mean()
    strong = (corruption(x, 5, generator(5), params="imagenet") - x).abs().mean()
    assert strong > weak


# -------------------------------------------------------------------------------------------- bad input

def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        CORRUPTIONS.create("gausian_noise")
    message = str(err.value)
    assert "gaussian_noise" in message and all(name in message for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_bad_input_raises_clear_errors(name: str, images: torch.Tensor) -> None:
    corruption = CORRUPTIONS.create(name)
    for severity in (0, 6, 2.5, "3", True):
        with pytest.raises(ValueError, match="severity"):
            corruption(images, severity, generator(0))
    with pytest.raises(ValueError, match="dtype"):
        corruption((images * 255).to(torch.uint8), 1, generator(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corruption(images * 2, 1, generator(0))
    with pytest.raises(ValueError, match="NaN"):
        corruption(images.clone().index_fill_(3, torch.tensor([2]), float("nan")), 1, generator(0))
    with pytest.raises(ValueError, match="shape"):
        corruption(images[0], 1, generator(0))
    with pytest.raises(ValueError, match="cifar"):
        corruption(images, 1, generator(0), params="cifar10")


@pytest.mark.parametrize("name", ["brightness", "saturate", "jpeg_compression"])
def test_colour_corruptions_need_rgb(name: str, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="channels"):
        CORRUPTIONS.create(name)(images[:, :1], 1)


# -------------------------------------------------------------------------------- hand-checked behaviour

def test_contrast_by_hand() -> None:
    # one image, channel means 0.5 / 0.25 / 0.75
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).expand(1, 3, 2, 2).clone()
    x[0, 1] *= 0.5
    x[0, 2] = x[0, 2] * 0.5 + 0.5
    out = CORRUPTIONS.create("contrast")(x, 1, params="imagenet")  # c = 0.4
    expected = torch.tensor([[0.3, 0.7], [0.3, 0.7]])
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[0, 1], expected * 0.5)
    torch.testing.assert_close(out[0, 2], expected * 0.5 + 0.5)


def test_brightness_by_hand() -> None:
    # HSV value + c scales a colour up by (v + c) / v; black becomes grey c; white stays white
    x = torch.tensor([0.4, 0.2, 0.1, 0.0, 1.0]).view(1, 1, 1, 5).repeat(1, 3, 1, 1)
    x[0, :, 0, 0] = torch.tensor([0.4, 0.2, 0.1])
    out = CORRUPTIONS.create("brightness")(x, 2, params="imagenet")  # c = 0.2
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.6, 0.3, 0.15]))
    torch.testing.assert_close(out[0, :, 0, 3], torch.full((3,), 0.2))
    torch.testing.assert_close(out[0, :, 0, 4], torch.ones(3))


@pytest.mark.parametrize("params", PARAMS)
def test_noise_statistics(params: str) -> None:
    x = torch.full((1, 3, 200, 200), 0.5)
    g = generator(6)
    sigma = CORRUPTIONS.create("gaussian_noise").TABLE[params][1]
    d = CORRUPTIONS.create("gaussian_noise")(x, 2, g, params=params) - x
    assert abs(d.std().item() / sigma - 1) < 0.03 and abs(d.mean().item()) < 0.01
    photons = CORRUPTIONS.create("shot_noise").TABLE[params][1]
    s = CORRUPTIONS.create("shot_noise")(x, 2, g, params=params)
    # Poisson(x c) / c: mean x, variance x / c
    assert abs(s.mean().item() - 0.5) < 0.01 and abs(s.var().item() / (0.5 / photons) - 1) < 0.05
    amount = CORRUPTIONS.create("impulse_noise").TABLE[params][1]
    i = CORRUPTIONS.create("impulse_noise")(x, 2, g, params=params)
    flipped = (i != 0.5).float()
    assert abs(flipped.mean().item() / amount - 1) < 0.05
    assert abs((i == 1).float().sum().item() / flipped.sum().item() - 0.5) < 0.05
    scale = CORRUPTIONS.create("speckle_noise").TABLE[params][1]
    sp = CORRUPTIONS.create("speckle_noise")(x, 2, g, params=params) - x
    assert abs(sp.std().item() / (0.5 * scale) - 1) < 0.03


@pytest.mark.parametrize("name", ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
                                  "pixelate", "elastic_transform"])
@pytest.mark.parametrize("params", PARAMS)
def test_geometric_corruptions_keep_a_flat_image(name: str, params: str) -> None:
    x = torch.full((2, 3, 36, 36), 0.37)
    # severity 3: ImageNet-C's defocus kernels for severities 4-5 sum to ~1.01 (see DefocusBlur)
    out = CORRUPTIONS.create(name)(x, 3, generator(7), params=params)
    # glass blur truncates its first blur to 8 bits, as the reference
    atol = 1 / 255 if name == "glass_blur" else 1e-5
    torch.testing.assert_close(out, x, rtol=0, atol=atol)


def test_border_index_modes() -> None:
    cpu = torch.device("cpu")
    assert border_index(4, 2, 2, "replicate", cpu).tolist() == [0, 0, 0, 1, 2, 3, 3, 3]
    assert border_index(4, 2, 2, "symmetric", cpu).tolist() == [1, 0, 0, 1, 2, 3, 3, 2]
    assert border_index(4, 2, 2, "reflect101", cpu).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    # pads wider than the axis keep reflecting
    assert border_index(3, 5, 0, "reflect101", cpu).tolist() == [1, 0, 1, 2, 1, 0, 1, 2]
    with pytest.raises(ValueError, match="replicate"):
        border_index(3, 1, 1, "wrap", cpu)


def test_gaussian_filter_kernel_is_normalized_and_symmetric() -> None:
    impulse = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    impulse[0, 0, 15, 15] = 1
    response = gaussian_filter(impulse, 2.0)
    assert math.isclose(response.sum().item(), 1.0, rel_tol=1e-12)
    torch.testing.assert_close(response, response.flip(-1).transpose(-1, -2))
    # variance of the sampled kernel is close to sigma² (truncated at 4 sigma)
    grid = torch.arange(31, dtype=torch.float64) - 15
    assert abs((response[0, 0].sum(0) * grid ** 2).sum().item() - 4.0) < 0.01


def test_jpeg_quantization_tables() -> None:
    base = torch.tensor(LUMA_QUANT, dtype=torch.float64).view(8, 8)
    torch.testing.assert_close(quantization_table(LUMA_QUANT, 50), base)  # scale 100 %
    assert quantization_table(LUMA_QUANT, 100).eq(1).all()
    torch.testing.assert_close(quantization_table(LUMA_QUANT, 25), ((base * 200 + 50) // 100).clamp(1, 255))
    with pytest.raises(ValueError, match="quality"):
        quantization_table(LUMA_QUANT, 0)
    d = dct_matrix(torch.device("cpu"), torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64))


def test_jpeg_high_quality_is_nearly_lossless_and_low_quality_is_not() -> None:
    x = torch.round(smooth_images(2, 32, 48) * 255) / 255
    assert (jpeg_round_trip(x, 100) - x).abs().mean() < 1.5 / 255
    assert (jpeg_round_trip(x, 5) - x).abs().mean() > (jpeg_round_trip(x, 50) - x).abs().mean()


def test_hsv_round_trip() -> None:
    x = torch.rand(2, 3, 16, 16, generator=generator(8), dtype=torch.float64)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x)
    hsv = rgb_to_hsv(x)
    assert hsv.min() >= 0 and hsv.max() <= 1
    torch.testing.assert_close(hsv[:, 2], x.max(1)[0])


def test_motion_blur_with_a_single_tap_is_identity() -> None:
    x = smooth_images(2, 20, 24)
    # sigma -> 0 puts all weight on the unshifted tap
    torch.testing.assert_close(motion_blur(x, 5, 1e-3, torch.tensor([10.0, -30.0])), x)


def test_motion_blur_horizontal_is_a_causal_row_average() -> None:
    x = torch.zeros(1, 1, 5, 9)
    x[..., 4] = 1.0
    out = motion_blur(x, 1, 1e6, torch.tensor([0.0]))  # 3 equal taps shifting by 0, -1, -2 columns
    expected = torch.zeros(1, 1, 5, 9)
    expected[..., 2:5] = 1 / 3
    torch.testing.assert_close(out, expected)


def test_zoom_grid_identity_and_centre() -> None:
    identity = zoom_grid(10, 1.0, False, torch.device("cpu"))
    torch.testing.assert_close(identity, torch.arange(10, dtype=torch.float64))
    grid = zoom_grid(32, 1.25, True, torch.device("cpu"))
    # a centre zoom keeps the centre fixed and shrinks the spacing by the zoom factor
    assert abs((grid[15] + grid[16]) / 2 - 15.5) < 0.5
    assert abs((grid[-1] - grid[0]) / 31 - 1 / 1.25) < 0.02


def test_local_shuffle_leaves_border_and_small_images_alone() -> None:
    x = smooth_images(1, 12, 12)
    out = local_shuffle(x, 2, generator(9))
    torch.testing.assert_close(out[..., :3, :], x[..., :3, :])  # rows 0..max_delta are never visited
    assert not torch.equal(out, x)
    torch.testing.assert_close(local_shuffle(x[..., :4, :4], 2, generator(9)), x[..., :4, :4])


def test_pil_box_matrix_rows_are_averages() -> None:
    m = pil_resample_matrix(6, 3, "box", torch.device("cpu"), torch.float64)
    expected = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0], [0, 0, 0, 0, 0.5, 0.5]],
                            dtype=torch.float64)
    torch.testing.assert_close(m, expected)
    near = pil_resample_matrix(2, 4, "nearest", torch.device("cpu"), torch.float64)
    assert near.argmax(1).tolist() == [0, 0, 1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_runs_on_the_inputs_device(name: str, images: torch.Tensor) -> None:
    corruption = CORRUPTIONS.create(name)
    cuda = images.cuda()
    for gen in (torch.Generator(device="cuda").manual_seed(0), torch.Generator().manual_seed(0)):
        out = corruption(cuda, 3, gen)
        assert out.device == cuda.device and out.shape == cuda.shape and 0 <= out.min() and out.max() <= 1
    if getattr(corruption, "deterministic", False):
        # same maths on either device; a JPEG rounding may flip where float sums differ in the last bit
        assert (out.cpu() - corruption(images, 3)).abs().mean() < 1e-3
