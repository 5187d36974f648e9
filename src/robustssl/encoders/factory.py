"""The encoder registry and factory: ``create(name, **kw)``, ``names(pattern)``, ``@register``.

Built-in names are registered by their modules (``resnet``, ``convnet``, ``vit``). Two prefixes reach other
libraries: ``timm:<model>`` and ``torchvision:<model>`` (randomly initialised; load weights with
``checkpoints.load``). ``create`` stamps ``name`` and ``config`` (the keyword arguments) on the encoder, so
``create(enc.name, **enc.config)`` rebuilds the same architecture; checkpoints rely on that.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from robustssl.encoders.base import Encoder
from robustssl.registry import Registry

ENCODERS: Registry[Encoder] = Registry("encoder")
ADAPTER_PREFIXES = ("timm:", "torchvision:")


def register(name: str | None = None,
             **meta: Any) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator registering an encoder factory: ``@register("my_net", description="...")``."""
    if name is not None and name.startswith(ADAPTER_PREFIXES):
        raise ValueError(f"encoder names may not start with an adapter prefix {ADAPTER_PREFIXES}, "
                         f"got {name!r}")
    return ENCODERS.register(name, **meta)


def create(name: str, **kwargs: Any) -> Encoder:
    """Build the encoder ``name`` (a registered name, ``timm:<model>`` or ``torchvision:<model>``).

    Keyword arguments go to the factory (e.g. ``create("vit_tiny", img_size=32, patch_size=4)``).
    """
    if not isinstance(name, str):
        raise TypeError(f"encoder name must be a string, got {type(name).__name__}")
    if name.startswith("timm:"):
        from robustssl.encoders.adapters import TimmEncoder

        encoder: Encoder = TimmEncoder(name.removeprefix("timm:"), **kwargs)
    elif name.startswith("torchvision:"):
        from robustssl.encoders.adapters import TorchvisionEncoder

        encoder = TorchvisionEncoder(name.removeprefix("torchvision:"), **kwargs)
    else:
        encoder = ENCODERS.create(name, **kwargs)
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder factory {name!r} returned {type(encoder).__name__}, not an Encoder")
    encoder.name = name
    encoder.config = dict(kwargs)
    return encoder


def names(pattern: str = "*") -> list[str]:
    """Registered encoder names matching the glob ``pattern``.

    ``names("timm:*vit_tiny*")`` and ``names("torchvision:resnet*")`` list the adapter models (this imports
    timm / torchvision); the default lists the built-ins only.
    """
    if pattern.startswith("timm:"):
        from robustssl.encoders.adapters import import_timm

        timm = import_timm()
        return [f"timm:{n}" for n in timm.list_models(pattern.removeprefix("timm:"))]
    if pattern.startswith("torchvision:"):
        from robustssl.encoders.adapters import import_torchvision

        models = import_torchvision().models
        found = models.list_models(module=models)
        wanted = pattern.removeprefix("torchvision:")
        return sorted(f"torchvision:{n}" for n in found if fnmatch.fnmatch(n, wanted))
    return ENCODERS.names(pattern)
