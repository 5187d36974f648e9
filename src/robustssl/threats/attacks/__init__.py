"""One file per attack, all behind ``ATTACKS``."""

from robustssl.threats.attacks.apgd import APGD, APGDTargeted
from robustssl.threats.attacks.autoattack import AutoAttack, AutoAttackReport
from robustssl.threats.attacks.base import ATTACKS, Attack
from robustssl.threats.attacks.bpda import BPDA
from robustssl.threats.attacks.eot import EOT
from robustssl.threats.attacks.fab import FAB
from robustssl.threats.attacks.fgsm import FGSM
from robustssl.threats.attacks.pgd import PGD
from robustssl.threats.attacks.square import Square
from robustssl.threats.attacks.transfer import Transfer

__all__ = [
    "APGD", "ATTACKS", "APGDTargeted", "AutoAttack", "AutoAttackReport", "BPDA", "EOT", "FAB", "FGSM", "PGD",
    "Attack", "Square", "Transfer",
]
