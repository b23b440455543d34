"""Batch runner: a 16-run perturb grid through the Ray executor vs the local executor.

Run by ``make bench`` (the ``bench`` extra installs Ray: ``pip install 'fooltools[bench]'``).
The grid: targeted PGD L-inf 8/255 with ``--steps`` steps on sample:cat, 4 targets x 4
seeds. Both executors get warm workers first (model loaded, attack compiled), so the
figures are the steady state a long batch sees; the one-off costs are printed apart:

* local: the batch in this process, one run after another (XLA uses every core per run);
* Ray, serial (``cpus = N`` per task, so one task at a time): scheduling overhead per
  run = driver wall time between consecutive results minus the run's own ``seconds``
  (submission, argument and result transfer, ``ray.wait``); target <= 0.5 s;
* Ray, parallel (1 CPU per task, N tasks at once): wall time and speed-up over local.

On a machine whose cores are all used by one XLA computation already, parallel runs
mostly share the same cores: the speed-up reflects that, not Ray.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from fooltools.cache import enable_compilation_cache
from fooltools.experiments import get_executor, load_results, parse_spec, run_batch

TARGETS = ["ostrich", "goldfish", "robin", "espresso"]


def spec(steps: int, seeds: int, name: str, cpus: float = 1.0, targets=TARGETS):
    return parse_spec(
        {
            "kind": "perturb",
            "fixed": {"image": "sample:cat", "method": "pgd", "steps": steps},
            "grid": {"target": list(targets), "seed": {"start": 0, "stop": seeds}},
            "resources": {"cpus": cpus},
        },
        name=name,
    )


def warm_spec(steps: int, workers: int):
    """At least one warm-up run per Ray worker (a worker whose first run is timed would
    count its model load and compile in the figures): ``workers`` may exceed the targets."""
    per_target = -(-workers // len(TARGETS))
    return spec(steps, per_target, "warm", targets=TARGETS[:workers])


class Timed:
    """Wraps an executor to record, per finished run, the driver time and the run's seconds."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.events = inner, inner.name, []

    def execute(self, jobs, *, base_dir, resources, done):
        t0 = time.perf_counter()

        def record(job, result):
            self.events.append((time.perf_counter() - t0, result["seconds"]))
            done(job, result)

        self.inner.execute(jobs, base_dir=base_dir, resources=resources, done=record)


def timed_batch(the_spec, out: Path, executor) -> tuple[float, list[tuple[float, float]]]:
    """Run a batch; returns wall seconds and (finish time, run seconds) per run, in order."""
    timed = Timed(executor)
    t0 = time.perf_counter()
    run_batch(the_spec, out, executor=timed, echo=lambda line: None)
    wall = time.perf_counter() - t0
    rows = load_results(out)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    return wall, sorted(timed.events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to the Ray instance")
    args = parser.parse_args()
    if args.cpus < 1:
        parser.error(f"--cpus must be >= 1 (Ray would never schedule a run), got {args.cpus}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    enable_compilation_cache()
    n = len(TARGETS) * 4
    print(f"{platform.machine()} {os.cpu_count()} cores; {n} runs of PGD, {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = get_executor("local")
        run_batch(
            spec(args.steps, 1, "warm", targets=TARGETS[:1]),
            tmp / "lw",
            executor=local,
            echo=lambda line: None,
        )
        t_local, ev = timed_batch(spec(args.steps, 4, "bench"), tmp / "local", local)
        print(
            f"local:        {t_local:6.1f} s wall, {t_local / n:.2f} s/run "
            f"(median run {statistics.median(s for _, s in ev):.2f} s)"
        )

        import ray

        t0 = time.perf_counter()
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
        print(f"ray.init:     {time.perf_counter() - t0:6.1f} s (once per batch)")
        executor = get_executor("ray")
        t0 = time.perf_counter()
        # One warm-up run per worker: import, load the model, compile (from the XLA cache).
        warm = warm_spec(args.steps, args.cpus)
        run_batch(warm, tmp / "rw", executor=executor, echo=lambda line: None)
        print(f"worker start: {time.perf_counter() - t0:6.1f} s ({args.cpus} workers, in parallel)")

        serial = spec(args.steps, 4, "bench", cpus=args.cpus)
        t_ser, ev = timed_batch(serial, tmp / "serial", executor)
        finish = [t for t, _ in ev]
        gaps = [b - a for a, b in zip([0.0, *finish[:-1]], finish, strict=True)]
        overhead = [g - s for g, (_, s) in zip(gaps, ev, strict=True)]
        print(
            f"ray serial:   {t_ser:6.1f} s wall; scheduling overhead per run: median "
            f"{statistics.median(overhead):.3f} s, max {max(overhead):.3f} s (target <= 0.5)"
        )

        t_par, ev = timed_batch(spec(args.steps, 4, "bench"), tmp / "par", executor)
        print(
            f"ray parallel: {t_par:6.1f} s wall, {t_par / n:.2f} s/run "
            f"(median run {statistics.median(s for _, s in ev):.2f} s); "
            f"speed-up over local {t_local / t_par:.2f}x"
        )
        same = [
            {k: v for k, v in r.items() if k not in ("seconds", "dir")}
            for r in load_results(tmp / "par")
        ] == [
            {k: v for k, v in r.items() if k not in ("seconds", "dir")}
            for r in load_results(tmp / "local")
        ]
        print(f"tables equal (timing excluded): {same}")
        ray.shutdown()


if __name__ == "__main__":
    main()
