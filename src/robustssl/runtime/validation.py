"""The image contract: float tensors, NCHW, 3 channels unless said otherwise, values in [0, 1].

The check costs one min/max reduction; switch it off with ``input_checks(False)`` or ROBUSTSSL_INPUT_CHECKS=0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

_TOLERANCE = 1e-5
_state = {"enabled": os.environ.get("ROBUSTSSL_INPUT_CHECKS", "1") not in ("0", "false", "no")}


def input_checks_enabled() -> bool:
    return _state["enabled"]


@contextlib.contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Turn the image-contract checks on or off inside a block."""
    previous = _state["enabled"]
    _state["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _state["enabled"] = previous


def check_image(x: object, where: str = "input", channels: int | None = 3, force: bool = False) -> None:
    """Raise ``ValueError`` unless ``x`` is a float (B, C, H, W) tensor with values in [0, 1].

    ``where`` names the receiver in the message (e.g. ``"resnet18_cifar.embed"``).
    """
    if not (force or _state["enabled"]):
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor image batch, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{where}: expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{where}: expected {channels} channels (B, {channels}, H, W), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{where}: expected a float image in [0, 1], got dtype {x.dtype}; "
            "divide uint8 images by 255 first"
        )
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if lo != lo or hi != hi:
        raise ValueError(f"{where}: image contains NaN")
    if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
        raise ValueError(
            f"{where}: image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
            "robustssl images are unnormalized (encoders normalize inside)"
        )
