"""Device, precision, randomness, progress, logging and input checks. Knows nothing of the layers above."""

from robustssl.runtime import distributed
from robustssl.runtime.device import resolve_device
from robustssl.runtime.logging import get_logger
from robustssl.runtime.precision import PRECISIONS, autocast
from robustssl.runtime.progress import progress
from robustssl.runtime.seeding import deterministic_mode, make_generator, seeded_init, split_generator
from robustssl.runtime.validation import check_image, input_checks, input_checks_enabled

__all__ = [
    "PRECISIONS",
    "autocast",
    "check_image",
    "distributed",
    "deterministic_mode",
    "get_logger",
    "input_checks",
    "input_checks_enabled",
    "make_generator",
    "progress",
    "resolve_device",
    "seeded_init",
    "split_generator",
]
