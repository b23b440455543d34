"""Batch experiments: a TOML spec expands to a grid of runs, executed locally or on Ray.

``fool run SPEC.toml`` and ``fool results DIR`` are the command-line face of this package:

>>> spec = load_spec("experiments/perturb-smoke.toml")  # doctest: +SKIP
>>> out = run_batch(spec, "runs/smoke", executor=get_executor("local"))  # doctest: +SKIP
>>> print(write_results(out)["summary"])  # doctest: +SKIP

Modules: :mod:`.spec` (spec files, grid, run ids), :mod:`.tasks` (task kinds and
``run_one``), :mod:`.executors` (local, Ray), :mod:`.batch` (output layout, resume),
:mod:`.results` (table, summary, CSV, gallery). Adding a task kind is one function in
:mod:`.tasks` and one entry in its ``TASKS`` dict.
"""

from fooltools.experiments.batch import default_out, read_result, run_batch
from fooltools.experiments.executors import LocalExecutor, RayExecutor, get_executor
from fooltools.experiments.results import format_summary, load_results, write_results
from fooltools.experiments.spec import Run, Spec, load_spec, parse_spec, run_id
from fooltools.experiments.tasks import METRICS, TASKS, Param, TaskKind, run_one

__all__ = [
    "METRICS",
    "TASKS",
    "LocalExecutor",
    "Param",
    "RayExecutor",
    "Run",
    "Spec",
    "TaskKind",
    "default_out",
    "format_summary",
    "get_executor",
    "load_results",
    "load_spec",
    "parse_spec",
    "read_result",
    "run_batch",
    "run_id",
    "run_one",
    "write_results",
]
