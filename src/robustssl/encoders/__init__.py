"""Encoders: ``create(name, **kw)``, ``load(path)``, ``names(pattern)``. See ``base.py`` for the contract."""

from robustssl.encoders.base import Encoder, Normalize

__all__ = ["Encoder", "Normalize"]
