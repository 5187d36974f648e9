"""One file per attack, all behind ``ATTACKS``."""

from robustssl.threats.attacks.base import ATTACKS, Attack

__all__ = ["ATTACKS", "Attack"]
