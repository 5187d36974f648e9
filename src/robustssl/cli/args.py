"""Argument types shared by the verbs: fractions (``--eps 8/255``), lists (``--eps 2/255,4/255``), devices."""

from __future__ import annotations

import argparse
from fractions import Fraction
from typing import Any

from robustssl.runtime.device import DEVICE_CHOICES
from robustssl.runtime.options import option_value
from robustssl.runtime.precision import PRECISIONS


def fraction(text: str) -> float:
    """``"8/255"``, ``"0.5"`` or ``"1e-3"`` -> float."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from exc


def fraction_list(text: str) -> list[float]:
    """``"2/255,4/255,8/255"`` -> list of floats."""
    return [fraction(part) for part in text.split(",") if part.strip()]


def key_value(text: str) -> tuple[str, Any]:
    """argparse type for ``KEY=VALUE`` options -> ``(key, value)``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. severity=3), got {text!r}")
    return key.strip(), option_value(value)


def key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["k=1", "name=x"]`` given to ``flag`` -> ``{"k": 1, "name": "x"}`` (see ``option_value``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        try:
            key, value = key_value(pair)
        except argparse.ArgumentTypeError:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}") from None
        out[key] = value
    return out


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision``, ``--seed``, ``--deterministic``: alike on every verb that computes."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    group.add_argument(
        "--precision",
        default="fp32",
        choices=sorted(PRECISIONS),
        help="autocast precision for forward passes (bf16 is ~3x faster on recent CPUs)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of every generator this run creates")
    group.add_argument("--deterministic", action="store_true", help="ask PyTorch for deterministic kernels")
