"""The Ray executor on a real local Ray instance (loopback, 2 CPUs, no dashboard)."""

import os
from pathlib import Path

import pytest
import ray

from fooltools.experiments import (
    RayExecutor,
    get_executor,
    load_results,
    load_spec,
    parse_spec,
    read_result,
    run_batch,
)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("perturb-smoke", "evolve-smoke", "detect-smoke")


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
    # The same directory test_experiments.py's local smoke test fills: when it ran first in
    # this session, resume finds every run finished and runs nothing.
    out = tmp_path_factory.getbasetemp() / f"local-{name}"
    spec = load_spec(ROOT / "experiments" / f"{name}.toml")
    return run_batch(spec, out, resume=True, echo=lambda line: None)


@pytest.mark.parametrize("name", SMOKE)
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
    doc = {
        "kind": "perturb",
        "fixed": {"image": "sample:cat", "steps": 3},
        "grid": {"target": ["no-such-class", "ostrich"], "method": ["pgd", "nope"]},
    }
    out = run_batch(
        parse_spec(doc, name="iso"), tmp_path, executor=RayExecutor(), echo=lambda line: None
    )
    rows = load_results(out)
    assert [r["status"] for r in rows] == ["failed", "failed", "ok", "failed"]
    assert "no-such-class" in rows[0]["error"] and "unknown method 'nope'" in rows[3]["error"]
    assert rows[2]["success"] is True  # cat -> ostrich, as in the smoke spec


def test_ray_task_options(cluster):
    executor = RayExecutor()
    # No GPU in this cluster: none requested; the spec's resources override.
    assert executor.options({}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    shared = executor.options({"cpus": 2.0, "gpus": 0.5})
    assert shared["num_cpus"] == 2.0 and shared["num_gpus"] == 0.5
    assert shared["runtime_env"]["env_vars"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
