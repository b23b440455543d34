"""What an installed (non-editable) fooltools holds and how it starts."""

import fnmatch
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]


def test_every_data_file_is_package_data():
    # A wheel holds only what package-data names: data/LABELS_README.md, which labels.py
    # points to for the label list's provenance, was left out.
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["fooltools"]
    package = ROOT / "fooltools"
    data = [
        p for d in ("data", "detection/cfg", "detection/weights") for p in (package / d).rglob("*")
    ]
    files = [p.relative_to(package).as_posix() for p in data if p.is_file()]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert files and missing == []


def test_python_m_fooltools_is_the_fool_command():
    # `python -m fooltools.cli` failed on a circular import; `python -m fooltools` is the
    # supported form.
    done = subprocess.run(
        [sys.executable, "-m", "fooltools", "labels", "robin"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "robin" in done.stdout
