"""One file per corruption family, all behind ``CORRUPTIONS``."""

# importing the family modules registers their corruptions
from robustssl.threats.corruptions import blur, digital, extra, noise, weather  # noqa: F401
from robustssl.threats.corruptions.api import corrupt, names
from robustssl.threats.corruptions.base import CORRUPTIONS, PARAM_SETS, Corruption

__all__ = ["CORRUPTIONS", "PARAM_SETS", "Corruption", "corrupt", "names"]
