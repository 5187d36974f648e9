"""Threats: attacks (what and how) and corruptions, all in the [0, 1] image space."""

from robustssl.threats.attacks import ATTACKS, Attack
from robustssl.threats.corruptions import CORRUPTIONS, Corruption
from robustssl.threats.objectives import OBJECTIVES, Objective
from robustssl.threats.threat_model import ThreatModel

__all__ = ["ATTACKS", "CORRUPTIONS", "OBJECTIVES", "Attack", "Corruption", "Objective", "ThreatModel"]
