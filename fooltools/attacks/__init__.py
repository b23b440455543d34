"""Gradient attacks: factories of ``run(key, x, target, *, progress=None) -> AttackResult``.

Each ``run`` is built by :func:`.base.looped` from jitted pieces compiled once per shape.
"""

from fooltools.attacks.base import AttackResult
from fooltools.attacks.cw import cw
from fooltools.attacks.fgsm import fgsm
from fooltools.attacks.pgd import pgd
from fooltools.attacks.szegedy import lbfgs, szegedy

__all__ = ["AttackResult", "cw", "fgsm", "lbfgs", "pgd", "szegedy"]
