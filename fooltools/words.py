"""Words and figures in messages and reports: counts with their nouns, shown numbers."""

import math


def count(n: int, noun: str) -> str:
    """``"1 run"``, ``"2 runs"``: ``n`` and ``noun``, with an ``s`` unless n is 1."""
    return f"{n} {noun}{'s' * (n != 1)}"


def cut(value: float, decimals: int) -> float:
    """``value`` cut (not rounded) to ``decimals`` decimals: 0.98996 -> 0.9899 at 4.

    Cut, so that a figure shown is always reached: 0.98996 rounded would read 0.99 (and
    99.0%) beside a run that failed its 99% target. Rounded to 6 places of the scaled
    value first, so that float noise (100 * 0.99 = 98.99999999999999) does not cut a
    figure that is exact.
    """
    scale = 10**decimals
    return math.floor(round(value * scale, 6)) / scale


def figure(value: float, decimals: int = 4, *, cut_down: bool = False) -> float:
    """``value`` to ``decimals`` decimals for a report's metrics, never a false zero.

    Below ``10 ** -(decimals - 2)`` (0.01 at 4) it keeps two significant digits instead:
    a confidence of 5.8e-05 was reported as 0.0 beside a heading reading 0.0058%.

    Args:
        value: The number (a confidence, a ratio), >= 0 where ``cut_down``.
        decimals: Decimals kept from ``10 ** -(decimals - 2)`` up.
        cut_down: :func:`cut` instead of rounding (a confidence judged against 99%).
    """
    value = float(value)
    if not math.isfinite(value) or value == 0:
        return value
    if abs(value) < 10.0 ** -(decimals - 2):
        return float(f"{value:.2g}")
    return cut(value, decimals) if cut_down else round(value, decimals)
