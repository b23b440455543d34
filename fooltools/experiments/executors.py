"""Executors: where the runs of a batch run. Both call :func:`~.tasks.run_one` per run.

``local`` runs them one after another in this process (the classifier is loaded once).
``ray`` sends one Ray task per run to a cluster (``ray.init(address=...)``); each worker
process keeps its loaded classifier between tasks. Ray is imported only when chosen.
Run directories are written by the workers, so on a multi-node cluster the output
directory must be on storage every node mounts at the same path.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fooltools.errors import FoolError
from fooltools.experiments.spec import Run
from fooltools.experiments.tasks import one_line, run_one, write_result

EXECUTORS = ("local", "ray")
RAY_HINT = "the ray executor needs Ray: pip install 'fooltools[ray]'"


@dataclasses.dataclass(frozen=True)
class Job:
    """A run to execute and its directory."""

    run: Run
    out: Path


Done = Callable[[Job, dict[str, Any]], None]


class Executor(Protocol):
    """Runs jobs, calling ``done(job, result)`` in this process as each one finishes."""

    name: str

    def execute(
        self, jobs: Sequence[Job], *, base_dir: str, resources: dict[str, float], done: Done
    ) -> None:
        """Run every job; ``resources`` are the spec's per-run ``cpus``/``gpus``."""


class LocalExecutor:
    """In-process, one run after another; needs nothing beyond fooltools."""

    name = "local"

    def execute(
        self, jobs: Sequence[Job], *, base_dir: str, resources: dict[str, float], done: Done
    ) -> None:
        """Run the jobs in order (``resources`` is ignored)."""
        for job in jobs:
            done(job, run_one(job.run.kind, job.run.params, job.out, base_dir))


def _ray_task(kind: str, params: dict[str, Any], out_dir: str, base_dir: str) -> dict[str, Any]:
    """What a Ray worker runs: :func:`run_one`, with the persistent XLA cache turned on."""
    from fooltools.cache import enable_compilation_cache

    enable_compilation_cache()  # idempotent; a fresh worker then skips recompiling
    return run_one(kind, params, out_dir, base_dir)


def import_ray() -> Any:
    """Import Ray, or raise the FoolError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise FoolError(RAY_HINT) from None
    return ray


class RayExecutor:
    """One Ray task per run on a Ray cluster.

    Args:
        address: Cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); None: an
            already initialised Ray, else ``RAY_ADDRESS`` or a new local instance.
    """

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self.ray = import_ray()

    def _connect(self) -> bool:
        """Initialise Ray unless it already is; returns whether we did (and must shut down)."""
        if self.ray.is_initialized():
            return False
        if self.address is not None:
            check_reachable(self.address)
        kwargs: dict[str, Any] = {"address": self.address, "log_to_driver": True}
        if self.address is None:
            kwargs["include_dashboard"] = False  # a local instance: nobody to show it to
        try:
            self.ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as err:
            where = self.address or "a local instance"
            raise FoolError(f"cannot start or reach Ray at {where}: {one_line(err)}") from None
        return True

    def options(self, resources: dict[str, float]) -> dict[str, Any]:
        """Ray task options: 1 CPU per run and, when the cluster has GPUs, 1 GPU per run.

        ``resources`` (the spec's ``cpus``/``gpus``) override both; a fractional GPU packs
        several runs per device, so JAX's up-front grab of 75% of its memory is turned off.
        """
        gpus = resources.get("gpus")
        if gpus is None:
            gpus = 1.0 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        opts: dict[str, Any] = {"num_cpus": resources.get("cpus", 1.0), "num_gpus": gpus}
        if 0 < gpus < 1:
            opts["runtime_env"] = {"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}
        return opts

    def execute(
        self, jobs: Sequence[Job], *, base_dir: str, resources: dict[str, float], done: Done
    ) -> None:
        """Submit every job at once; report each as it finishes (in completion order)."""
        if not jobs:
            return  # all finished before (--resume): no need to reach the cluster
        ray = self.ray
        started = self._connect()
        try:
            opts = self.options(resources)
            if started and self.address is None:
                # A local instance has this machine's resources and no autoscaler: a run
                # asking for more than it has waited for ever, behind Ray's warnings.
                check_fits(ray, opts, "this machine's Ray instance")
            remote = ray.remote(_ray_task).options(**opts)
            pending = {
                remote.remote(job.run.kind, job.run.params, str(job.out), base_dir): job
                for job in jobs
            }
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    job = pending.pop(ready[0])
                    try:
                        result = ray.get(ready[0])
                    except ray.exceptions.RayError as err:
                        # The worker died (OOM kill, lost node) after Ray's retries: record it
                        # here, since the task could not.
                        result = _crashed(job, err)
                    done(job, result)
            finally:
                for ref in pending:  # interrupted: do not leave work running on the cluster
                    ray.cancel(ref, force=True)
        finally:
            if started:
                ray.shutdown()


def check_fits(ray: Any, opts: dict[str, Any], where: str) -> None:
    """Refuse task options (``num_cpus``, ``num_gpus``) that no live node of Ray has.

    Args:
        ray: The initialised ``ray`` module.
        opts: Options from :meth:`RayExecutor.options`.
        where: The cluster, as the error line names it.

    Raises:
        FoolError: No node has that many CPUs and GPUs.
    """
    need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"]}
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(all(res.get(k, 0.0) >= v for k, v in need.items()) for res in nodes):
        return
    most = {k: max((res.get(k, 0.0) for res in nodes), default=0.0) for k in need}
    raise FoolError(
        f"each run asks for {_count(need['CPU'], 'CPU')} and {_count(need['GPU'], 'GPU')}, "
        f"but {where} has at most {_count(most['CPU'], 'CPU')} and "
        f"{_count(most['GPU'], 'GPU')} on a node: lower the spec's [resources], or give the "
        "--address of a cluster that has them"
    )


def _count(n: float, what: str) -> str:
    """``n`` of ``what`` as a person writes it: "1 GPU", "0.5 GPUs", "2 CPUs"."""
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) address where nothing listens.

    ``ray.init`` retries such an address for ever, deaf to Ctrl-C and SIGTERM, printing a
    warning every few seconds. ``auto`` and addresses without a port are left to Ray.

    Raises:
        FoolError: The port refuses the connection or does not answer within ``timeout``.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, OverflowError) as err:
        raise FoolError(f"cannot reach Ray at {address}: {one_line(err)}") from None


def _crashed(job: Job, err: BaseException) -> dict[str, Any]:
    result = {
        "id": job.run.id,
        "kind": job.run.kind,
        "params": job.run.params,
        "status": "failed",
        "error": f"worker lost: {one_line(err)}"[:500],
        "metrics": {},
        "seconds": None,
        "host": None,
        "pid": None,
    }
    job.out.mkdir(parents=True, exist_ok=True)
    write_result(job.out, result)
    return result


def get_executor(name: str, address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``).

    Raises:
        FoolError: An unknown name; ``ray`` without Ray installed; ``address`` with ``local``.
    """
    if name == "local":
        if address is not None:
            raise FoolError("--address is for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise FoolError(f"unknown executor {name!r}; choose {' or '.join(EXECUTORS)}")
