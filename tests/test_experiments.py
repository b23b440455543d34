import csv
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from test_cli import assert_one_line_error
from test_cli import run as cli

from fooltools.errors import FoolError, Interrupted
from fooltools.experiments import (
    TASKS,
    LocalExecutor,
    Param,
    RayExecutor,
    TaskKind,
    get_executor,
    load_results,
    load_spec,
    parse_spec,
    read_result,
    run_batch,
    run_id,
    run_one,
    write_results,
)
from fooltools.experiments.executors import Job, check_fits, check_reachable
from fooltools.experiments.results import split_columns, summarize
from fooltools.experiments.spec import Run
from fooltools.experiments.tasks import write_result

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {
    name: ROOT / "experiments" / f"{name}.toml"
    for name in ("perturb-smoke", "evolve-smoke", "map-elites-smoke", "detect-smoke")
}


def table(out, drop=("seconds",)):
    """results.csv of a batch as a list of dicts, timing columns dropped."""
    with open(Path(out) / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def write_spec(path, text):
    path.write_text(text)
    return path


# --- specs, grids and ids -------------------------------------------------------------


def test_grid_is_a_cartesian_product_in_written_order():
    spec = parse_spec(
        {
            "kind": "perturb",
            "fixed": {"method": "pgd", "eps": "4/255"},
            "grid": {
                "image": ["sample:cat", "sample:coffee"],
                "target": ["ostrich", 7, "goldfish"],  # 7: cock (9 is ostrich)
                "seed": {"start": 0, "stop": 4, "step": 2},
            },
        },
        name="t",
    )
    runs = spec.runs()
    assert len(runs) == 2 * 3 * 2
    # The last grid key varies fastest; ranges are half-open like Python's range.
    assert [r.varying for r in runs[:3]] == [
        {"image": "sample:cat", "target": "ostrich", "seed": 0},
        {"image": "sample:cat", "target": "ostrich", "seed": 2},
        {"image": "sample:cat", "target": 7, "seed": 0},
    ]
    assert runs[-1].varying == {"image": "sample:coffee", "target": "goldfish", "seed": 2}
    first = runs[0].params
    assert first["eps"] == pytest.approx(4 / 255)  # fractions are normalised to floats
    assert first["method"] == "pgd" and first["norm"] == "linf"  # fixed, then defaults
    assert first["steps"] is None  # not set: the method's own default applies at run time
    assert len({r.id for r in runs}) == len(runs)
    assert runs[0].describe() == "perturb image=sample:cat target=ostrich seed=0"


def test_run_ids_are_stable_across_processes_and_depend_only_on_resolved_params():
    params = TASKS["perturb"].params
    defaults = {k: p.default for k, p in params.items()}
    a = {**defaults, "image": "sample:cat", "target": "ostrich", "steps": 3}
    # Golden: the id must not change between releases, processes or machines.
    assert run_id("perturb", a) == "e559d10fdeaf"
    code = (
        "import json,sys; from fooltools.experiments import run_id;"
        "print(run_id('perturb', json.loads(sys.argv[1])))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dict(reversed(list(a.items()))))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == run_id("perturb", a)
    # Writing a default explicitly is the same run; any other value is another run.
    spec = {"kind": "perturb", "fixed": {"image": "sample:cat", "target": "ostrich", "steps": 3}}
    explicit = {**spec, "fixed": {**spec["fixed"], "method": "pgd", "seed": 0}}
    assert parse_spec(spec, name="x").runs()[0].id == parse_spec(explicit, name="y").runs()[0].id
    assert run_id("perturb", {**a, "steps": 4}) != run_id("perturb", a)
    assert run_id("evolve", a) != run_id("perturb", a)
    assert run_id("perturb", {**a, "model": None}) == run_id("perturb", a)  # unset: omitted


def _old_ids(spec):
    """The ids every grid point had before identical points became one run."""
    defaults = {k: p.default for k, p in TASKS[spec.kind].params.items()}
    keys = list(spec.grid)
    return [
        run_id(spec.kind, {**defaults, **spec.fixed, **dict(zip(keys, values, strict=True))})
        for values in itertools.product(*spec.grid.values())
    ]


@pytest.mark.parametrize(
    ("kind", "fixed", "grid", "labels"),
    [
        (  # a target is mislabel's alone: the other modes are one run each
            "detect-attack",
            {"image": "synthetic:0"},
            {"mode": ["vanish", "untargeted", "mislabel"], "target": ["star", "circle", 3]},
            ["mode=vanish", "mode=untargeted", "mode=mislabel target=star",
             "mode=mislabel target=circle"],
        ),
        (  # cw takes no budget
            "perturb",
            {"image": "sample:cat", "target": "ostrich"},
            {"method": ["pgd", "cw"], "eps": ["4/255", "8/255"]},
            ["method=pgd eps=0.01568627450980392", "method=pgd eps=0.03137254901960784",
             "method=cw"],
        ),
        ("perturb", {"image": "sample:cat"}, {"target": ["ostrich", "Ostrich", 9]},
         ["target=ostrich"]),
        (  # only pgd's random start draws from the seed, only dag's labels
            "perturb",
            {"image": "sample:cat", "target": "ostrich"},
            {"method": ["pgd", "cw"], "seed": [0, 1]},
            ["method=pgd seed=0", "method=pgd seed=1", "method=cw"],
        ),
        ("detect-attack", {"image": "synthetic:0"}, {"mode": ["vanish", "dag"], "seed": [0, 1]},
         ["mode=vanish", "mode=dag seed=0", "mode=dag seed=1"]),
        ("evolve", {"class": "robin"}, {"stop_at": [1, 1.0]}, ["stop_at=1"]),
        ("evolve", {"stop_at": 0.5}, {"class": ["robin", "American robin", 15]}, ["class=robin"]),
        ("map-elites", {}, {"classes": [["robin", "ostrich"], "robin,ostrich", [15, "9"]]},
         ["classes=['robin', 'ostrich']"]),
        ("map-elites", {}, {"classes": ["all", "ALL", [" All "]]}, ["classes=all"]),
    ],
)  # fmt: skip
def test_grid_points_that_are_the_same_run_are_one_run(tmp_path, kind, fixed, grid, labels):
    spec = parse_spec({"kind": kind, "fixed": fixed, "grid": grid}, name="t")
    runs = spec.runs()
    assert [r.describe() for r in runs] == [f"{kind} {label}" for label in labels]
    # Each has the id its first point always had; every point is one run's, in grid order.
    old = _old_ids(spec)
    assert sorted(i for r in runs for i in r.points) == sorted(old)
    assert all(list(r.points) == sorted(r.points, key=old.index) for r in runs)
    assert [r.id for r in runs] == sorted((r.points[0] for r in runs), key=old.index)
    assert all(run_id(kind, r.params) == r.id for r in runs)
    # The batch records each run once, so the summary counts it once.
    out = run_batch(spec, tmp_path / "b", executor=_NoOp(), echo=lambda line: None)
    batch = json.loads((out / "batch.json").read_text())
    assert [r["id"] for r in batch["runs"]] == [r.id for r in runs]
    assert [r["status"] for r in load_results(out)] == ["unfinished"] * len(runs)


def _record(out, kind, points):
    """batch.json as a batch of these points' params recorded it before they became one run."""
    runs = [{"id": run_id(kind, p), "dir": f"runs/{run_id(kind, p)}", "params": p, "varying": {}}
            for p in points]  # fmt: skip
    record = {"name": "t", "kind": kind, "grid": [], "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.json").write_text(json.dumps(record))
    return [r["id"] for r in runs]


def _finish(out, rid):
    write_result(out / "runs" / rid, {"id": rid, "status": "ok", "metrics": {}})


def test_a_resumed_batch_keeps_the_runs_it_recorded(tmp_path):
    defaults = {k: p.default for k, p in TASKS["detect-attack"].params.items()}
    base = {**defaults, "image": "synthetic:0"}
    # Two vanish runs, one finished: resumed, that one is the vanish run, and is done.
    out = tmp_path / "dup"
    points = [{**base, "mode": m, "target": t} for m in ("vanish", "mislabel") for t in ("star", 1)]
    ids = _record(out, "detect-attack", points)
    _finish(out, ids[1])
    spec = parse_spec(
        {"kind": "detect-attack", "fixed": {"image": "synthetic:0"},
         "grid": {"mode": ["vanish", "mislabel"], "target": ["star", 1]}}, name="t",
    )  # fmt: skip
    executor = _NoOp()
    run_batch(spec, out, executor=executor, resume=True, echo=lambda line: None)
    assert [r["id"] for r in json.loads((out / "batch.json").read_text())["runs"]] == ids[1:]
    assert [job.run.id for job in executor.jobs] == ids[2:]
    # A target fixed over vanish alone, which a spec may no longer set: the spec without
    # it is the same run, in the same directory.
    out = tmp_path / "fixed"
    (rid,) = _record(out, "detect-attack", [{**base, "mode": "vanish", "target": "star"}])
    _finish(out, rid)
    spec = parse_spec(
        {"kind": "detect-attack", "fixed": {"image": "synthetic:0", "mode": "vanish"}}, name="t"
    )
    run_batch(spec, out, executor=executor, resume=True, echo=lambda line: None)
    assert [r["id"] for r in json.loads((out / "batch.json").read_text())["runs"]] == [rid]
    assert executor.jobs == []


@pytest.mark.parametrize(
    ("kind", "fixed", "spelled"),
    [
        ("detect-attack", {"image": "synthetic:0", "mode": "vanish"},
         {"norm": "linf", "eps": "8/255", "step_size": "2/255", "steps": 10}),
        ("detect-attack", {"image": "synthetic:0", "mode": "vanish", "norm": "l2"},
         {"eps": 3, "step_size": 0.75}),
        ("perturb", {"image": "sample:cat", "target": "ostrich"}, {"eps": "8/255", "steps": 40}),
        ("perturb", {"image": "sample:cat", "untargeted": True},
         {"model": "efficientnet_lite0.in1k", "norm": "linf"}),
        # The evolve defaults have no spec default (the CLI's depend on the search).
        ("evolve", {"class": "robin"},
         {"strategy": "es", "generations": 1000, "population": 100, "crops": 1,
          "model": "efficientnet_lite0.in1k"}),
        ("evolve", {"class": "robin", "encoding": "direct"}, {"strategy": "ga"}),
        ("map-elites", {"classes": "robin,ostrich"},
         {"generations": 5000, "population": 400, "crops": 1}),
    ],
)  # fmt: skip
def test_a_spec_spelling_out_the_defaults_resumes_its_batch(tmp_path, kind, fixed, spelled):
    # It held runs the spec "does not have" (the same runs, their defaults named): refused.
    spec = parse_spec({"kind": kind, "fixed": fixed}, name="t")
    out = run_batch(spec, tmp_path / "b", executor=_NoOp(), echo=lambda line: None)
    (rid,) = [r.id for r in spec.runs()]
    _finish(out, rid)
    executor = _NoOp()
    again = parse_spec({"kind": kind, "fixed": {**fixed, **spelled}}, name="t")
    run_batch(again, out, executor=executor, resume=True, echo=lambda line: None)
    assert [r["id"] for r in json.loads((out / "batch.json").read_text())["runs"]] == [rid]
    assert executor.jobs == []


def test_grids_without_such_points_keep_their_ids():
    # Existing batches must resume onto the same directories.
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        spec = load_spec(path)
        assert [r.id for r in spec.runs()] == _old_ids(spec), path.name
    assert len(load_spec(ROOT / "experiments" / "tog-detectors.toml").runs()) == 500


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"kind": "perturb", "gird": {}}, "unknown key 'gird'; did you mean 'grid'?"),
        ({"fixed": {}}, "kind: missing"),
        ({"kind": 1}, "kind: expected a string, got 1; set kind to one of perturb"),
        ({"kind": "perturbb"}, "kind: unknown kind 'perturbb'; did you mean 'perturb'?"),
        ({"kind": "perturb", "fixed": {"image": "a", "stpes": 3}}, "fixed.stpes: not a parameter"),
        ({"kind": "perturb", "fixed": {"target": "x"}}, "missing parameter 'image'"),
        ({"kind": "perturb", "fixed": {"image": "a", "steps": "3"}}, "fixed.steps: expected an"),
        ({"kind": "perturb", "fixed": {"image": "a", "steps": True}}, "fixed.steps: expected an"),
        ({"kind": "perturb", "fixed": {"image": "a", "eps": "8/0"}}, "fixed.eps: it must be"),
        ({"kind": "perturb", "fixed": {"image": "a", "eps": "inf"}}, "fixed.eps: it must be a"),
        (
            {
                "kind": "detect-attack",
                "fixed": {"image": "a", "mode": "vanish"},
                "grid": {"norm": ["l2"], "step_size": ["1/4", "1e400"]},
            },
            "grid.step_size[1]: it must be a number",
        ),
        (
            {"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish", "eps": 3}},
            "detect-attack: an L-inf eps is at most 1 (pixel values are in [0, 1]), got 3",
        ),
        (
            {"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish", "norm": "l1"}},
            "fixed.norm: unknown norm 'l1'",
        ),
        (
            {
                "kind": "detect-attack",
                "fixed": {"image": "a", "target": 5},
                "grid": {"mode": ["vanish", "mislabel"]},
            },
            "detect-attack mode=mislabel: target 5: the bundled detectors' classes are 0-4",
        ),
        (
            {
                "kind": "detect-attack",
                "fixed": {"image": "a", "mode": "mislabel"},
                "grid": {"target": ["star", -1]},
            },
            "detect-attack target=-1: target -1: a class index is >= 0",
        ),
        (
            {"kind": "perturb", "fixed": {"image": "a"}, "grid": {"steps": 3}},
            "grid.steps: expected",
        ),
        (
            {"kind": "perturb", "fixed": {"image": "a"}, "grid": {"steps": []}},
            "grid.steps: expected",
        ),
        ({"kind": "perturb", "grid": {"image": ["a", 2]}}, "grid.image[1]: expected a string"),
        ({"kind": "perturb", "grid": {"image": ["a", "a"]}}, "grid.image: duplicate values"),
        ({"kind": "perturb", "grid": {"image": ["a"], "seed": {"start": 0}}}, "grid.seed: a range"),
        (
            {"kind": "perturb", "fixed": {"image": "a"}, "grid": {"image": ["b"]}},
            "grid.image: also",
        ),
        ({"kind": "perturb", "fixed": {"image": "a"}, "resources": {"gpu": 1}}, "resources.gpu"),
        ({"kind": "perturb", "fixed": {"image": "a"}, "resources": {"cpus": -1}}, "resources.cpus"),
        (
            {"kind": "perturb", "fixed": {"image": "a"}, "resources": {"gpus": float("nan")}},
            "resources.gpus: expected a finite number >= 0, got nan",
        ),
        (
            {"kind": "perturb", "fixed": {"image": "a"}, "resources": {"cpus": float("inf")}},
            "resources.cpus: expected a finite number >= 0, got inf",
        ),
        ({"kind": "evolve", "fixed": {"class": "robin", "encoding": "pixels"}}, "fixed.encoding"),
        ({"kind": "perturb", "fixed": 3}, "fixed must be a table"),
        ({"kind": "perturb", "name": "..", "fixed": {"image": "a"}}, "name: expected a non-empty"),
        ({"kind": "perturb", "name": "a/b", "fixed": {"image": "a"}}, "name: expected a non-"),
        ({"kind": "perturb", "name": "a\0b", "fixed": {"image": "a"}}, "name: expected a non-"),
        # Refused before expanding: the range alone was 4 billion values, out of memory.
        (
            {
                "kind": "perturb",
                "fixed": {"image": "a"},
                "grid": {"seed": {"start": 0, "stop": 2**32}},
            },
            "grid.seed: a range of 4294967296 values; a grid has at most 1000000 points",
        ),
        (
            {
                "kind": "perturb",
                "fixed": {"image": "a"},
                "grid": {"seed": {"start": 0, "stop": 1001}, "steps": {"start": 1, "stop": 1001}},
            },
            "grid: 1001 x 1000 = 1001000 points; at most 1000000",
        ),
        (
            {"kind": "evolve", "fixed": {"class": "robin", "checkpoint_every": 0}},
            "fixed.checkpoint_every: expected an integer >= 1, got 0",
        ),
        (
            {"kind": "map-elites", "grid": {"checkpoint_every": [5, -1]}},
            "grid.checkpoint_every[1]: expected an integer >= 1, got -1",
        ),
        (
            {"kind": "perturb", "grid": {"image": ["a"], "seed": [0, 2**32]}},
            "grid.seed[1]: a seed is an integer in 0..4294967295, got 4294967296",
        ),
        (
            {"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish", "seed": -1}},
            "fixed.seed: a seed is an integer in 0..4294967295, got -1",
        ),
        (
            {"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish", "confidence": 70}},
            "fixed.confidence: a detection score threshold is in [0, 1], got 70",
        ),
        # Checked as the spec loads: "PGD" with an eps read "eps: no run of this spec takes
        # it", and without one every run failed.
        (
            {"kind": "perturb", "fixed": {"image": "a", "method": "PGD", "eps": "4/255"}},
            "fixed.method: unknown method 'PGD'; choose from pgd, fgsm,",
        ),
        # Set, but taken by no run: refused, as the command line refuses it.
        (
            {"kind": "perturb", "fixed": {"image": "a", "method": "cw", "eps": 0.1}},
            "fixed.eps: no run of this spec takes it (eps is for methods pgd and fgsm)",
        ),
        (
            {
                "kind": "detect-attack",
                "fixed": {"image": "a", "mode": "vanish", "detector": "faster-rcnn", "cfg": "y"},
            },
            "fixed.cfg: no run of this spec takes it (cfg is for detector yolo)",
        ),
        (
            {
                "kind": "detect-attack",
                "fixed": {"image": "a", "target": "star"},
                "grid": {"mode": ["vanish", "dag"]},
            },
            "fixed.target: no run of this spec takes it (target is for mode mislabel)",
        ),
        # Runs over seeds of a method or mode that draws no random numbers were one run.
        (
            {"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish"},
             "grid": {"seed": [0, 1]}},
            "grid.seed: no run of this spec takes it (seed is for mode dag)",
        ),
        (
            {"kind": "perturb", "fixed": {"image": "a", "method": "cw", "seed": 3}},
            "fixed.seed: no run of this spec takes it",
        ),
        # Wrong on any machine, so refused as the spec loads: each run refused them only
        # when it started (a batch of hours failing run by run), in the CLI's words.
        ({"kind": "evolve", "fixed": {"class": "robin"}, "grid": {"population": [10, 1]}},
         "grid.population[1]: expected an integer in 2..2147483647, got 1"),
        ({"kind": "map-elites", "fixed": {"generations": 0}},
         "fixed.generations: expected an integer in 1..2147483647, got 0"),
        ({"kind": "evolve", "fixed": {"class": "robin", "stop_at": 1.5}},
         "fixed.stop_at: a stop is a confidence in [0, 1], got 1.5"),
        ({"kind": "evolve", "fixed": {"class": "robin", "crops": 3}},
         "fixed.crops: it must be 1 (the model's own view), 5 (corners and centre) or 10"),
        ({"kind": "evolve", "fixed": {"class": "robin", "model": "efficientnet_lite9"}},
         "fixed.model: unknown model 'efficientnet_lite9'; did you mean"),
        ({"kind": "evolve", "grid": {"class": ["robin", "robn"]}},
         'evolve class=robn: unknown class "robn"; did you mean: robin (15)'),
        ({"kind": "evolve", "fixed": {"class": "robin", "population": 101}},
         'evolve: strategy "es" samples mirrored pairs: population must be even, got 101'),
        ({"kind": "evolve", "fixed": {"class": "robin", "encoding": "direct", "strategy": "es"}},
         'evolve: strategy "es" evolves one CPPN: use it with encoding "cppn"'),
        ({"kind": "map-elites", "fixed": {"classes": "all,robin"}},
         "map-elites: classes all stands alone (every class)"),
        ({"kind": "map-elites", "fixed": {"classes": [" ", ""]}}, "map-elites: classes is empty"),
        ({"kind": "map-elites", "fixed": {"classes": ["robin", 1000]}},
         "map-elites: class index 1000 is out of range; valid indices are 0..999"),
        ({"kind": "perturb", "fixed": {"image": "a", "target": 9}, "grid": {"steps": [5, -5]}},
         "perturb steps=-5: steps must be >= 1, got -5"),
        ({"kind": "perturb", "fixed": {"image": "a", "untargeted": True, "eps": 2}},
         "perturb: eps must be in (0, 1] (pixel values are in [0, 1]), got 2"),
        ({"kind": "perturb", "fixed": {"image": "a", "target": "ostrch"}},
         'perturb: unknown class "ostrch"; did you mean: ostrich (9)'),
        ({"kind": "perturb", "fixed": {"image": "a"}},
         "perturb: give exactly one of target = CLASS or untargeted = true"),
        ({"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish", "steps": 0}},
         "detect-attack: steps must be in 1.."),
        ({"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish", "names": "x.names"}},
         "fixed.names: no run of this spec takes it (names is for your own weights)"),
        ({"kind": "detect-attack", "fixed": {"image": "a", "mode": "vanish", "cfg": "my.cfg"}},
         "detect-attack: the cfg my.cfg needs its Darknet weights: give both"),
        ({"kind": "detect-attack", "fixed": {"image": "a", "mode": "mislabel", "target": "stra"}},
         "detect-attack: unknown class 'stra' for the bundled detectors; classes: circle,"),
    ],
)  # fmt: skip
def test_spec_errors_are_one_line_and_name_the_key(doc, fragment):
    with pytest.raises(FoolError) as info:
        parse_spec(doc, name="bad", path=Path("bad.toml"))
    message = str(info.value)
    assert fragment in message
    assert message.startswith("bad.toml: ") and "\n" not in message


def test_spec_file_errors_through_the_cli(tmp_path, capsys):
    bad = write_spec(tmp_path / "bad.toml", 'kind = "perturb"\n[fixed]\nsteps = = 3\n')
    code, out, err = cli(capsys, "run", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: cannot read") and "line 3" in err
    code, _, err = cli(capsys, "run", str(tmp_path / "none.toml"))
    assert code == 2 and "no such spec file" in err
    code, _, err = cli(capsys, "results", str(tmp_path))
    assert code == 2 and "no batch in" in err and err.count("\n") == 1


def test_a_spec_with_a_byte_order_mark_reads(tmp_path):
    # As Windows editors save UTF-8: tomllib refused it, "Invalid statement (at line 1".
    text = SMOKE["perturb-smoke"].read_text(encoding="utf-8")
    (tmp_path / "bom.toml").write_text("\ufeff" + text, encoding="utf-8")
    spec = load_spec(tmp_path / "bom.toml")
    assert [r.id for r in spec.runs()] == [r.id for r in load_spec(SMOKE["perturb-smoke"]).runs()]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[fixed]\nimage = "a"\nkind = "perturb"\n', "fixed.kind: kind is a top-level key"),
        ('kind = "perturb"\n[grid]\nimage = ["a"]\nname = "x"\n', "grid.name: name is a top-"),
        ('kind = "perturb"\n[fixed]\nimage = "a"\n[resources]\ncpus = 1\nname = "x"\n',
         "resources.name: name is a top-level key"),
    ],
)  # fmt: skip
def test_a_top_level_key_written_below_a_table_says_so(tmp_path, capsys, text, fragment):
    # TOML reads it as the table's: "kind: missing" for a spec that sets kind, and "not a
    # parameter of perturb" for its name.
    spec = write_spec(tmp_path / "late.toml", text)
    code, _, err = cli(capsys, "run", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, fragment, "write it above the first [table]")
    assert not (tmp_path / "o").exists()


def test_a_resume_never_writes_outside_the_batch_for_an_id_edited_by_hand(tmp_path, toy_kinds):
    # The run directory was out / "runs" / <recorded id>: "../../escaped" wrote the run
    # (and deleted any result.json) outside the batch, and kept the id in batch.json.
    spec = parse_spec({"kind": "square", "grid": {"x": [1]}}, name="t")
    out = run_batch(spec, tmp_path / "b", executor=_NoOp(), echo=lambda line: None)
    record = json.loads((out / "batch.json").read_text())
    (rid,) = [r["id"] for r in record["runs"]]
    for bad in ("../../escaped", str(tmp_path / "abs")):
        record["runs"][0].update(id=bad, dir=f"runs/{bad}")
        (out / "batch.json").write_text(json.dumps(record))
        run_batch(spec, out, resume=True, echo=lambda line: None)
        assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs").exists()
        assert [r["id"] for r in json.loads((out / "batch.json").read_text())["runs"]] == [rid]
        assert read_result(out / "runs" / rid)["status"] == "ok"


@pytest.mark.parametrize(
    ("batch", "result", "fragment"),
    [
        ({}, None, "batch.json is not a batch record: name is missing"),
        ([1], None, "batch.json is not a batch record: not a JSON object"),
        ({"name": "t", "kind": "square", "grid": ["x"], "runs": [1]}, None, "runs[0] is not a run"),
        # Read from out / dir: "../" (or an absolute dir) was outside the batch.
        (
            {
                "name": "t",
                "kind": "square",
                "grid": ["x"],
                "runs": [{"id": "../../x", "dir": "runs/../../x", "params": {}, "varying": {}}],
            },
            None,
            "runs[0] is not a run of this batch (id '../../x', dir 'runs/../../x')",
        ),
        (None, {"status": "ok", "metrics": [1]}, "is not a run's result (metrics is not an"),
        (None, {"status": "ok", "metrics": {"confidence": "high"}}, "(confidence is not a number"),
        (None, {"status": "done", "metrics": {}}, "(status is not ok or failed)"),
    ],
)
def test_results_of_a_batch_edited_by_hand_are_one_line(
    capsys, tmp_path, toy_kinds, batch, result, fragment
):
    out = run_batch(parse_spec({"kind": "square", "grid": {"x": [1]}}, name="t"), tmp_path / "b",
                    echo=lambda line: None)  # fmt: skip
    if batch is not None:
        (out / "batch.json").write_text(json.dumps(batch))
    if result is not None:
        (next((out / "runs").iterdir()) / "result.json").write_text(json.dumps(result))
    code, _, err = cli(capsys, "results", str(out))
    assert_one_line_error(code, err, fragment)
    if result is not None:  # nor is it taken for finished, nor run over
        before = (out / "batch.json").read_bytes()
        spec = write_spec(tmp_path / "t.toml", 'kind = "square"\n[grid]\nx = [1]\n')
        code, _, err = cli(capsys, "run", str(spec), "--resume", "--out", str(out))
        assert_one_line_error(code, err, fragment, "delete it to run it again")
        assert (out / "batch.json").read_bytes() == before


@pytest.mark.parametrize(
    ("broken", "missing"),
    # With no report at all, the batch is taken for a kind that writes none: no gallery.
    [([2], "adversarial.png"), ([1, 2], "adversarial.png"), ([2], "report.json")],
)
def test_results_skip_and_list_a_run_whose_image_is_missing(
    capsys, tmp_path, toy_kinds, broken, missing
):
    # One run's adversarial.png deleted stopped `fool results` with no gallery or summary;
    # one whose report.json was deleted vanished from the gallery without a word.
    from fooltools.io import write_png

    out = run_batch(parse_spec({"kind": "square", "grid": {"x": [1, 2]}}, name="t"),
                    tmp_path / "b", echo=lambda line: None)  # fmt: skip
    dirs = {r["x"]: Path(r["dir"]) for r in load_results(out)}
    for x, run_dir in dirs.items():
        report = {"title": f"square {x}", "images": [{"file": "adversarial.png"}]}
        (run_dir / "report.json").write_text(json.dumps(report))
        write_png(run_dir / "adversarial.png", np.zeros((4, 4, 3), np.float32))
        if x in broken:
            (run_dir / missing).unlink()
    code, text, err = cli(capsys, "results", str(out))
    assert code == 0, err
    assert "2 runs: 2 ok, 0 failed" in text  # the summary
    listed = [line for line in text.splitlines() if line.startswith("not in the gallery: ")]
    assert len(listed) == len(broken)
    why = "file not found" if missing == "adversarial.png" else "no report.json in"
    assert all(missing in line and why in line for line in listed)
    page = (out / "gallery" / "index.html").read_text()
    assert page.count('<article class="card">') == 2 - len(broken)
    assert page.count('class="skipped"') == len(broken)
    assert {1: "t: 1 run<", 0: "t: 0 runs<"}[2 - len(broken)] in page
    assert (out / "gallery" / "contact_sheet.png").is_file()


def test_the_results_command_fool_run_suggests_can_be_pasted(
    capsys, tmp_path, toy_kinds, monkeypatch
):
    # A batch named "eps sweep" goes to runs/eps sweep: the hint was two arguments.
    spec = write_spec(
        tmp_path / "sq.toml", 'kind = "square"\nname = "eps sweep"\n[grid]\nx = [1]\n'
    )
    monkeypatch.chdir(tmp_path)
    code, text, err = cli(capsys, "run", str(spec))
    assert code == 0, err
    (hint,) = re.findall(r"`fool (results .*)` adds the gallery", text)
    code, text, err = cli(capsys, *shlex.split(hint), "--no-gallery")
    assert code == 0 and "1 run: 1 ok" in text, err


def test_results_of_a_run_directory_name_its_batch(capsys, tmp_path, toy_kinds):
    # The advice was to run a batch into the run directory: `fool run SPEC --out DIR`.
    out = run_batch(parse_spec({"kind": "square", "grid": {"x": [1]}}, name="t"),
                    tmp_path / "b", echo=lambda line: None)  # fmt: skip
    for inside in (out / "runs", Path(load_results(out)[0]["dir"])):
        code, _, err = cli(capsys, "results", str(inside))
        assert_one_line_error(code, err, f"it is inside the batch in {out}: `fool results {out}`")


def test_the_results_gallery_shows_runs_in_grid_order(capsys, tmp_path, toy_kinds):
    # The gallery sorted the runs' directories, named by hashed ids: an eps or seed sweep
    # came out shuffled, its cards in another order than the table's rows.
    from fooltools.io import write_png

    out = run_batch(parse_spec({"kind": "square", "grid": {"x": [1, 2, 3, 4]}}, name="t"),
                    tmp_path / "b", echo=lambda line: None)  # fmt: skip
    rows = load_results(out)
    assert sorted(r["id"] for r in rows) != [r["id"] for r in rows]  # hash order differs
    for row in rows:
        write_png(Path(row["dir"]) / "a.png", np.zeros((4, 4, 3), np.float32))
        report = {"title": f"square {row['x']}", "images": [{"file": "a.png"}]}
        (Path(row["dir"]) / "report.json").write_text(json.dumps(report))
    code, _, err = cli(capsys, "results", str(out))
    assert code == 0, err
    page = (out / "gallery" / "index.html").read_text()
    titles = [int(x) for x in re.findall(r'index.html">square (\d)</a>', page)]
    assert titles == [1, 2, 3, 4]


def test_the_results_gallery_says_each_runs_grid_values(capsys, tmp_path, toy_kinds):
    # A seed sweep's runs have one title: its cards were alike, no telling which was which.
    from fooltools.io import write_png

    out = run_batch(parse_spec({"kind": "square", "grid": {"x": [1, 2]}}, name="t"),
                    tmp_path / "b", echo=lambda line: None)  # fmt: skip
    for row in load_results(out):
        write_png(Path(row["dir"]) / "a.png", np.zeros((4, 4, 3), np.float32))
        report = {"title": "square <&>", "images": [{"file": "a.png"}]}
        (Path(row["dir"]) / "report.json").write_text(json.dumps(report))
    code, _, err = cli(capsys, "results", str(out))
    assert code == 0, err
    cards = (out / "gallery" / "index.html").read_text().split('<article class="card">')[1:]
    assert ['<p class="kind">x=1</p>' in card for card in cards] == [True, False]
    assert ['<p class="kind">x=2</p>' in card for card in cards] == [False, True]


def test_an_out_that_cannot_be_made_is_one_line(capsys, tmp_path, toy_kinds, monkeypatch):
    # A name too long for the file system, as --out or as the spec's default runs/<name>:
    # checking it for a batch raised OSError, a traceback.
    spec = write_spec(tmp_path / "sq.toml", 'kind = "square"\n[grid]\nx = [1]\n')
    code, _, err = cli(capsys, "run", str(spec), "--out", str(tmp_path / ("b" * 300)))
    assert_one_line_error(code, err, "cannot create directory", "File name too long")
    long = write_spec(tmp_path / "long.toml", f'name = "{"c" * 300}"\n' + spec.read_text())
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "run", str(long))
    assert_one_line_error(code, err, "cannot create directory runs/ccc", "File name too long")
    # A file named runs where the run directories go: each run's mkdir was a traceback,
    # after batch.json was written (the next plain `fool run` then refused the batch).
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "runs").write_text("a file")
    code, _, err = cli(capsys, "run", str(spec), "--out", str(tmp_path / "q"))
    assert_one_line_error(code, err, f"cannot create directory {tmp_path / 'q' / 'runs'}")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["runs"]


def test_resolved_spec_reads_back_to_the_same_runs(tmp_path):
    spec = load_spec(SMOKE["perturb-smoke"])
    out = run_batch(spec, tmp_path / "b", executor=_NoOp(), echo=lambda line: None)
    again = load_spec(out / "spec.resolved.toml")
    assert [r.id for r in again.runs()] == [r.id for r in spec.runs()]
    assert again.name == spec.name and again.grid == spec.grid
    batch = json.loads((out / "batch.json").read_text())
    assert [r["id"] for r in batch["runs"]] == [r.id for r in spec.runs()]


def test_resolved_spec_reads_back_with_any_characters(tmp_path):
    # A character past U+FFFF was written as a surrogate pair, which TOML refuses.
    text = 'cats \U0001f600 caf\u00e9 "q" \\ \t\n\x7f\x85'
    fixed = {"image": text, "untargeted": True}
    spec = parse_spec({"kind": "perturb", "name": text, "fixed": fixed}, name="t")
    out = run_batch(spec, tmp_path / "b", executor=_NoOp(), echo=lambda line: None)
    again = load_spec(out / "spec.resolved.toml")
    assert again.name == text and again.fixed["image"] == text
    assert [r.id for r in again.runs()] == [r.id for r in spec.runs()]


class _NoOp:
    """An executor that runs nothing (for tests of the batch bookkeeping alone)."""

    name = "noop"

    def execute(self, jobs, *, base_dir, resources, done):
        self.jobs, self.base_dir = list(jobs), base_dir


def test_a_resume_reads_relative_paths_where_the_batch_started(tmp_path, monkeypatch):
    # Resumed from another directory, a spec's relative image path named another file
    # under the same run id.
    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    started.mkdir(), elsewhere.mkdir()
    spec = parse_spec(
        {"kind": "perturb", "fixed": {"image": "photos/cat.png", "target": "ostrich"}}, name="t"
    )
    out, executor = tmp_path / "batch", _NoOp()
    monkeypatch.chdir(started)
    run_batch(spec, out, executor=executor, echo=lambda line: None)
    monkeypatch.chdir(elsewhere)
    run_batch(spec, out, executor=executor, resume=True, echo=lambda line: None)
    assert executor.base_dir == str(started)
    assert json.loads((out / "batch.json").read_text())["base_dir"] == str(started)
    started.rmdir()  # gone: the runs' files cannot be found, so the resume is refused
    with pytest.raises(FoolError, match=f"was started in {started}, which is gone.*cat.png"):
        run_batch(spec, out, executor=executor, resume=True, echo=lambda line: None)


def test_a_run_recorded_before_its_kind_had_a_parameter_resumes_with_it_unset(tmp_path):
    # Evolve runs recorded before crops existed failed on resume: "KeyError: 'crops'".
    spec = load_spec(SMOKE["evolve-smoke"])
    out, executor = tmp_path / "batch", _NoOp()
    run_batch(spec, out, executor=executor, echo=lambda line: None)
    record = json.loads((out / "batch.json").read_text())
    for entry in record["runs"]:
        del entry["params"]["crops"]
    (out / "batch.json").write_text(json.dumps(record))
    run_batch(spec, out, executor=executor, resume=True, echo=lambda line: None)
    assert [job.run.id for job in executor.jobs] == [r.id for r in spec.runs()]
    for job in executor.jobs:
        assert "crops" in job.run.params and job.run.params["crops"] is None
        assert run_id("evolve", job.run.params) == job.run.id


@pytest.mark.parametrize("image", ["sample:cat", "/abs/cat.png", "~/cat.png"])
def test_a_batch_without_relative_paths_resumes_wherever_it_started(tmp_path, monkeypatch, image):
    # A batch of sample images copied to another machine was refused: "started in
    # /home/alice/proj, which is gone: its runs read relative paths there".
    started = tmp_path / "started"
    started.mkdir()
    spec = parse_spec({"kind": "perturb", "fixed": {"image": image, "target": "ostrich"}}, name="t")
    out, executor = tmp_path / "batch", _NoOp()
    monkeypatch.chdir(started)
    run_batch(spec, out, executor=executor, echo=lambda line: None)
    monkeypatch.chdir(tmp_path)
    started.rmdir()
    run_batch(spec, out, executor=executor, resume=True, echo=lambda line: None)
    assert len(executor.jobs) == 1


def test_executor_choice_errors(monkeypatch):
    with pytest.raises(FoolError, match="--address is for --executor ray"):
        get_executor("local", "127.0.0.1:6379")
    with pytest.raises(FoolError, match="unknown executor"):
        get_executor("slurm")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(FoolError, match=r"pip install 'fooltools\[ray\]'"):
        get_executor("ray")


def test_the_success_rate_leaves_out_runs_without_a_verdict():
    # A detector attack on an image without objects did nothing: not a success.
    rows = [
        {"status": "ok", "model": "m", "method": "vanish-linf", "class": "-", "success": s,
         "confidence": None, "linf": 1.0, "l2": 2.0, "seconds": 1.0}
        for s in (True, None, False, True)
    ]  # fmt: skip
    (row,) = summarize(rows)
    assert row["runs"] == "4" and row["success"] == "2/3 67%"
    (row,) = summarize(rows[1:2])
    assert row["success"] == "-"


def test_a_grid_over_a_budget_gives_a_summary_row_per_budget(tmp_path, monkeypatch):
    # One row per model/method/class merged the budgets an eps sweep compares.
    def budget(p, out):
        return {"model": "toy", "method": "m", "class": "c", "success": p["eps"] > 0.1}

    params = {"eps": Param((float,), splits=True), "seed": Param((int,), default=0)}
    monkeypatch.setitem(TASKS, "budget", TaskKind(budget, params))
    spec = parse_spec({"kind": "budget", "grid": {"eps": [0.05, 0.2], "seed": [0, 1]}}, name="b")
    out = run_batch(spec, tmp_path / "b", echo=lambda line: None)
    header, *lines = write_results(out, gallery=False)["summary"].splitlines()
    assert header.split()[:5] == ["model", "method", "class", "eps", "runs"]
    assert [line.split()[3:7] for line in lines[:2]] == [
        ["0.05", "2", "0/2", "0%"],
        ["0.2", "2", "2/2", "100%"],
    ]
    assert lines[2] == "4 runs: 4 ok, 0 failed"
    assert all(TASKS[kind].params["eps"].splits for kind in ("perturb", "detect-attack"))


def test_a_grid_over_map_elites_class_sets_gives_a_row_per_set():
    # Its class column counts the classes: two sets of two were one row, "2 classes".
    rows = [
        {"status": "ok", "model": "m", "method": "map-elites-cppn", "class": "2 classes",
         "classes": c, "success": s, "confidence": 0.5, "linf": None, "l2": None,
         "seconds": 1.0}
        for c, s in ((["robin", "ostrich"], True), (["school bus", "volcano"], False))
    ]  # fmt: skip
    table = summarize(rows, split_columns({"kind": "map-elites", "grid": ["classes"]}))
    assert [(r["classes"], r["success"]) for r in table] == [
        ('["robin", "ostrich"]', "1/1 100%"),
        ('["school bus", "volcano"]', "0/1 0%"),
    ]


def test_thresholds_alike_to_four_digits_are_rows_of_their_own():
    # Grouped by the value as shown to 4 digits: 0.99999 and 0.999995 were one row, "1".
    rows = [
        {"status": "ok", "model": "m", "method": "cppn-es", "class": "robin", "stop_at": t,
         "success": s, "confidence": 0.9, "linf": None, "l2": None, "seconds": 1.0}
        for t, s in ((0.99999, True), (0.999995, False), (0.99999, True))
    ]  # fmt: skip
    table = summarize(rows, split_columns({"kind": "evolve", "grid": ["stop_at"]}))
    assert [(r["stop_at"], r["runs"], r["success"]) for r in table] == [
        ("0.99999", "2", "2/2 100%"),
        ("0.999995", "1", "0/1 0%"),
    ]


@pytest.mark.parametrize("kind", ["perturb", "evolve", "map-elites", "detect-attack"])
def test_a_grid_over_weights_gives_a_summary_row_per_weights_file(kind):
    # A classifier's name is its architecture's, whatever its weights: standard and
    # adversarially trained weights were one row, "1/2 50%".
    batch = {"kind": kind, "grid": ["weights", "seed"]}
    rows = [
        {"status": "ok", "model": "m", "method": "pgd-linf", "class": "c", "weights": w,
         "seed": 0, "success": w == "standard.pth", "confidence": None, "linf": None,
         "l2": None, "seconds": None}
        for w in ("standard.pth", "robust.pth")
    ]  # fmt: skip
    table = summarize(rows, split_columns(batch))
    assert [(r["weights"], r["success"]) for r in table] == [
        ("standard.pth", "1/1 100%"),
        ("robust.pth", "0/1 0%"),
    ]


# --- run_one: results, atomicity, failure isolation -----------------------------------


@pytest.fixture
def toy_kinds(monkeypatch):
    """Two extra task kinds: adding one is a function plus a TASKS entry."""

    def square(p, out):
        if p["x"] < 0:
            raise FoolError(f"x must be >= 0, got {p['x']}")
        if p["x"] == 13:
            return {"confidence": 1 / 0}  # a bug in a task, not a user error
        (out / "report.json").write_text("{}")
        return {"model": "toy", "method": "square", "class": "c", "confidence": p["x"] ** 2}

    def interrupted(p, out):
        (out / "partial.png").write_bytes(b"half")
        if p["saved"]:  # as `fool evolve` stops at Ctrl-C: its state saved, a message
            raise Interrupted("interrupted after generation 3; state saved")
        raise KeyboardInterrupt

    def where(p, out):
        return {"class": p["file"]}

    monkeypatch.setitem(TASKS, "square", TaskKind(square, {"x": Param((int,), required=True)}))
    monkeypatch.setitem(TASKS, "where", TaskKind(where, {"file": Param((str,), path=True)}))
    monkeypatch.setitem(
        TASKS, "interrupted", TaskKind(interrupted, {"saved": Param((bool,), required=True)})
    )


def test_run_one_records_failures_instead_of_raising(tmp_path, toy_kinds):
    ok = run_one("square", {"x": 3}, tmp_path / "ok")
    assert ok["status"] == "ok" and ok["metrics"]["confidence"] == 9 and ok["pid"] == os.getpid()
    assert read_result(tmp_path / "ok") == ok
    bad = run_one("square", {"x": -1}, tmp_path / "bad")
    assert bad["status"] == "failed" and bad["error"] == "x must be >= 0, got -1"
    assert not (tmp_path / "bad" / "error.txt").exists()  # a user error needs no traceback
    bug = run_one("square", {"x": 13}, tmp_path / "bug")
    assert bug["error"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in (tmp_path / "bug" / "error.txt").read_text()
    assert read_result(tmp_path / "bug")["status"] == "failed"


@pytest.mark.parametrize("saved", [False, True])
def test_an_interrupted_run_leaves_no_result(tmp_path, toy_kinds, saved):
    # Not recorded as a failure that the batch goes past: the batch stops, and the run
    # is unfinished, so `fool run --resume` continues it (an evolution from its state).
    run_one("square", {"x": 2}, tmp_path / "r")  # a finished run, re-run and interrupted:
    with pytest.raises(Interrupted if saved else KeyboardInterrupt):
        run_one("interrupted", {"saved": saved}, tmp_path / "r")
    assert (tmp_path / "r" / "partial.png").exists()
    assert read_result(tmp_path / "r") is None  # unfinished, not "finished" with stale data


def test_resume_skips_ok_runs_and_reruns_failed_and_unfinished(tmp_path, toy_kinds):
    doc = {"kind": "square", "grid": {"x": [1, -2, 3]}}
    spec = parse_spec(doc, name="sq")
    lines = []
    out = run_batch(spec, tmp_path / "b", echo=lines.append)
    assert lines[0] == f"sq: 3 runs; running 3 on local -> {out}"
    assert lines[2].startswith("[2/3] square x=-2 ... failed") and "x must be >= 0" in lines[2]
    assert [r["status"] for r in load_results(out)] == ["ok", "failed", "ok"]
    with pytest.raises(FoolError, match="already holds a batch; pass --resume"):
        run_batch(spec, out, echo=lines.append)
    first, third = (out / "runs" / spec.runs()[i].id / "result.json" for i in (0, 2))
    third.unlink()  # as if killed before it finished
    stamp = first.stat().st_mtime_ns
    lines.clear()
    run_batch(spec, out, resume=True, echo=lines.append)
    assert lines[0] == f"sq: 3 runs, 1 finished before; running 2 on local -> {out}"
    assert [line.split(" ...")[0] for line in lines[1:]] == [
        "[2/3] square x=-2",
        "[3/3] square x=3",
    ]
    assert first.stat().st_mtime_ns == stamp  # the finished run was not touched
    assert [r["status"] for r in load_results(out)] == ["ok", "failed", "ok"]
    assert [r["confidence"] for r in load_results(out)] == [1, None, 9]
    # Another kind's spec given by mistake: its record is not replaced, nor its runs mixed.
    before = (out / "batch.json").read_bytes()
    other = parse_spec({"kind": "where", "grid": {"file": ["a"]}}, name="wh")
    with pytest.raises(FoolError, match=r"holds a square batch and wh is where: resume it"):
        run_batch(other, out, resume=True, echo=lines.append)
    assert (out / "batch.json").read_bytes() == before


def test_resume_may_extend_the_grid_but_not_drop_runs(tmp_path, toy_kinds, capsys):
    spec = write_spec(tmp_path / "sq.toml", 'kind = "square"\n[grid]\nx = [1, 2]\n')
    out = tmp_path / "b"
    assert cli(capsys, "run", str(spec), "--out", str(out))[0] == 0
    before = (out / "batch.json").read_bytes()
    # Another spec of the same kind, or a grid cut short: its finished runs would vanish
    # from the record, and from `fool results`.
    other = write_spec(tmp_path / "other.toml", 'kind = "square"\n[grid]\nx = [2, 5]\n')
    code, _, err = cli(capsys, "run", str(other), "--resume", "--out", str(out))
    assert_one_line_error(code, err, "holds 1 run that other does not have", "another --out")
    assert (out / "batch.json").read_bytes() == before
    # Extended: the two finished runs are kept, the new one runs.
    write_spec(spec, 'kind = "square"\n[grid]\nx = [1, 2, 4]\n')
    code, stdout, err = cli(capsys, "run", str(spec), "--resume", "--out", str(out))
    assert code == 0, err
    assert "3 runs, 2 finished before; running 1" in stdout
    assert [r["confidence"] for r in load_results(out)] == [1, 4, 16]


# --- the smoke specs, end to end --------------------------------------------------------


def _run_smoke(capsys, name, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / f"local-{name}"
    code, stdout, err = cli(capsys, "run", str(SMOKE[name]), "--out", str(out))
    assert code == 0, err
    return out, stdout


def test_perturb_smoke_local(capsys, tmp_path_factory):
    out, stdout = _run_smoke(capsys, "perturb-smoke", tmp_path_factory)
    lines = stdout.splitlines()
    assert lines[0] == f"perturb-smoke: 2 runs; running 2 on local -> {out}"
    assert lines[1].startswith("[1/2] perturb seed=0 ... ok ")
    assert "2 runs: 2 ok, 0 failed" in stdout
    rows = table(out)
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["method"] for r in rows} == {"pgd-linf"}
    assert {float(r["linf"]) for r in rows} <= {7.0, 8.0}  # within the 8/255 budget
    cat = rows[0]  # 3 PGD steps are enough for this one pair (~95% ostrich)
    assert cat["success"] == "true" and cat["class"] == "ostrich" and float(cat["confidence"]) > 0.5
    for row in table(out, drop=()):
        run_dir = out / "runs" / row["id"]
        report = json.loads((run_dir / "report.json").read_text())
        assert report["steps"] == 3 and report["method"] == "pgd"
        # The run's time as its report and gallery card give it, not the attempt's.
        # (rounded to the table's 2 decimals: 0.485 is 0.48, the float below one half)
        assert float(row["seconds"]) == round(report["seconds"], 2)
        assert (run_dir / "adversarial.png").is_file()
        assert read_result(run_dir)["metrics"]["success"] == (row["success"] == "true")
    code, stdout, _ = cli(capsys, "results", str(out))
    assert code == 0
    header = stdout.splitlines()[0].split()
    assert header[:5] == ["model", "method", "class", "runs", "success"]
    assert any(
        line.split()[2] == "ostrich" and line.split()[3] == "2" for line in stdout.splitlines()
    )
    gallery = (out / "gallery" / "index.html").read_text()
    assert "2 runs" in gallery and (out / "gallery" / "contact_sheet.png").is_file()


def test_evolve_smoke_local(capsys, tmp_path_factory):
    out, stdout = _run_smoke(capsys, "evolve-smoke", tmp_path_factory)
    rows = table(out, drop=())
    assert [r["method"] for r in rows] == ["direct", "cppn-es"]
    assert {r["status"] for r in rows} == {"ok"} and {r["class"] for r in rows} == {"robin"}
    for row in rows:
        report = json.loads((out / "runs" / row["id"] / "report.json").read_text())
        assert report["population"] == 4 and report["generations_run"] == 2
        # The search's seconds, summed over resumes (the table had the last attempt's).
        # (rounded to the table's 2 decimals: 0.485 is 0.48, the float below one half)
        assert float(row["seconds"]) == round(report["seconds"], 2)
        assert float(row["confidence"]) == pytest.approx(report["best_confidence"], abs=1e-6)
        assert (out / "runs" / row["id"] / "best.png").is_file()


def test_map_elites_smoke_local(tmp_path):
    out = run_batch(load_spec(SMOKE["map-elites-smoke"]), tmp_path, echo=lambda line: None)
    (row,) = load_results(out)
    assert row["status"] == "ok", row["error"]
    assert row["method"] == "map-elites-cppn" and row["class"] == "3 classes"
    report = json.loads((Path(row["dir"]) / "report.json").read_text())
    assert report["filled"] == 3 and report["generations_run"] == 2
    assert row["success"] is False  # 3 cells at low confidence: not fooled at 99%
    assert row["confidence"] == pytest.approx(report["median_confidence"], abs=1e-6)
    assert row["seconds"] == round(report["seconds"], 2)  # the table's 2 decimals


def test_detect_smoke_local(capsys, tmp_path_factory):
    out, stdout = _run_smoke(capsys, "detect-smoke", tmp_path_factory)
    rows = table(out, drop=())
    assert [(r["model"].split()[0], r["method"]) for r in rows] == [
        ("yolo", "vanish-linf"),
        ("faster-rcnn", "vanish-linf"),
    ]
    assert {r["status"] for r in rows} == {"ok"}
    assert {float(r["linf"]) for r in rows} <= {3.0, 4.0}  # 2 steps of 2/255
    for row in rows:
        report = json.loads((out / "runs" / row["id"] / "report.json").read_text())
        assert report["attack"]["steps"] == 2 and report["kind"] == "detect-attack"
        assert float(row["seconds"]) == round(report["metrics"]["seconds"], 2)
        assert report["metrics"]["clean_objects"] >= 1
        assert (out / "runs" / row["id"] / "synthetic-0.png").is_file()


# The detector attacks below run detect-smoke.toml's 2 steps (its budget and image too).
DETECT_STEPS = 2


def run_grid(tmp_path, kind, fixed, grid):
    """Run each point of a spec in this process: (results, their report.json dicts)."""
    spec = parse_spec({"kind": kind, "fixed": fixed, "grid": grid}, name="t")
    results = [run_one(r.kind, r.params, tmp_path / r.id) for r in spec.runs()]
    assert [r["status"] for r in results] == ["ok"] * len(results), [r["error"] for r in results]
    return results, [json.loads((tmp_path / r["id"] / "report.json").read_text()) for r in results]


def test_a_target_fixed_over_detector_modes_is_mislabels_alone(tmp_path):
    # As in tog-detectors.toml: the other modes neither use nor report it.
    fixed = {"image": "synthetic:0", "detector": "yolo", "steps": DETECT_STEPS, "target": "star"}
    results, reports = run_grid(tmp_path, "detect-attack", fixed, {"mode": ["vanish", "mislabel"]})
    assert [r["metrics"]["class"] for r in results] == ["-", "star"]
    assert [rep["attack"]["target_class"] for rep in reports] == [None, 3]  # star


def test_detector_attacks_in_each_norm_are_methods_of_their_own(tmp_path):
    # Else the summary merged L-inf and L2 runs into one row, with medians of neither.
    fixed = {"image": "synthetic:0", "mode": "vanish", "steps": 1}
    results, reports = run_grid(tmp_path, "detect-attack", fixed, {"norm": ["linf", "l2"]})
    assert [r["metrics"]["method"] for r in results] == ["vanish-linf", "vanish-l2"]
    rows = [{"status": "ok", "seconds": 1, "confidence": None, **r["metrics"]} for r in results]
    assert [row["method"] for row in summarize(rows)] == ["vanish-linf", "vanish-l2"]
    # Each norm has its own default budget: L-inf's 8/255 read as an L2 radius did nothing.
    budgets = [(rep["attack"]["eps"], rep["attack"]["step_size"]) for rep in reports]
    assert budgets == [(pytest.approx(8 / 255), pytest.approx(2 / 255)), (3.0, 0.75)]
    assert results[1]["metrics"]["l2"] > 0.5 * 255  # one step of 0.75 (0-255 units)


def test_a_detector_run_its_detector_refuses_fails_in_one_line(tmp_path):
    # Only the loaded detector knows its classes: refused as the run starts, as the
    # command line refuses it, with no traceback in error.txt.
    defaults = {k: p.default for k, p in TASKS["detect-attack"].params.items()}
    net = {"cfg": str(ROOT / "tests/data/yolo/tiny_v3.cfg"),
           "weights": str(ROOT / "tests/data/yolo/tiny_v3.weights")}  # fmt: skip
    params = {**defaults, **net, "image": "synthetic:0", "mode": "mislabel", "target": 99}
    result = run_one("detect-attack", params, tmp_path)
    assert result["status"] == "failed"
    assert result["error"].startswith("class index 99 is out of range for yolo (tiny_v3.weights)")
    assert not (tmp_path / "error.txt").exists()


def test_a_cfg_fixed_over_detectors_is_yolos_alone(tmp_path):
    # Given to the Faster R-CNN too, it loaded the bundled weights without their settings
    # (classes "class0"..., threshold 0.5) under the bundled detector's name.
    from fooltools.detection.detectors import BUNDLED

    fixed = {"image": "synthetic:0", "mode": "vanish", "steps": DETECT_STEPS}
    fixed["cfg"] = str(BUNDLED["yolo"][0])
    _, reports = run_grid(tmp_path, "detect-attack", fixed, {"detector": ["yolo", "faster-rcnn"]})
    assert [rep["attack"]["confidence"] for rep in reports] == [0.7, 0.8]  # bundled: both
    for rep in reports:
        assert rep["clean_objects"] and {o["label"] for o in rep["clean_objects"]} == {"square"}


def test_a_budget_and_steps_fixed_over_perturb_methods_go_to_the_methods_that_take_them(
    tmp_path,
):
    # The cat photo already is an Egyptian cat (39%, tiger cat 32%): no attack runs, only
    # the config and report. The cat, not the coffee photo (an espresso): the perturb smoke
    # test compiled the model at the cat's size; the coffee's size compiled it again
    # (the test: 16 -> 8 s).
    fixed = {"image": "sample:cat", "target": "Egyptian cat", "eps": "4/255", "steps": 7}
    results, reports = run_grid(tmp_path, "perturb", fixed, {"method": ["pgd", "fgsm", "cw"]})
    assert [r["metrics"]["method"] for r in results] == ["pgd-linf", "fgsm-linf", "cw"]
    assert [(rep["norm"], rep["eps_255"]) for rep in reports] == [
        ("linf", pytest.approx(4)),
        ("linf", pytest.approx(4)),
        (None, None),  # C&W has no budget: its report claims none
    ]
    assert reports[2]["title"].endswith("(cw)")


def test_every_bundled_spec_is_valid():
    # The full-scale specs are too slow to run here; at least they must load.
    specs = sorted((ROOT / "experiments").glob("*.toml"))
    assert {p.stem for p in specs} >= set(SMOKE)
    for path in specs:
        assert load_spec(path).runs()
        assert path.read_text().startswith("#")  # the header: command, runtime, result


def test_failure_isolation(capsys, tmp_path):
    spec = write_spec(
        tmp_path / "iso.toml",
        'kind = "perturb"\n[fixed]\ntarget = "ostrich"\nsteps = 3\n'
        '[grid]\nimage = ["not-a-file-xyz.png", "sample:cat"]\n',
    )
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "run", str(spec), "--out", str(out))
    assert code == 1  # some run failed
    rows = table(out)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "not-a-file-xyz.png" in rows[0]["error"] and "\n" not in rows[0]["error"]
    assert (out / "runs" / rows[1]["id"] / "adversarial.png").is_file()  # the rest finished
    assert rows[1]["success"] == "true"
    failure = f"failed {rows[0]['id']} perturb image=not-a-file-xyz.png: {rows[0]['error']}"
    assert "2 runs: 1 ok, 1 failed" in stdout and failure in stdout
    code, stdout, _ = cli(capsys, "results", str(out))
    assert code == 0 and failure in stdout


def test_killed_batch_resumes_to_the_same_table(tmp_path, capsys, tmp_path_factory):
    # The perturb smoke spec (2 runs): its uninterrupted table is the one
    # test_perturb_smoke_local filled (a resume there runs nothing), where a spec of its
    # own ran both runs again in this process (the test: 33 -> 18 s).
    spec = SMOKE["perturb-smoke"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from fooltools.cli import main; main()", "run", str(spec)]
        + ["--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(killed.glob("runs/*/result.json")):
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    statuses = [r["status"] for r in load_results(killed)]
    assert statuses.count("ok") >= 1 and "unfinished" in statuses  # killed midway
    for path in killed.glob("runs/*/result.json"):  # every result present is whole
        assert json.loads(path.read_text())["status"] == "ok"
    done_before = statuses.count("ok")

    code, stdout, err = cli(capsys, "run", str(spec), "--out", str(killed), "--resume")
    assert code == 0, err
    assert f"2 runs, {done_before} finished before; running {2 - done_before}" in stdout
    resumed, whole = table(killed), table(_local("perturb-smoke", tmp_path_factory))
    assert resumed == whole and [r["status"] for r in whole] == ["ok"] * 2


def test_relative_paths_are_relative_to_the_batch_working_directory(
    tmp_path, toy_kinds, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(
        {"kind": "where", "grid": {"file": ["a.png", "sample:cat", "/x.png"]}}, name="w"
    )
    out = run_batch(spec, "b", echo=lambda line: None)
    rows = load_results(out)
    assert [r["class"] for r in rows] == [str(tmp_path / "a.png"), "sample:cat", "/x.png"]
    assert [r["file"] for r in rows] == ["a.png", "sample:cat", "/x.png"]  # ids: as written


def test_local_executor_runs_in_this_process(tmp_path, toy_kinds):
    seen = []
    spec = parse_spec({"kind": "square", "grid": {"x": [2, 5]}}, name="sq")
    run_batch(spec, tmp_path / "b", executor=LocalExecutor(), echo=seen.append)
    assert {r["pid"] for r in map(read_result, (tmp_path / "b" / "runs").iterdir())} == {
        os.getpid()
    }


# --- the Ray executor on a real local Ray instance (loopback, 2 CPUs, no dashboard) ---
# In this module so that the local smoke runs above are reused (and so that the two run
# on the same pytest-xdist worker).

# One smoke spec through Ray (the executor does not depend on the task kind; a perturb run
# goes through Ray in test_failures_are_isolated_on_ray too): the others cost ~45 s each.
RAY_SMOKE = ("evolve-smoke",)


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from tests
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def _comparable(out):
    """The results table without what legitimately differs between executors."""
    return [
        {k: v for k, v in row.items() if k not in ("seconds", "dir")} for row in load_results(out)
    ]


def _local(name, tmp_path_factory):
    # The directory the local smoke tests above fill: when they ran first, resume finds
    # every run finished and runs nothing. Its table written as `fool run` writes it (a
    # test run by itself found no results.csv there).
    out = tmp_path_factory.getbasetemp() / f"local-{name}"
    spec = load_spec(ROOT / "experiments" / f"{name}.toml")
    run_batch(spec, out, resume=True, echo=lambda line: None)
    write_results(out, gallery=False)
    return out


@pytest.mark.parametrize("name", RAY_SMOKE)
def test_smoke_spec_through_ray_equals_local(cluster, name, tmp_path, tmp_path_factory):
    spec = load_spec(ROOT / "experiments" / f"{name}.toml")
    lines = []
    out = run_batch(spec, tmp_path / "ray", executor=get_executor("ray"), echo=lines.append)
    n = len(spec.runs())
    assert lines[0] == f"{name}: {n} runs; running {n} on ray -> {out}"
    assert [line.split(" ")[0] for line in lines[1:]] == [f"[{k}/{n}]" for k in range(1, n + 1)]
    results = [read_result(out / "runs" / r.id) for r in spec.runs()]
    assert {r["status"] for r in results} == {"ok"}
    assert os.getpid() not in {r["pid"] for r in results}  # really ran in Ray workers
    assert _comparable(out) == _comparable(_local(name, tmp_path_factory))


def test_failures_are_isolated_on_ray(cluster, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a PNG")
    doc = {
        "kind": "perturb",
        "fixed": {"steps": 3, "target": "ostrich"},
        # Failures only a run finds (a spec's bad class or method is refused as it loads).
        "grid": {"image": ["sample:cat", "gone.png", str(corrupt)]},
    }
    out = run_batch(
        parse_spec(doc, name="iso"), tmp_path, executor=RayExecutor(), echo=lambda line: None
    )
    rows = load_results(out)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert "no such file" in rows[1]["error"] and "corrupt.png" in rows[2]["error"]
    assert rows[0]["success"] is True  # cat -> ostrich, as in the smoke spec


def test_a_run_whose_worker_dies_is_a_failed_run_and_the_batch_goes_on(
    cluster, tmp_path, monkeypatch
):
    # A worker killed mid-run (the OOM killer, a lost node) cannot write its result: the
    # driver records the run as failed and the batch finishes. Ray's retries are turned off
    # here (they would run the same kill again), and the task is a closure, which Ray
    # pickles by value, so the kill happens in the worker.
    from fooltools.experiments import executors

    real_task, real_options = executors._ray_task, RayExecutor.options

    def dying(kind, params, out_dir, base_dir):
        if params["target"] == "ostrich":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_task(kind, params, out_dir, base_dir)

    monkeypatch.setattr(executors, "_ray_task", dying)
    monkeypatch.setattr(RayExecutor, "options", lambda self, r: {**real_options(self, r),
                                                                 "max_retries": 0})  # fmt: skip
    doc = {"kind": "perturb", "fixed": {"image": "gone.png"},
           "grid": {"target": ["ostrich", "robin"]}}  # fmt: skip
    spec, lines = parse_spec(doc, name="lost"), []
    out = run_batch(spec, tmp_path, executor=RayExecutor(), echo=lines.append)
    rows = {r["target"]: r for r in load_results(out)}
    assert rows["ostrich"]["status"] == "failed", rows
    assert rows["ostrich"]["error"].startswith("worker lost: "), rows["ostrich"]["error"]
    assert "no such file" in rows["robin"]["error"]  # the other run ran as usual
    [echoed] = [line for line in lines if "target=ostrich" in line]
    assert re.search(r"\] perturb target=ostrich \.\.\. failed.*: worker lost: ", echoed), lines
    lost = next(r for r in spec.runs() if r.params["target"] == "ostrich")
    assert read_result(out / "runs" / lost.id)["status"] == "failed"  # written by the driver


def test_an_address_where_nothing_listens_is_refused(tmp_path, monkeypatch):
    # ray.init retried it for ever, deaf to Ctrl-C and SIGTERM.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        executor = get_executor("ray", address)
        monkeypatch.setattr(executor.ray, "is_initialized", lambda: False)
        monkeypatch.setattr(executor.ray, "init", lambda **kw: pytest.fail("ray.init called"))
        job = Job(Run("0" * 12, "perturb", {}, {}), tmp_path / "r")
        with pytest.raises(FoolError, match=rf"cannot reach Ray at {address}: .*refused"):
            executor.execute([job], base_dir=str(tmp_path), resources={}, done=print)
    check_reachable("127.0.0.1:\u00b2")  # no port (isdigit alone took it): left to Ray


def test_a_run_larger_than_every_node_is_refused_not_left_waiting(cluster, tmp_path, monkeypatch):
    # On a local instance (no autoscaler to add a node) a spec asking for a GPU on a machine
    # without one waited for ever, behind Ray's warnings.
    with pytest.raises(
        FoolError,
        match=r"^each run asks for 1 CPU and 1 GPU, but here has at mo"
        r"st 2 CPUs and 0 GPUs on a node: lower the spec's \[",
    ):
        check_fits(ray, {"num_cpus": 1.0, "num_gpus": 1.0}, "here")  # fmt: skip
    with pytest.raises(FoolError, match="asks for 3 CPUs and 0 GPUs"):
        check_fits(ray, {"num_cpus": 3.0, "num_gpus": 0.0}, "here")
    check_fits(ray, {"num_cpus": 2.0, "num_gpus": 0.0}, "here")  # fits: no error
    # The executor asks before submitting anything, when it started the instance itself
    # (as `fool run --executor ray` does without --address).
    executor = RayExecutor()
    monkeypatch.setattr(executor, "_connect", lambda: True)
    monkeypatch.setattr(executor.ray, "shutdown", lambda: None)  # keep the module's cluster
    monkeypatch.setattr(executor.ray, "remote", lambda f: pytest.fail("a task was submitted"))
    job = Job(Run("0" * 12, "perturb", {}, {}), tmp_path / "r")
    with pytest.raises(FoolError, match="this machine's Ray instance has at most 2 CPUs"):
        executor.execute([job], base_dir=str(tmp_path), resources={"gpus": 1.0}, done=print)


def test_ray_task_options(cluster):
    executor = RayExecutor()
    # No GPU in this cluster: none requested; the spec's resources override.
    assert executor.options({}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    shared = executor.options({"cpus": 2.0, "gpus": 0.5})
    assert shared["num_cpus"] == 2.0 and shared["num_gpus"] == 0.5
    assert shared["runtime_env"]["env_vars"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
