"""Fast gradient sign method (Goodfellow et al. 2015): one step of length ``eps``."""

from __future__ import annotations

from fooltools.attacks import base
from fooltools.attacks.pgd import pgd


def fgsm(
    model: base.Model,
    params: base.Params,
    *,
    eps: float,
    norm: str = "linf",
    targeted: bool = True,
    quantize: bool = True,
) -> base.Run:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of length ``eps``.

    The L2 variant steps along the normalised gradient. Arguments as :func:`pgd`.
    """
    return pgd(
        model,
        params,
        eps=eps,
        norm=norm,
        steps=1,
        step_size=eps,
        random_start=False,
        targeted=targeted,
        quantize=quantize,
    )
