"""The tours in notebooks/ run top to bottom and are committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fooltools import cache

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_the_three_tours_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01-perturb", "02-evolve", "03-detect"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # The kernel shares the suite's compilation cache (as `fool` and the tests do, through
    # fooltools.cache): the tours run attacks other tests compile too.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache.cache_dir() / "xla"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    nb = nbformat.read(path, as_version=4)
    # A cell that raises (the tours assert what they claim) fails this test.
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert text.strip(), "the tour printed nothing"
