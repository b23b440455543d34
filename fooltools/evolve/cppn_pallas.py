"""GPU kernels (Pallas, Triton) that render CPPN genomes: any topologies, or one shared.

XLA renders a batch of genomes node by node (``cppn_render.render_graph``): each node is
a kernel that reads every slot's values for every pixel of the batch, so the render's
memory traffic grows with the square of the genome size. :func:`render_graph` gives each
program one genome and a block of pixels, keeps that block's node values in registers for the
whole node loop, and writes only the outputs. 200 sferes2 genomes at 224 x 224 on an
H100: 7.9 -> 1.0 ms (up to 17 nodes), 16.1 -> 2.1 ms (up to 32).

The evolution strategy's population shares one layered topology; the graph kernel took
11.6 ms for it (55 nodes, 64 slots a step) against 4.4 ms for XLA's level-by-level
matrix products (``cppn_render.render_levels``, memory-bound: each level's values of the
whole batch go through GPU memory). :func:`render_levels` is a second kernel, generated
from the static :func:`cppn_render.plan`: straight-line code, each node's value one
register per pixel, each weight a scalar load, no loop and no branch.

The same sums as the XLA renders in another order and with the GPU's sine, so the images
agree to float32 rounding (on the 8-bit grid, ~1e-5 of the values are one level apart).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from fooltools.evolve import cppn_render
from fooltools.evolve.cppn_render import N_INPUTS, Level

if TYPE_CHECKING:
    from fooltools.evolve.cppn import CPPNGenome

# Node values of one program: slots x pixels floats in registers (128 threads).
_PROGRAM_FLOATS = 4096

# The activations of cppn_render, with the GPU's own sine (the polynomial there is for
# XLA:CPU, whose sine is slow, and rounds with an op that Triton does not lower).
_KERNEL_FNS = (jnp.sin, *cppn_render.FNS[1:])


def available() -> bool:
    """Whether renders use these kernels: on GPUs, unless ``FOOLTOOLS_PALLAS=0``.

    :func:`render_graph` was measured on an NVIDIA H100, :func:`render_levels` not yet;
    Triton also targets AMD GPUs, where neither is tested.
    """
    return jax.default_backend() == "gpu" and os.environ.get("FOOLTOOLS_PALLAS", "1") != "0"


def _slots(m: int) -> int:
    """Slots padded for Triton, whose tensors have power-of-two sizes (at least 16)."""
    return max(16, 1 << (m - 1).bit_length())


def _over_genomes_and_pixels(
    kernel: Callable[..., None],
    per_genome: tuple[jax.Array, ...],
    block: int,
    height: int,
    width: int,
    channels: int,
    interpret: bool,
) -> jax.Array:
    """Run ``kernel`` over a grid of (genome, block of pixels) programs; squash to images.

    The kernel gets each array of ``per_genome`` (leading axis P) at its genome, the
    inputs f32[4, block] of its pixels and an output f32[4, block] whose first
    ``channels`` rows it writes. Returns images f32[P, H, W, 3] in [0, 1].
    """
    # Imported here, not at the top: 0.1 s that every CPU run (which never calls this)
    # would otherwise pay when it imports the CPPN encoding.
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pl_triton

    population = per_genome[0].shape[0]
    hw = height * width
    n = -(-hw // block)
    inputs = jnp.pad(cppn_render.pixel_inputs(height, width), ((0, 0), (0, n * block - hw)))
    specs = [
        pl.BlockSpec((None, *a.shape[1:]), lambda p, b, rest=a.ndim - 1: (p, *[0] * rest))
        for a in per_genome
    ]
    out = pl.pallas_call(
        kernel,
        grid=(population, n),
        in_specs=[*specs, pl.BlockSpec((N_INPUTS, block), lambda p, b: (0, b))],
        out_specs=pl.BlockSpec((None, 4, block), lambda p, b: (p, 0, b)),
        out_shape=jax.ShapeDtypeStruct((population, 4, n * block), jnp.float32),
        interpret=interpret,
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1),
    )(*per_genome, inputs)
    return cppn_render.squash(out[:, :channels, :hw], height, width, channels)


def _graph_kernel(w_ref, act_ref, meta_ref, x_ref, o_ref, *, channels: int) -> None:
    # w_ref f32[M, M] (row k: edges into sorted node k), act_ref i32[M], meta_ref
    # i32[4] (node count, output rows), x_ref f32[4, B] (inputs), o_ref f32[4, B].
    m = w_ref.shape[0]
    block = x_ref.shape[1]
    rows = jax.lax.broadcasted_iota(jnp.int32, (m, block), 0)
    values = jnp.zeros((m, block), jnp.float32)
    for i in range(N_INPUTS):
        values = jnp.where(rows == i, x_ref[i, :][None, :], values)

    def step(k, values):
        z = jnp.sum(w_ref[k, :][:, None] * values, axis=0)
        # One branch per program: every thread of it renders the same genome.
        node = jax.lax.switch(act_ref[k], _KERNEL_FNS, z)
        return jnp.where(rows == k, node[None, :], values)

    values = jax.lax.fori_loop(N_INPUTS, meta_ref[0], step, values)
    for c in range(channels):
        o_ref[c, :] = jnp.sum(jnp.where(rows == meta_ref[1 + c], values, 0.0), axis=0)


@functools.partial(jax.jit, static_argnames=("height", "width", "channels", "interpret"))
def render_graph(
    genomes: CPPNGenome, height: int, width: int, channels: int, interpret: bool = False
) -> jax.Array:
    """Images of a population of genomes with any topologies (see the module doc).

    Args:
        genomes: Genomes with a leading population axis P and M slots.
        height: Image height H.
        width: Image width W.
        channels: The CPPN's output channels C (1 or 3).
        interpret: Run the kernel in Pallas's interpreter (any backend; for tests).

    Returns:
        f32[P, H, W, 3] in [0, 1], the images ``cppn_render.render_graph`` gives.
    """
    population, slots = genomes.order.shape
    m = _slots(slots)
    block = max(32, _PROGRAM_FLOATS // m)
    w_in, act, out_rows = jax.vmap(lambda g: cppn_render.topological(g, channels))(genomes)
    pad = m - slots
    w_in = jnp.pad(w_in, ((0, 0), (0, pad), (0, pad)))
    act = jnp.pad(act, ((0, 0), (0, pad)), constant_values=cppn_render.IDENTITY)
    meta = jnp.zeros((population, 4), jnp.int32)
    meta = meta.at[:, 0].set(genomes.active.sum(-1)).at[:, 1 : 1 + channels].set(out_rows)
    kernel = functools.partial(_graph_kernel, channels=channels)
    per_genome = (w_in, act.astype(jnp.int32), meta)
    return _over_genomes_and_pixels(kernel, per_genome, block, height, width, channels, interpret)


def _levels_kernel(w_ref, x_ref, o_ref, *, levels: tuple[Level, ...]) -> None:
    # w_ref f32[M, M] (weight[i, j]: edge i -> j), x_ref f32[4, B] (inputs), o_ref
    # f32[4, B]. Unrolled along the plan: every index below is a Python int.
    values = {i: x_ref[i, :] for i in range(N_INPUTS)}
    for lvl in levels:
        acts = [a for a, n in lvl.groups for _ in range(n)]
        for j, a in zip(lvl.nodes, acts, strict=True):
            z = jnp.zeros_like(values[0])  # a node without inputs sees 0
            for i in lvl.sources:
                z = z + w_ref[i, j] * values[i]
            values[j] = _KERNEL_FNS[a](z)
    for c, j in enumerate(levels[-1].nodes):
        o_ref[c, :] = values[j]


@functools.partial(jax.jit, static_argnames=("levels", "height", "width", "interpret"))
def render_levels(
    weight: jax.Array,
    levels: tuple[Level, ...],
    height: int,
    width: int,
    interpret: bool = False,
) -> jax.Array:
    """Images of a population sharing the topology that ``levels`` was planned from.

    Args:
        weight: The genomes' weights, f32[P, M, M] (only the planned edges are read).
        levels: :func:`cppn_render.plan` of any one genome of the population.
        height: Image height H.
        width: Image width W.
        interpret: Run the kernel in Pallas's interpreter (any backend; for tests).

    Returns:
        f32[P, H, W, 3] in [0, 1], the images ``cppn_render.render_levels`` gives.
    """
    population, slots, _ = weight.shape
    m = _slots(slots)
    weight = jnp.pad(weight, ((0, 0), (0, m - slots), (0, m - slots)))
    kernel = functools.partial(_levels_kernel, levels=levels)
    channels = len(levels[-1].nodes)
    return _over_genomes_and_pixels(kernel, (weight,), 128, height, width, channels, interpret)


class PlannedKernel(NamedTuple):
    """:class:`cppn_render.Planned` with this module's kernel (an ``Encoding``'s render).

    Attributes:
        levels: :func:`cppn_render.plan` of the shared topology.
    """

    levels: tuple[Level, ...]

    def render(self, genomes: CPPNGenome, height: int, width: int) -> jax.Array:
        """Images f32[P, H, W, 3] in [0, 1] of genomes with the planned topology."""
        return render_levels(genomes.weight, self.levels, height, width)
