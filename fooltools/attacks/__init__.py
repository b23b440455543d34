"""Gradient attacks: factories of pure jitted ``run(key, x, target) -> AttackResult``."""

from fooltools.attacks.base import AttackResult
from fooltools.attacks.cw import cw
from fooltools.attacks.fgsm import fgsm
from fooltools.attacks.pgd import pgd
from fooltools.attacks.szegedy import lbfgs, szegedy

__all__ = ["AttackResult", "cw", "fgsm", "lbfgs", "pgd", "szegedy"]
