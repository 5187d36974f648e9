"""Explicit randomness: library code takes ``torch.Generator`` objects and never seeds globally."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (a non-negative int)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


def split_generator(generator: torch.Generator, n: int) -> list[torch.Generator]:
    """``n`` independent child generators drawn from ``generator`` (advances it once per child)."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device).tolist()
    return [make_generator(int(s), generator.device) for s in seeds]


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Ask PyTorch for deterministic kernels inside the block (the CLI's ``--deterministic``)."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    prev_cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    prev_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_cudnn
        if prev_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Module construction inside the block draws its initial weights from ``seed``.

    PyTorch's initializers only read the default CPU generator, so only that one is re-seeded (not the CUDA
    generators, which ``torch.manual_seed`` would also reset), and its state is restored on exit: nothing
    outside the block sees a difference. Build modules on the CPU inside the block, then move them.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
