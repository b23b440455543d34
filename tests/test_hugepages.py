"""fooltools.hugepages: the restart with glibc's huge-page tunable, when and how."""

import os
import platform
import subprocess
import sys

import pytest

from fooltools import hugepages

GLIBC = ("glibc", "2.36")


@pytest.mark.parametrize(
    ("environ", "mode", "libc", "expected"),
    [
        ({}, "madvise", GLIBC, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", GLIBC, True),
        ({}, "always", GLIBC, False),  # the kernel gives huge pages anyway
        ({}, "never", GLIBC, False),
        ({}, "", GLIBC, False),  # no THP interface
        ({}, "madvise", ("glibc", "2.34"), False),  # tunable added in glibc 2.35
        ({}, "madvise", ("", ""), False),  # musl, macOS
        ({"GLIBC_TUNABLES": hugepages.TUNABLE}, "madvise", GLIBC, False),  # no restart loop
        ({hugepages.OPT_OUT: "0"}, "madvise", GLIBC, False),
    ],
)
def test_useful(environ, mode, libc, expected):
    assert hugepages.useful(environ, mode, libc) is expected


PROBE = (
    "import os, sys; from fooltools import hugepages; hugepages.ensure(); "
    "print(os.environ.get('GLIBC_TUNABLES', '')); print(sys.argv[1:])"
)


def probe(**extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
    env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"  # kept, and the tunable appended
    env.update(extra)
    cmd = [sys.executable, "-c", PROBE, "a b", "--flag"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )


def test_ensure_restarts_with_the_tunable_where_useful():
    tunables, argv, _ = probe()
    restart = sys.platform.startswith("linux") and hugepages.useful(
        {}, hugepages.thp_mode(), platform.libc_ver()
    )
    expected = "glibc.malloc.arena_max=4" + (f":{hugepages.TUNABLE}" if restart else "")
    assert tunables == expected
    assert argv == "['a b', '--flag']"  # the same command line after the restart


def test_ensure_can_be_turned_off():
    tunables, argv, _ = probe(**{hugepages.OPT_OUT: "0"})
    assert tunables == "glibc.malloc.arena_max=4" and argv == "['a b', '--flag']"


def test_describe_names_the_state():
    assert hugepages.describe().startswith("huge pages: ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evolve", "--class", "robin"], True),
        (["classify", "sample:cat"], True),
        (["perturb", "cat.jpg", "--target", "evolve"], False),  # attacks: slower on them
        (["--help"], False),
        ([], False),
    ],
)
def test_the_fool_script_restarts_for_the_commands_measured_faster(argv, expected):
    assert hugepages.wanted(argv) is expected
