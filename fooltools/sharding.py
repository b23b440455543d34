"""Data parallelism over the local accelerators: a batch axis split over ``jax.devices()``.

The searches and evaluations hand their whole batch (a population, a batch of images) to
one jitted function. With several local devices (GPUs, or CPU devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) :func:`data_parallel` pads the batch
to a multiple of the device count, splits it row-wise with a ``NamedSharding`` over a
one-axis mesh, replicates the parameters once, and lets XLA's SPMD partitioner run the
same program on every device. Rows never interact in these functions, so results equal
the single-device ones up to floating-point reassociation (tested to 1e-5).

Set ``FOOLTOOLS_DEVICES=1`` to keep everything on the first device.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


@functools.lru_cache(maxsize=1)
def local_mesh() -> Mesh | None:
    """A one-axis mesh over the default backend's local devices, or None for one device.

    ``FOOLTOOLS_DEVICES=N`` caps the number of devices used (N >= 1).
    """
    devices = jax.local_devices()
    cap = os.environ.get("FOOLTOOLS_DEVICES")
    if cap:
        devices = devices[: max(1, int(cap))]
    return Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None


def device_count() -> int:
    """How many devices :func:`data_parallel` splits a batch over."""
    mesh = local_mesh()
    return 1 if mesh is None else mesh.size


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every leaf of ``tree`` to every device of ``mesh`` (done once, not per call)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_rows(tree: Any, mesh: Mesh) -> tuple[Any, int]:
    """Pad the leading axis of every leaf to a multiple of the mesh size and split it.

    Padding repeats the last row, so padded rows are valid inputs whose outputs are dropped.

    Returns:
        ``(sharded tree, n)`` where ``n`` is the original leading size.
    """
    n = jax.tree_util.tree_leaves(tree)[0].shape[0]
    pad = -n % mesh.size

    def place(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        return jax.device_put(a, NamedSharding(mesh, PartitionSpec(AXIS)))

    return jax.tree_util.tree_map(place, tree), n


def data_parallel(fn: Callable[..., Any], params: Any, *, batch_arg: int = 0) -> Callable[..., Any]:
    """``fn(params, *args)`` with ``args[batch_arg]`` split row-wise over the local devices.

    Args:
        fn: A jitted function of ``(params, *args)`` whose outputs all have the batch as
            their leading axis and whose rows are independent.
        params: Its parameters (replicated once onto every device).
        batch_arg: Which of ``args`` holds the batch (a pytree with a common leading axis
            of size n); the other ``args`` are passed as they are.

    Returns:
        A function of ``*args`` returning ``fn``'s outputs for the n rows; on one device
        exactly ``fn(params, *args)``.
    """
    mesh = local_mesh()
    if mesh is None:
        return functools.partial(fn, params)
    params = replicate(params, mesh)

    def call(*args):
        args = list(args)
        args[batch_arg], n = shard_rows(args[batch_arg], mesh)
        out = fn(params, *args)
        return jax.tree_util.tree_map(lambda a: a[:n], out)

    return call
