"""Large CPU buffers on transparent huge pages: the process restarts once to get them.

Used by ``fool evolve``, ``fool classify`` and the evolution and classifier benchmarks,
where it was measured faster (see :data:`COMMANDS`).

XLA:CPU allocates each call's intermediates afresh (gigabytes for a batch of 198 Lite0
images). glibc serves allocations this large with ``mmap`` and unmaps them when they
are freed, so every call faults its memory in again 4 KiB at a time: on the dev VM
(2 cores, Linux 'madvise' huge-page mode) a 198-image Lite0 forward pass took 3 million
page faults, a fifth of its CPU time in the kernel, 2.7 s. glibc's tunable
``glibc.malloc.hugetlb=1`` (glibc >= 2.35) marks those mappings for transparent huge
pages: 15 thousand faults and 2.1 s for the same pass. Tunables are read only when a
process starts, so :func:`ensure` restarts the process (``execve``, same arguments)
with the tunable set, once, before any work is done.

It does nothing when it would not help: not Linux/glibc >= 2.35, huge pages ``never``
or already ``always`` on, the tunable already set, or ``FOOLTOOLS_HUGEPAGES=0``.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "FOOLTOOLS_HUGEPAGES"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or ''."""
    try:
        text = _THP_MODE.read_text()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def _tuned(environ: Mapping[str, str]) -> bool:
    return "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", "")


def useful(environ: Mapping[str, str], mode: str, libc: tuple[str, str]) -> bool:
    """Whether restarting with :data:`TUNABLE` would put large buffers on huge pages.

    Args:
        environ: The process environment.
        mode: :func:`thp_mode`.
        libc: ``platform.libc_ver()``, e.g. ``("glibc", "2.36")``.
    """
    name, version = libc
    try:
        new_enough = name == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 35)
    except ValueError:
        new_enough = False
    return (
        new_enough
        and mode == "madvise"  # 'always' has them already; 'never' cannot
        and not _tuned(environ)
        and environ.get(OPT_OUT, "1") != "0"
    )


def ensure() -> None:
    """Restart this process with :data:`TUNABLE` where :func:`useful`; else return.

    Call it first thing in an entry point (the ``fool`` script, a benchmark): the
    restarted process runs the same command line from the start.
    """
    if not sys.platform.startswith("linux") or not sys.executable:
        return
    if not useful(os.environ, thp_mode(), platform.libc_ver()):
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), TUNABLE)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def describe() -> str:
    """This process's huge-page state, for benchmark headers: 'huge pages: ...'."""
    mode = thp_mode() or "unknown"
    if mode == "madvise":
        state = f"on ({TUNABLE})" if _tuned(os.environ) else "off (madvise mode)"
        return f"huge pages: {state}"
    return f"huge pages: {mode}"


# The commands measured faster on huge pages, on the dev VM: evolve (populations of
# 100-400 per call: 18-30% more evaluations/s, the robin run 172 -> 118 s) and classify
# (batches of 8-32: +28%). PGD at batch 8 was 6-11% slower on them (43.6 -> 39-41
# image-steps/s), so perturb and the other commands keep 4 KiB pages.
COMMANDS = frozenset({"evolve", "classify"})


def wanted(argv: list[str]) -> bool:
    """Whether the command line ``argv`` (without the program) is one of :data:`COMMANDS`."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in COMMANDS


def _stopped_before_the_command(signum: int, frame: object) -> None:
    os.write(2, b"error: interrupted\n")  # as `fool` says it for a stopped command
    os._exit(2)  # cli.EXIT_USAGE, not imported yet


def fool() -> None:
    """The ``fool`` console script: :func:`ensure` for :data:`COMMANDS`, then the CLI.

    It lives here, not in ``fooltools.cli``, so that a restart comes before the command
    line's imports (jax and the models: 1.4 s that a restart would otherwise pay twice).
    """
    # A SIGTERM before the command line has set its own handler (a restart, the imports of
    # jax and the models: seconds on a busy machine) ended the process at once with no
    # word (exit -15). Nothing is written yet, so a stop there is only this line and code 2.
    signal.signal(signal.SIGTERM, _stopped_before_the_command)
    if wanted(sys.argv[1:]):
        ensure()
    from fooltools import cli

    try:
        cli.main()
    except SystemExit:
        if not cli.interrupted():
            raise
        # Stopped (Ctrl-C, SIGTERM) with its state saved and its line printed: out now,
        # without the interpreter's teardown, which crashed (SIGSEGV, exit 139) in some
        # runs stopped while XLA still ran their work on its threads.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(cli.EXIT_USAGE)
