"""Progress bars for long work: off when stderr is not a terminal (unless forced) or ROBUSTSSL_PROGRESS=0."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def _enabled(force: bool | None) -> bool:
    if force is not None:
        return force
    env = os.environ.get("ROBUSTSSL_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    enabled: bool | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual bar when ``iterable`` is None)."""
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        disable=not _enabled(enabled),
        dynamic_ncols=True,
        leave=False,
        **kwargs,
    )
