"""A GPU kernel (Pallas, Triton) that renders CPPN genomes of any topology.

XLA renders a batch of genomes node by node (``cppn_render.render_graph``): each node is
a kernel that reads every slot's values for every pixel of the batch, so the render's
memory traffic grows with the square of the genome size. This kernel gives each program
one genome and a block of pixels, keeps that block's node values in registers for the
whole node loop, and writes only the outputs. 200 sferes2 genomes at 224 x 224 on an
H100: 7.9 -> 1.0 ms (up to 17 nodes), 16.1 -> 2.1 ms (up to 32).

Not for the evolution strategy's shared layered topology: its level-by-level matrix
products (``cppn_render.render_levels``) took 4.4 ms there, this kernel 11.6 ms (55
nodes, 64 slots a step).

The same sums as :func:`cppn_render._graph_one` in another order and with the GPU's
sine, so the images agree to float32 rounding (on the 8-bit grid, ~1e-5 of the values
are one level apart).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from fooltools.evolve import cppn_render
from fooltools.evolve.cppn_render import N_INPUTS

if TYPE_CHECKING:
    from fooltools.evolve.cppn import CPPNGenome

# Node values of one program: slots x pixels floats in registers (128 threads).
_PROGRAM_FLOATS = 4096

# The activations of cppn_render, with the GPU's own sine (the polynomial there is for
# XLA:CPU, whose sine is slow, and rounds with an op that Triton does not lower).
_KERNEL_FNS = (jnp.sin, *cppn_render.FNS[1:])


def available() -> bool:
    """Whether renders use this kernel: on GPUs, unless ``FOOLTOOLS_PALLAS=0``.

    Measured on an NVIDIA H100; Triton also targets AMD GPUs, where it is untested.
    """
    return jax.default_backend() == "gpu" and os.environ.get("FOOLTOOLS_PALLAS", "1") != "0"


def _kernel(w_ref, act_ref, meta_ref, x_ref, o_ref, *, channels: int) -> None:
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
    m = max(16, 1 << (slots - 1).bit_length())  # Triton's tensors: powers of two
    block = max(32, _PROGRAM_FLOATS // m)
    hw = height * width
    n = -(-hw // block)
    w_in, act, out_rows = jax.vmap(lambda g: cppn_render.topological(g, channels))(genomes)
    pad = m - slots
    w_in = jnp.pad(w_in, ((0, 0), (0, pad), (0, pad)))
    act = jnp.pad(act, ((0, 0), (0, pad)), constant_values=cppn_render.IDENTITY)
    meta = jnp.zeros((population, 4), jnp.int32)
    meta = meta.at[:, 0].set(genomes.active.sum(-1)).at[:, 1 : 1 + channels].set(out_rows)
    inputs = jnp.pad(cppn_render.pixel_inputs(height, width), ((0, 0), (0, n * block - hw)))
    out = pl.pallas_call(
        functools.partial(_kernel, channels=channels),
        grid=(population, n),
        in_specs=[
            pl.BlockSpec((None, m, m), lambda p, b: (p, 0, 0)),
            pl.BlockSpec((None, m), lambda p, b: (p, 0)),
            pl.BlockSpec((None, 4), lambda p, b: (p, 0)),
            pl.BlockSpec((N_INPUTS, block), lambda p, b: (0, b)),
        ],
        out_specs=pl.BlockSpec((None, 4, block), lambda p, b: (p, 0, b)),
        out_shape=jax.ShapeDtypeStruct((population, 4, n * block), jnp.float32),
        interpret=interpret,
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1),
    )(w_in, act.astype(jnp.int32), meta, inputs)
    return cppn_render.squash(out[:, :channels, :hw], height, width, channels)
