"""One file per corruption family, all behind ``CORRUPTIONS``."""

from robustssl.threats.corruptions.base import CORRUPTIONS, PARAM_SETS, Corruption

__all__ = ["CORRUPTIONS", "PARAM_SETS", "Corruption"]
