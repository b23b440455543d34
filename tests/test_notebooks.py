"""The tours in notebooks/ run top to bottom and are committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # The kernel shares the suite's compilation cache (its FOOLTOOLS_CACHE_DIR, set up as
    # `fool` and the tests set it): the tours run attacks other tests compile too.
    setup = "from fooltools.cache import enable_compilation_cache\nenable_compilation_cache()"
    nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    # A cell that raises (the tours assert what they claim) fails this test.
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert text.strip(), "the tour printed nothing"
