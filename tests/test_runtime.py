"""The lead's runtime helpers and the registry: devices, precision, generators, image checks, progress."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import robustssl as rs
from robustssl.registry import Registry, UnknownNameError
from robustssl.runtime import (
    autocast,
    check_image,
    deterministic_mode,
    get_logger,
    input_checks,
    input_checks_enabled,
    make_generator,
    progress,
    resolve_device,
    split_generator,
)


# --- registry ---------------------------------------------------------------------------------------------
def _registry() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("gaussian_noise", family="noise")
    def gaussian(scale: float = 1.0) -> tuple[str, float]:
        return "gaussian", scale

    @reg.register()
    def shot_noise() -> str:
        return "shot"

    reg.register("glass_blur")(lambda: "glass")
    return reg


def test_registry_create_names_and_meta():
    reg = _registry()
    assert reg.create("gaussian_noise", scale=2.0) == ("gaussian", 2.0)
    assert reg.create("shot_noise") == "shot"  # name defaults to the function's
    assert reg.names() == ["gaussian_noise", "glass_blur", "shot_noise"]
    assert reg.names("*_noise") == ["gaussian_noise", "shot_noise"]
    assert list(reg) == reg.names() and len(reg) == 3 and "glass_blur" in reg and "fog" not in reg
    meta = reg.meta("gaussian_noise")
    meta["family"] = "changed"  # a copy: the registry's metadata is unchanged
    assert reg.meta("gaussian_noise") == {"family": "noise"}


def test_unknown_name_lists_valid_names_and_suggests_close_ones():
    reg = _registry()
    with pytest.raises(UnknownNameError) as info:
        reg.create("gausian_noise")
    message = str(info.value)
    assert "'gausian_noise'" in message and "Did you mean 'gaussian_noise'" in message
    assert "gaussian_noise, glass_blur, shot_noise" in message
    assert isinstance(info.value, ValueError) and info.value.valid == reg.names()
    with pytest.raises(UnknownNameError, match="Valid widget names"):
        reg.meta("zzz")


def test_unknown_options_are_named_with_the_accepted_ones():
    reg = _registry()
    expected = r"widget 'gaussian_noise' has no option\(s\) 'sigma'; accepted: scale"
    with pytest.raises(ValueError, match=expected):
        reg.create("gaussian_noise", sigma=2.0)

    @reg.register("forwarding")
    def forwarding(**kwargs):
        """Options: ``scale``."""
        return gaussian_inner(**kwargs)

    def gaussian_inner(scale=1.0):
        return scale

    assert reg.create("forwarding", scale=3.0) == 3.0
    with pytest.raises(ValueError, match=r"widget 'forwarding' has no option 'sigma'; Options: ``scale``"):
        reg.create("forwarding", sigma=2.0)

    @reg.register("broken")
    def broken(scale=1.0):
        return len(scale)  # a TypeError of the factory's own is not reworded

    with pytest.raises(TypeError, match="has no len"):
        reg.create("broken")
    with pytest.raises(ValueError, match="encoder 'vit_tiny' has no option 'image_size'.*img_size"):
        rs.encoders.create("vit_tiny", image_size=32)


def test_registering_a_name_twice_is_an_error_but_re_registering_the_same_factory_is_not():
    reg = _registry()
    factory = reg.get("shot_noise")
    reg.register("shot_noise")(factory)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("shot_noise")(lambda: "other")


# --- device -----------------------------------------------------------------------------------------------
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto == resolve_device(None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="accepted"):
        resolve_device("tpu")


# --- precision --------------------------------------------------------------------------------------------
def test_autocast_fp32_is_a_no_op_and_bf16_changes_matmul_dtype():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16


@pytest.mark.parametrize("precision, match", [("fp16", "not supported on the CPU"), ("fp64", "accepted")])
def test_autocast_rejects(precision, match):
    with pytest.raises(ValueError, match=match):
        autocast("cpu", precision)


# --- randomness -------------------------------------------------------------------------------------------
def test_make_generator_is_reproducible_and_validates_seed():
    x = torch.rand(5, generator=make_generator(7))
    assert torch.equal(x, torch.rand(5, generator=make_generator(7)))
    assert not torch.equal(x, torch.rand(5, generator=make_generator(8)))
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="non-negative int"):
            make_generator(bad)


def test_split_generator_children_are_independent_and_reproducible():
    kids = split_generator(make_generator(0), 3)
    draws = [torch.rand(4, generator=k) for k in kids]
    again = [torch.rand(4, generator=k) for k in split_generator(make_generator(0), 3)]
    assert all(torch.equal(a, b) for a, b in zip(draws, again, strict=True))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_library_randomness_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    split_generator(make_generator(0), 2)
    assert torch.equal(state, torch.get_rng_state())


def test_deterministic_mode_restores_the_previous_settings():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_mode():
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before
    with deterministic_mode(False):
        assert torch.are_deterministic_algorithms_enabled() == before


# --- image checks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, error, match", [
    ([[0.0]], TypeError, "torch.Tensor"),
    (torch.rand(3, 8, 8), ValueError, r"\(B, C, H, W\)"),
    (torch.rand(2, 1, 8, 8), ValueError, "3 channels"),
    (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), ValueError, "divide uint8"),
    (torch.full((1, 3, 2, 2), 1.5), ValueError, r"\[0, 1\]"),
    (torch.full((1, 3, 2, 2), -0.2), ValueError, r"\[0, 1\]"),
    (torch.full((1, 3, 2, 2), math.nan), ValueError, "NaN"),
])
def test_check_image_rejects(x, error, match):
    with pytest.raises(error, match=match):
        check_image(x, where="unit")


def test_check_image_accepts_valid_and_names_the_receiver():
    check_image(torch.rand(2, 3, 4, 4))
    check_image(torch.rand(2, 1, 4, 4), channels=1)
    check_image(torch.rand(2, 5, 4, 4), channels=None)
    check_image(torch.empty(0, 3, 4, 4))
    check_image(torch.full((1, 3, 1, 1), 1.0 + 1e-6))  # within the rounding tolerance
    with pytest.raises(ValueError, match="^encoder.embed: "):
        check_image(torch.full((1, 3, 1, 1), 2.0), where="encoder.embed")


def test_input_checks_can_be_switched_off_in_a_block():
    bad = torch.full((1, 3, 1, 1), 2.0)
    assert input_checks_enabled()
    with input_checks(False):
        check_image(bad)  # skipped
        with pytest.raises(ValueError):
            check_image(bad, force=True)
    assert input_checks_enabled()
    with pytest.raises(ValueError):
        check_image(bad)


# --- progress and logging ---------------------------------------------------------------------------------
def test_progress_iterates_everything_and_respects_the_switches(monkeypatch):
    assert list(progress(range(5), enabled=False)) == [0, 1, 2, 3, 4]
    assert progress(range(2), enabled=False).disable
    assert not progress(range(2), enabled=True).disable
    monkeypatch.setenv("ROBUSTSSL_PROGRESS", "0")
    assert progress(range(2)).disable
    monkeypatch.setenv("ROBUSTSSL_PROGRESS", "1")
    assert not progress(range(2)).disable


def test_get_logger_prefixes_the_package_name():
    assert get_logger("bench").name == "robustssl.bench"
    assert get_logger("robustssl.metrics").name == "robustssl.metrics"
    assert isinstance(get_logger("x"), logging.Logger)
