"""Gradient attacks: factories of ``run(key, x, target, *, progress=None) -> AttackResult``.

Each ``run`` is a :func:`.base.run_loop` over jitted pieces compiled once per shape (PGD's,
C&W's and L-BFGS's are kept per model and settings, with their numbers as arguments).
"""

from fooltools.attacks.base import AttackResult
from fooltools.attacks.cw import cw
from fooltools.attacks.fgsm import fgsm
from fooltools.attacks.pgd import pgd
from fooltools.attacks.szegedy import lbfgs, szegedy

__all__ = ["AttackResult", "cw", "fgsm", "lbfgs", "pgd", "szegedy"]
