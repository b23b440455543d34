"""Experiment specs: a TOML file naming a task kind, fixed parameters and a grid.

A spec::

    kind = "perturb"                 # a key of fooltools.experiments.tasks.TASKS
    name = "perturb-smoke"           # optional; default: the file's stem

    [fixed]                          # one value per parameter, shared by every run
    method = "pgd"
    steps = 3

    [grid]                           # lists expand to their cartesian product
    image = ["sample:cat", "sample:coffee"]
    target = ["ostrich", "goldfish"]
    seed = { start = 0, stop = 2 }   # a half-open range, like Python's range (step optional)

    [resources]                      # Ray only: per-run CPUs and GPUs (default 1 CPU, and
    cpus = 1                         # 1 GPU when the cluster has GPUs)

The grid expands in the order its keys are written, the last key varying fastest. Checks
made here (before anything runs): known keys, value types, non-empty grid lists without
duplicates, at most :data:`MAX_RUNS` grid points, required parameters present, each
value's range (steps >= 1, a population >= 2) and what a task's ``check`` refuses on any
machine (an unknown class or model, an L-inf eps over 1, an odd population for the ES).
What depends on the machine (an image or weights file that exists, a model installed) is
found by the run itself, so such a grid value fails only the runs that use it.

A run's id is a short hash of the canonical JSON of its kind and resolved parameters
(defaults filled in; parameters left unset are omitted, so a kind that gains a new
optional parameter keeps its old ids). It is the same on every process and machine.

Grid points that are the same run (:attr:`TaskKind.identity`: a parameter its task does
not take, such as a detector target over modes other than mislabel, or two names of one
class) are one :class:`Run`, with the id of the first of them, so a grid without such
points keeps the ids it has always had (and a resumed batch the ids it recorded). A
parameter the spec sets that no run takes is refused (unless it is the default), as the
command line refuses it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from fooltools import words
from fooltools.errors import FoolError, one_line
from fooltools.experiments.tasks import TASKS, Param

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published as tomli before it joined the standard library
    import tomli as tomllib

TOP_KEYS = ("kind", "name", "fixed", "grid", "resources")
RESOURCE_KEYS = {"cpus": (int, float), "gpus": (int, float)}
# Far past any batch one directory should hold: a guard against a typo (a seed range to
# 2^32 was a list of 4 billion values, then a grid expanded for hours, out of memory).
MAX_RUNS = 1_000_000
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of the grid.

    Attributes:
        id: 12 hex digits, :func:`run_id` of ``kind`` and ``params``.
        kind: The task kind.
        params: Every parameter of the kind, defaults filled in (None: not set).
        varying: The grid's parameters and their values here, in grid order (for labels),
            without those the run does not take.
        points: The ids of every grid point that is this run, in grid order.
    """

    id: str
    kind: str
    params: dict[str, Any]
    varying: dict[str, Any]
    points: tuple[str, ...] = ()

    def describe(self) -> str:
        """A short label for progress lines, e.g. ``perturb image=sample:cat target=ostrich``."""
        parts = [f"{k}={v}" for k, v in self.varying.items()]
        return " ".join([self.kind, *parts])


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated spec.

    Attributes:
        kind: The task kind.
        name: The batch's name (default output directory ``runs/<name>``).
        fixed: Parameter values shared by all runs (as written, normalised).
        grid: Parameter name to its list of values (ranges expanded), in written order.
        resources: ``cpus`` / ``gpus`` per run for the Ray executor (missing: automatic).
        path: The spec file (for messages). Relative paths in parameters are relative to
            the directory ``fool run`` is started in, as for the other commands.
    """

    kind: str
    name: str
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    resources: dict[str, float]
    path: Path | None = None

    def runs(self, keep: Mapping[str, tuple[str, dict[str, Any]]] | None = None) -> list[Run]:
        """Expand the grid: one :class:`Run` per distinct run, in product order.

        Args:
            keep: The runs a resumed batch recorded, ``(id, params)`` by
                :func:`identity_key`: a run that is one of them keeps its recorded id and
                parameters, so that it resumes onto its directory whichever grid point
                stands for it now. Other runs have their first point's id. A parameter
                its record lacks (written before the kind had it) is unset (None), as
                :func:`identity_key` reads it, and its id stays the same.
        """
        keep = keep or {}
        unset = dict.fromkeys(TASKS[self.kind].params)
        runs = []
        for key, points in self._points.items():
            rid, params, varying, used = points[0]
            if key in keep:
                # Tasks read every parameter: a resumed run without crops was a KeyError.
                rid, recorded = keep[key]
                params = {**unset, **recorded}
            shown = {k: v for k, v in varying.items() if used[k] is not None}
            runs.append(Run(rid, self.kind, params, shown, tuple(p[0] for p in points)))
        return runs

    @functools.cached_property
    def _points(self) -> dict[str, list[tuple[str, dict, dict, dict]]]:
        """The grid's points in product order, ``(id, params, varying, identity)``.

        Grouped by identity (the task's canonical parameters), in order of first point.
        Expanded once per spec: checking it, listing its runs and resuming a batch all
        read it, and each point's identity resolves class names.
        """
        task = TASKS[self.kind]
        defaults = {k: p.default for k, p in task.params.items()}
        keys = list(self.grid)
        groups: dict[str, list[tuple[str, dict, dict, dict]]] = {}
        for values in itertools.product(*(self.grid[k] for k in keys)):
            varying = dict(zip(keys, values, strict=True))
            params = {**defaults, **self.fixed, **varying}
            used = task.identity(params)
            key = json.dumps(used, sort_keys=True)  # as identity_key: params has every key
            groups.setdefault(key, []).append((run_id(self.kind, params), params, varying, used))
        return groups

    def check_used(self) -> None:
        """Refuse a parameter set in the spec that no run takes (unless it is its default).

        Raises:
            FoolError: Naming the key and, where known, the runs that would take it.
        """
        where = str(self.path) if self.path else "spec"
        identities = [points[0][3] for points in self._points.values()]
        params = TASKS[self.kind].params
        for section, table in (("fixed", self.fixed), ("grid", self.grid)):
            for key, value in table.items():
                if section == "fixed" and value == params[key].default:
                    continue  # as a resolved spec writes every default out
                if all(used[key] is None for used in identities):
                    only = params[key].only
                    raise FoolError(
                        f"{where}: {section}.{key}: no run of this spec takes it"
                        + (f" ({key} is for {only})" if only else "")
                    )


def identity_key(kind: str, params: Mapping[str, Any]) -> str:
    """What a run of ``kind`` with ``params`` is: its task's identity, as canonical JSON.

    Two runs with one key are the same run (see :attr:`TaskKind.identity`). A parameter
    missing from ``params`` (a record written before the kind had it) counts as unset.
    """
    task = TASKS[kind]
    return json.dumps(task.identity({k: params.get(k) for k in task.params}), sort_keys=True)


def run_id(kind: str, params: Mapping[str, Any]) -> str:
    """A run's id: 12 hex digits of the SHA-256 of ``{"kind", "params"}`` as canonical JSON.

    Canonical: sorted keys, no whitespace, ASCII only; parameters whose value is None are
    left out. Python's float repr is the shortest round-tripping one, so the text (and the
    id) is identical on every machine.
    """
    body = {"kind": kind, "params": {k: v for k, v in params.items() if v is not None}}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(choices)})"


def _check_value(where: str, value: Any, param: Param) -> Any:
    """Type-check one value (``where`` names it, e.g. ``grid.steps[1]``) and normalise it."""
    ok = isinstance(value, param.types) and not (
        isinstance(value, bool) and bool not in param.types  # TOML true is not an integer
    )
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        wanted = " or ".join(
            _TYPE_NAMES.get(t, "a list") for t in param.types if t is not type(None)
        )
        raise FoolError(f"{where}: expected {wanted}, got {value!r}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise FoolError(f"{where}[{i}]: expected a string or an integer, got {item!r}")
    if param.normalise is not None:
        try:
            value = param.normalise(value)
        except FoolError as err:
            raise FoolError(f"{where}: {err}") from None
    return value


def _grid_values(where: str, raw: Any, param: Param) -> list[Any]:
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"start", "stop", "step"})
        if unknown or not {"start", "stop"} <= set(raw):
            raise FoolError(f"{where}: a range needs integer start and stop (and optional step)")
        bounds = [raw["start"], raw["stop"], raw.get("step", 1)]
        if any(isinstance(b, bool) or not isinstance(b, int) for b in bounds) or not bounds[2]:
            raise FoolError(f"{where}: range start, stop and step must be integers, step != 0")
        if len(range(*bounds)) > MAX_RUNS:
            raise FoolError(
                f"{where}: a range of {len(range(*bounds))} values; a grid has at most "
                f"{MAX_RUNS} points"
            )
        raw = list(range(*bounds))
    if not isinstance(raw, list) or not raw:
        raise FoolError(f"{where}: expected a non-empty list of values or a range table")
    values = [_check_value(f"{where}[{i}]", v, param) for i, v in enumerate(raw)]
    seen = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(seen)) != len(seen):
        raise FoolError(f"{where}: duplicate values would give the same run twice")
    return values


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise FoolError(f"{where}: {key} must be a table ([{key}])")
    return value


def _misplaced(where: str, table: str, key: str) -> NoReturn:
    """Refuse a top-level key written below a ``[table]`` header, where TOML puts it.

    Raises:
        FoolError: Always, saying where to write ``key``.
    """
    raise FoolError(
        f"{where}: {table}.{key}: {key} is a top-level key, read as [{table}]'s since it "
        f"is written below that header; write it above the first [table]"
    )


def parse_spec(data: Mapping[str, Any], *, name: str, path: Path | None = None) -> Spec:
    """Validate a parsed spec (a dict as from ``tomllib``).

    Args:
        data: The TOML document.
        name: Default batch name when the spec has no ``name``.
        path: The file it came from (for messages).

    Returns:
        The :class:`Spec`.

    Raises:
        FoolError: One line naming the file and the offending key.
    """
    where = str(path) if path else "spec"
    for key in data:
        if key not in TOP_KEYS:
            raise FoolError(f"{where}: unknown key {key!r}{_suggest(key, list(TOP_KEYS))}")
    kind = data.get("kind")
    if not isinstance(kind, str):
        # kind = 1 is no missing key: say what it holds.
        what = "missing" if kind is None else f"expected a string, got {kind!r}"
        for table in ("fixed", "grid", "resources"):
            if kind is None and "kind" in _table(data, table, where):
                _misplaced(where, table, "kind")  # "missing" misled
        raise FoolError(f"{where}: kind: {what}; set kind to one of {', '.join(TASKS)}")
    if kind not in TASKS:
        raise FoolError(f"{where}: kind: unknown kind {kind!r}{_suggest(kind, list(TASKS))}")
    batch_name = data.get("name", name)
    # The batch's directory under runs/: "." or ".." would be runs/ or the directory above,
    # and no file name holds a '/' or a NUL (TOML's "\u0000").
    if (
        not isinstance(batch_name, str)
        or batch_name in ("", ".", "..")
        or "/" in batch_name
        or "\0" in batch_name
    ):
        raise FoolError(
            f"{where}: name: expected a non-empty string without '/' or NUL, not . or .."
        )
    params = TASKS[kind].params
    fixed, grid = {}, {}
    for section in ("fixed", "grid"):
        for key, raw in _table(data, section, where).items():
            if key in TOP_KEYS and key not in params:
                _misplaced(where, section, key)
            if key not in params:
                raise FoolError(
                    f"{where}: {section}.{key}: not a parameter of {kind}"
                    + _suggest(key, list(params))
                )
            if section == "grid":
                if key in fixed:
                    raise FoolError(f"{where}: grid.{key}: also set in [fixed]; keep one")
                grid[key] = _grid_values(f"{where}: grid.{key}", raw, params[key])
            else:
                fixed[key] = _check_value(f"{where}: fixed.{key}", raw, params[key])
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_RUNS:
        sizes = " x ".join(str(len(values)) for values in grid.values())
        raise FoolError(f"{where}: grid: {sizes} = {points} points; at most {MAX_RUNS}")
    for key, param in params.items():
        if param.required and key not in fixed and key not in grid:
            raise FoolError(f"{where}: missing parameter {key!r} of {kind}: set it in [fixed]")
    resources = {}
    for key, value in _table(data, "resources", where).items():
        if key in TOP_KEYS:
            _misplaced(where, "resources", key)
        if key not in RESOURCE_KEYS:
            raise FoolError(
                f"{where}: resources.{key}: unknown{_suggest(key, list(RESOURCE_KEYS))}"
            )
        # NaN compares false with 0, and Ray refuses NaN and inf with a traceback.
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise FoolError(
                f"{where}: resources.{key}: expected a finite number >= 0, got {value!r}"
            )
        resources[key] = float(value)
    spec = Spec(kind, batch_name, fixed, grid, resources, path)
    spec.check_used()
    check = TASKS[kind].check
    for run in spec.runs() if check else ():
        try:
            check(run.params)
        except FoolError as err:
            raise FoolError(f"{where}: {run.describe()}: {err}") from None
    return spec


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and validate a spec file.

    Raises:
        FoolError: Missing file, TOML syntax error (with its line), or an invalid spec.
    """
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is no TOML statement,
        # and tomllib refused it as "Invalid statement (at line 1, column 1)".
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FoolError(f"no such spec file: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise FoolError(f"cannot read {path}: {one_line(err)}") from None
    return parse_spec(data, name=path.stem, path=path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for two escapes: json's ASCII form
        # writes a character past U+FFFF as a surrogate pair, which TOML refuses, and
        # TOML wants DEL escaped, which json leaves.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def resolved_toml(spec: Spec, n_runs: int) -> str:
    """The spec with defaults filled in and ranges expanded, as TOML that :func:`load_spec` reads.

    Loading it back gives the same runs and ids. Unset parameters (None) are listed in a
    comment, since TOML has no null.
    """
    defaults = {k: p.default for k, p in TASKS[spec.kind].params.items() if k not in spec.grid}
    fixed = {**defaults, **spec.fixed}
    unset = [k for k, v in fixed.items() if v is None]
    lines = [
        f"# Resolved from {spec.path or 'a spec'}: {words.count(n_runs, 'run')}.",
        f"kind = {_toml_value(spec.kind)}",
        f"name = {_toml_value(spec.name)}",
        "",
        "[fixed]",
        *(f"{k} = {_toml_value(v)}" for k, v in fixed.items() if v is not None),
    ]
    if unset:
        lines.append(f"# not set: {', '.join(unset)}")
    lines += ["", "[grid]", *(f"{k} = {_toml_value(v)}" for k, v in spec.grid.items())]
    if spec.resources:
        lines += ["", "[resources]", *(f"{k} = {v!r}" for k, v in spec.resources.items())]
    return "\n".join(lines) + "\n"
