"""The benchmark scripts refuse arguments their searches would reject, before any work."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
# As when a script runs: its own directory on sys.path (evolve_phases imports bench_evolve).
sys.path.insert(0, str(BENCHMARKS))


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def never(*args, **kwargs):
    raise AssertionError("the script started its work instead of refusing its arguments")


SIZES = {
    "es-odd": ["--population", "7", "--only", "cppn-es"],  # the ES needs an even population
    "all-odd": ["--population", "7"],  # ... refused before the GA rows run, not after them
    "ga-2": ["--population", "2", "--only", "direct-ga"],  # no child beside the 2 elites
    "map-elites-1": ["--only", "map-elites", "--map-elites-population", "1"],
}


@pytest.mark.parametrize(
    ("script", "argv"),
    [(s, a) for s in ("bench_evolve", "evolve_phases") for a in SIZES.values()]
    # The speed-up over the naive loop would divide by 0 (evolve_phases has no such loop).
    + [("bench_evolve", ["--naive", "0", "--only", "cppn-ga"])],
    ids=[f"{s}-{k}" for s in ("bench_evolve", "evolve_phases") for k in SIZES]
    + ["bench_evolve-naive-0"],
)
def test_evolution_benchmarks_refuse_bad_sizes_first(script, argv, monkeypatch, capsys):
    module = load(script)
    monkeypatch.setattr(module.hugepages, "ensure", lambda: None)
    monkeypatch.setattr(module, "load_model", never)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench_evolve", "evolve_phases"])
def test_evolution_benchmarks_accept_small_sizes(script, monkeypatch):
    module = load(script)
    monkeypatch.setattr(module.hugepages, "ensure", lambda: None)
    monkeypatch.setattr(module, "load_model", never)
    monkeypatch.setattr(sys, "argv", [script, "--population", "8", "--map-elites-population", "8"])
    with pytest.raises(AssertionError, match="started its work"):
        module.main()


# bench_classify and bench_attacks refuse it too, but import torch, which the test
# install leaves out: `python benchmarks/bench_attacks.py --repeats 0` in `make bench`'s
# environment shows it.
@pytest.mark.parametrize(
    ("script", "flag"),
    [("evolve_phases", "--repeats"), ("bench_detect", "--repeats"), ("bench_detect", "--batch")],
)
def test_benchmarks_refuse_zero_repeats_or_images(script, flag, monkeypatch, capsys):
    module = load(script)
    if hasattr(module, "hugepages"):
        monkeypatch.setattr(module.hugepages, "ensure", lambda: None)
    for name in ("load_model", "load_detector"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, never)
    if script == "bench_detect":
        monkeypatch.setattr(module.synthetic, "make_dataset", never)
    # No timed call: a median of nothing (evolve_phases printed nan, the others crashed);
    # or no image: a batch of 0 divided by zero after both detectors had loaded.
    monkeypatch.setattr(sys, "argv", [script, flag, "0"])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2
    assert f"{flag} must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("cpus", [1, 2, 4, 5, 16])
def test_bench_run_warms_every_ray_worker(cpus):
    module = load("bench_run")
    # --cpus 16 warmed 4 workers (one run per target): 12 cold ones in the parallel batch.
    assert cpus <= len(module.warm_spec(3, cpus).runs()) < cpus + len(module.TARGETS)


def test_bench_run_refuses_no_cpus(monkeypatch, capsys):
    module = load("bench_run")
    monkeypatch.setattr(module, "run_batch", never)
    monkeypatch.setattr(sys, "argv", ["bench_run", "--cpus", "0"])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2
