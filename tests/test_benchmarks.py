"""The benchmark scripts refuse arguments their searches would reject, before any work."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def never(*args, **kwargs):
    raise AssertionError("the script started its work instead of refusing its arguments")


@pytest.mark.parametrize(
    "argv",
    [
        ["--population", "7", "--only", "cppn-es"],  # the ES needs an even population
        ["--population", "7"],  # ... refused before the GA rows run, not after them
        ["--population", "2", "--only", "direct-ga"],  # no child beside the 2 elites
        ["--only", "map-elites", "--map-elites-population", "1"],
        ["--naive", "0", "--only", "cppn-ga"],  # the speed-up would divide by 0
    ],
    ids=["es-odd", "all-odd", "ga-2", "map-elites-1", "naive-0"],
)
@pytest.mark.parametrize("script", ["bench_evolve", "evolve_phases"])
def test_evolution_benchmarks_refuse_bad_sizes_first(script, argv, monkeypatch, capsys):
    if script == "evolve_phases" and "--naive" in argv:
        pytest.skip("evolve_phases has no naive loop")
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


def test_bench_attacks_refuses_a_quick_run_with_no_cw_ladder_left(monkeypatch, capsys):
    for peer in ("torch", "torchattacks", "efficientnet_lite_pytorch"):
        pytest.importorskip(peer)
    module = load("bench_attacks")
    monkeypatch.setattr(module, "load_model", never)
    # --quick keeps the ladder's counts <= 50: none here, and the C&W part had no run.
    monkeypatch.setattr(sys, "argv", ["bench_attacks", "--quick", "--cw-ladder", "100", "200"])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2
    assert "--cw-ladder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script", ["evolve_phases", "bench_detect", "bench_classify", "bench_attacks"]
)
def test_benchmarks_refuse_zero_repeats(script, monkeypatch, capsys):
    if script in ("bench_classify", "bench_attacks"):
        for peer in ("torch", "torchattacks", "efficientnet_lite_pytorch"):
            pytest.importorskip(peer)
    module = load(script)
    if hasattr(module, "hugepages"):
        monkeypatch.setattr(module.hugepages, "ensure", lambda: None)
    for name in ("load_model", "load_detector"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, never)
    if script == "bench_detect":
        monkeypatch.setattr(module.synthetic, "make_dataset", never)
    # No timed call: a median of nothing (evolve_phases printed nan, the others crashed).
    monkeypatch.setattr(sys, "argv", [script, "--repeats", "0"])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("ladder", [["12"], ["3", "10"]])
def test_bench_attacks_refuses_a_cw_ladder_the_5_round_row_cannot_run(ladder, monkeypatch, capsys):
    for peer in ("torch", "torchattacks", "efficientnet_lite_pytorch"):
        pytest.importorskip(peer)
    module = load("bench_attacks")
    monkeypatch.setattr(module, "load_model", never)
    # 12 ran 2 x 5 = 10 steps (3: 1 x 5) in the search_steps=5 row, printed as 12 (3).
    monkeypatch.setattr(sys, "argv", ["bench_attacks", "--cw-ladder", *ladder])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2
    assert "multiples of 5" in capsys.readouterr().err


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
