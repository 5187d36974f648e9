"""Threats: attacks (what and how) and corruptions, all in the [0, 1] image space.

``attack(model, x, target, name, eps=..., norm=...)`` runs a registered attack (``ATTACKS.names()``) with a
registered objective (``OBJECTIVES.names()``); ``corrupt(x, name, severity, generator)`` applies a
registered corruption (``CORRUPTIONS.names()``); ``check_gradient_masking`` flags signs of masked gradients.
"""

from robustssl.threats.api import AttackResult, SweepResult, attack
from robustssl.threats.attacks import ATTACKS, Attack
from robustssl.threats.checks import GradientMaskingWarning, MaskingReport, check_gradient_masking
from robustssl.threats.corruptions import CORRUPTIONS, Corruption, corrupt
from robustssl.threats.objectives import OBJECTIVES, MultiTaskObjective, Objective
from robustssl.threats.threat_model import NORMS, ThreatModel

__all__ = [
    "ATTACKS",
    "CORRUPTIONS",
    "NORMS",
    "OBJECTIVES",
    "Attack",
    "AttackResult",
    "Corruption",
    "GradientMaskingWarning",
    "MaskingReport",
    "MultiTaskObjective",
    "Objective",
    "SweepResult",
    "ThreatModel",
    "attack",
    "check_gradient_masking",
    "corrupt",
]
