"""A minimal progress bar on stderr, redrawn between the device calls of a looped attack."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``Progress(total, label)(step)`` redraws ``label [####----] step/total  1.2s``.

    Steps are positions (0-based), not increments, so repeated calls with the same step
    (e.g. from a vmapped loop) are harmless. Draws only on a terminal unless forced.

    Args:
        total: Number of steps.
        label: Text before the bar.
        stream: Where to draw; default stderr.
        force: Draw even when ``stream`` is not a terminal.
    """

    def __init__(
        self, total: int, label: str = "", stream: TextIO | None = None, force: bool = False
    ):
        self.total, self.label = max(int(total), 1), label
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.done = 0
        self.start = time.perf_counter()

    def __call__(self, step: object) -> None:
        """Record that iteration ``step`` (0-based) has started or finished."""
        done = min(int(step) + 1, self.total)  # type: ignore[call-overload]
        if done <= self.done:
            return
        self.done = done
        if self.enabled:
            width = 30
            fill = width * done // self.total
            elapsed = time.perf_counter() - self.start
            bar = "#" * fill + "-" * (width - fill)
            self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total}  {elapsed:5.1f}s")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()
