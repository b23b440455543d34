"""Rendering CPPN genomes (see ``cppn.py``) to images, two ways.

* :func:`render_graph` renders a population whose genomes each have their own topology
  (the genetic algorithm's): per genome, node by node in topological order, every node
  reading all M slots. Cost per pixel: ~M^2 multiply-adds plus one activation per node.
* :func:`render_levels` renders a population that shares one topology (the evolution
  strategy's, which moves weights only): a host-side :func:`plan` groups the nodes into
  levels whose nodes depend only on earlier levels, so each level is one small matrix
  product over just the slots that feed it, and each activation function is applied to
  a static slice of nodes. For the 3 x 16 layered genome that is ~640 multiply-adds per
  pixel instead of ~3000, and 4.5x faster for 100 genomes at 224 x 224 on CPU.

Both give the same images (the same sums, only without the zero terms). On CUDA GPUs the
genetic algorithm's genomes render with a Pallas kernel instead (``cppn_pallas``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from fooltools.evolve.cppn import CPPNGenome

N_INPUTS = 4  # x, y, d, bias
ACTIVATIONS = ("sine", "sigmoid", "gaussian", "linear", "tanh", "abs")

# sin(z) = (-1)^k sin(r), r = z - k pi in [-pi/2, pi/2] (pi split in two so that k * _PI_A
# is exact), sin(r) by its Taylor series to r^11 (next term < 6e-8 there).
_PI_A = 3.140625
_PI_B = float(np.pi - _PI_A)
_SIN_TAYLOR = (-1 / 39916800, 1 / 362880, -1 / 5040, 1 / 120, -1 / 6)


def _sine(z: jax.Array) -> jax.Array:
    """sin(z) within 3e-7 for |z| <= 6000, 3.7x faster than ``jnp.sin`` on XLA:CPU.

    XLA's float32 sine was most of the cost of rendering a CPPN (4.5x an exp or a tanh
    per element). Pre-activations are bounded by M x weight_limit (node values are in
    [-1, 1]), far inside the accurate range.
    """
    k = jnp.round(z * (1 / np.pi))
    r = (z - k * _PI_A) - k * _PI_B
    r2 = r * r
    p = _SIN_TAYLOR[0]
    for c in _SIN_TAYLOR[1:]:
        p = p * r2 + c
    s = r + r * r2 * p
    return jnp.where(k - 2 * jnp.floor(k / 2) > 0, -s, s)  # odd k: sin(r + k pi) = -sin(r)


# The first four are sferes2's CPPN functions (nn2/af_cppn.hpp), used by the paper:
# symmetric sigmoid and clipped linear. All are bounded in [-1, 1], so node values stay
# finite however deep a chain grows (an overflow would make 0-weight * inf a NaN).
_ACT_FNS = (
    _sine,
    lambda z: 2 * jax.nn.sigmoid(z) - 1,
    lambda z: jnp.exp(-z * z),
    lambda z: jnp.clip(z, -3.0, 3.0) / 3,
    jnp.tanh,
    lambda z: jnp.minimum(jnp.abs(z), 3.0) / 3,
)
IDENTITY = len(_ACT_FNS)  # the outputs' "activation": squashed by tanh afterwards
FNS = (*_ACT_FNS, lambda z: z)


def pixel_inputs(height: int, width: int) -> jax.Array:
    """The CPPN inputs x, y, d, bias at pixel centres, f32[4, H*W] (row-major pixels)."""
    ys = (2 * jnp.arange(height, dtype=jnp.float32) + 1) / height - 1
    xs = (2 * jnp.arange(width, dtype=jnp.float32) + 1) / width - 1
    y, x = jnp.meshgrid(ys, xs, indexing="ij")
    d = jnp.sqrt(x * x + y * y) / np.sqrt(2.0)
    return jnp.stack([x, y, d, jnp.ones_like(x)]).reshape(N_INPUTS, height * width)


# Node values of the genomes rendered together on an accelerator: ~1 GiB of float32.
_BATCH_FLOATS = 1 << 28


def genome_batch(population: int, floats_per_genome: int, *, cpu: int = 1) -> int:
    """How many genomes to render together (vmapped): ``cpu`` on CPU, else as many as fit.

    On CPU the graph render is fastest one genome at a time (each runs only its own loop
    and activation branch, and its values stay in cache); the level render, whose genomes
    share every op, a few at a time (``cpu``, see :func:`render_levels`). On other devices
    (where ``cppn_pallas``'s kernel is not used: TPUs, or ``FOOLTOOLS_PALLAS=0``) one at
    a time leaves them idle between thousands of tiny kernels (measured on an H200: the
    sferes2 GA at 123 evaluations/s against 26,000 images/s for the classifier), so
    genomes render in vmapped batches whose node values fill about 1 GiB, in as few
    batches as that allows, of equal sizes: the last batch is padded (or run apart), so
    200 genomes in batches of at most 167 are two of 100, not 167 and 33 padded to 167
    (a third more renders).

    Args:
        population: Genomes to render, P.
        floats_per_genome: Float32 values one genome's render keeps live.
        cpu: The batch on CPU (at most P).

    Returns:
        The batch size, in [1, P].
    """
    if jax.default_backend() == "cpu":
        return max(1, min(cpu, population))
    largest = max(1, min(population, _BATCH_FLOATS // max(floats_per_genome, 1)))
    batches = -(-population // largest)
    return -(-population // batches)


def squash(z: jax.Array, height: int, width: int, channels: int) -> jax.Array:
    """Squash pre-activations f32[P, C, H*W] into images f32[P, H, W, 3] in [0, 1]."""
    img = ((jnp.tanh(z) + 1) / 2).transpose(0, 2, 1).reshape(-1, height, width, channels)
    return jnp.broadcast_to(img, (*img.shape[:3], 3)) if channels == 1 else img


# -- any topology: node by node --


def topological(g: CPPNGenome, channels: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One genome's slots in topological order: what a node-by-node render loops over.

    Active nodes sorted by ``order`` (inputs first, outputs last), free slots after them,
    so node k reads only nodes < k and a render can stop at the number of active nodes.

    Returns:
        ``(w_in, act, out_rows)``: f32[M, M] whose row k holds the weights of the edges
        into sorted node k, i32[M] the sorted nodes' activations (:data:`IDENTITY` for
        the outputs), i32[C] the sorted positions of the C outputs.
    """
    perm = jnp.argsort(jnp.where(g.active, g.order, 2.0), stable=True)
    w_in = jnp.where(g.conn, g.weight, 0.0)[perm][:, perm].T
    is_out = (perm >= N_INPUTS) & (perm < N_INPUTS + channels)
    act = jnp.where(is_out, IDENTITY, g.act[perm])
    return w_in, act, jnp.argsort(perm)[N_INPUTS : N_INPUTS + channels]


def _node_loop(
    w_in: jax.Array, act: jax.Array, inputs: jax.Array, steps: jax.Array, width: int
) -> jax.Array:
    """Node values f32[width, N] of sorted slots < ``width`` (see :func:`topological`)."""
    w_in, act = w_in[:width, :width], act[:width]
    values = jnp.zeros((width, inputs.shape[1]), jnp.float32).at[:N_INPUTS].set(inputs)

    def step(k, values):
        # A scalar branch index (no vmap here): only node k's own activation is computed.
        # Rows >= k are still zero; skipping them with static blocks per step was not
        # faster (per genome it is: see loop_widths).
        return values.at[k].set(jax.lax.switch(act[k], FNS, w_in[k] @ values))

    return jax.lax.fori_loop(N_INPUTS, steps, step, values)


def _graph_one(
    g: CPPNGenome, inputs: jax.Array, channels: int, steps: jax.Array | None = None
) -> jax.Array:
    """Pre-squash outputs of one genome, f32[C, H*W], computing its first ``steps`` slots.

    ``steps`` defaults to the genome's active nodes; more (a batch's largest genome) also
    computes free slots after the outputs, which no edge reads.
    """
    w_in, act, out_rows = topological(g, channels)
    steps = g.active.sum() if steps is None else steps
    return _node_loop(w_in, act, inputs, steps, g.order.shape[0])[out_rows]


def loop_widths(slots: int) -> tuple[int, ...]:
    """The slot counts a one-genome render is compiled for: 16, 24, ... and ``slots``."""
    return (*range(16, slots, 8), slots)


# Pixels per render pass: a pass's node values (M x chunk floats, ~0.4 MB for M = 55)
# stay in cache across the node loop; whole 224 x 224 images (11 MB) made every node's
# matvec a trip to memory (measured: 1.5x slower for 100 genomes of 55 nodes).
CHUNK = 2048


@functools.partial(jax.jit, static_argnames=("height", "width", "channels", "batch"))
def render_graph(
    genomes: CPPNGenome, height: int, width: int, channels: int, batch: int | None = None
) -> jax.Array:
    """Images of a population of genomes with any topologies.

    Args:
        genomes: Genomes with a leading population axis P.
        height: Image height H.
        width: Image width W.
        channels: The CPPN's output channels C (1 or 3).
        batch: Genomes rendered together; default :func:`genome_batch` (1 on CPU). Above
            1, whole images of ``batch`` genomes at a time, vmapped (every activation
            computed, loops as long as the batch's largest genome).

    Returns:
        f32[P, H, W, 3] in [0, 1]; a 1-channel CPPN's grey is replicated to RGB.
    """
    hw = height * width
    population, slots = genomes.order.shape
    batch = batch or genome_batch(population, slots * hw)
    if batch > 1:
        inputs = pixel_inputs(height, width)
        n = -(-population // batch)
        # Whole batches (the last padded with the first genomes), each looping to its
        # largest genome: a loop bound shared by the batch, not vmapped, so the loop
        # does not select every slot value of the batch (B x M x H*W) at every step.
        batches = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([a, a[: n * batch - population]]).reshape(
                n, batch, *a.shape[1:]
            ),
            genomes,
        )

        def one_batch(gs: CPPNGenome) -> jax.Array:
            steps = gs.active.sum(-1).max()
            return jax.vmap(lambda g: _graph_one(g, inputs, channels, steps))(gs)

        z = jax.lax.map(one_batch, batches).reshape(n * batch, channels, hw)[:population]
        return squash(z, height, width, channels)
    chunk = min(hw, CHUNK)
    n = -(-hw // chunk)
    inputs = jnp.pad(pixel_inputs(height, width), ((0, 0), (0, n * chunk - hw)))
    chunks = inputs.reshape(N_INPUTS, n, chunk).transpose(1, 0, 2)

    widths = loop_widths(slots)

    def one(g):
        w_in, act, out_rows = topological(g, channels)
        steps = g.active.sum()

        def at(width: int) -> Callable[[jax.Array], jax.Array]:
            return lambda x: _node_loop(w_in, act, x, steps, width)[out_rows]

        # The loop over the fewest slots that hold the genome's nodes (sorted first; the
        # rows past them are zero): a young sferes2 genome's (9-16 nodes) matrix-vector
        # products are half as long, 1.80 -> 1.36 ms per 224 x 224 image, same values.
        fit = jnp.searchsorted(jnp.asarray(widths), steps)
        z = jax.lax.map(lambda x: jax.lax.switch(fit, [at(w) for w in widths], x), chunks)
        return z.transpose(1, 0, 2).reshape(channels, n * chunk)[:, :hw]  # (C, H*W)

    # lax.map, not vmap: each genome runs its own loop length and activation branch
    # instead of every branch for as long as the largest genome of the population.
    return squash(jax.lax.map(one, genomes), height, width, channels)


# -- one shared topology: level by level --


class Level(NamedTuple):
    """One step of a :func:`plan`: nodes computed together from earlier values.

    Attributes:
        nodes: Slots computed at this level, grouped by activation.
        sources: Slots with an edge into any of ``nodes`` (all computed earlier), in the
            order the render holds their values: inputs, then each level's ``nodes``.
        groups: ``(activation index, count)`` runs over ``nodes`` (identity for outputs).
        runs: Where ``sources``' values are held, in order: ``(level, start, stop)`` row
            slices of a level's values (level 0 the inputs, level k this plan's k-th).
    """

    nodes: tuple[int, ...]
    sources: tuple[int, ...]
    groups: tuple[tuple[int, int], ...]
    runs: tuple[tuple[int, int, int], ...]


def plan(genome: CPPNGenome, channels: int) -> tuple[Level, ...]:
    """The levels that render ``genome``'s topology (host-side, from one unbatched genome).

    A hidden node's level is one more than the deepest node feeding it (inputs are level
    0); the outputs come last. Only the topology is used (``conn``, ``act``, ``active``,
    ``order``): any genome with the same edges and activations renders with the same plan.

    Args:
        genome: One genome (fields of shapes [M, M], [M, M], [M], [M], [M]).
        channels: The CPPN's output channels C.

    Returns:
        The levels, hashable (a static argument of :func:`render_levels`).
    """
    conn, act, active, order = (np.asarray(a) for a in genome[1:])
    first_hidden = N_INPUTS + channels
    hidden = [int(j) for j in np.argsort(order, kind="stable") if active[j] and j >= first_hidden]
    depth = np.zeros(order.shape[0], int)
    for j in hidden:  # in topological order, so every predecessor's depth is final
        depth[j] = 1 + depth[conn[:, j]].max(initial=0)

    # Where the render holds each slot's values: (level, row), inputs at level 0.
    held = {i: (0, i) for i in range(N_INPUTS)}
    levels: list[Level] = []

    def add_level(members: list[tuple[int, int]]) -> None:
        members = sorted(members)  # (activation, slot): each activation's nodes together
        nodes = tuple(j for _, j in members)
        groups = tuple((a, len(list(run))) for a, run in itertools.groupby(a for a, _ in members))
        # Sources in the order their values are held, not by slot: a layered genome's are
        # then whole earlier levels, which the render reads without a copy. By slot, the
        # rows of a level (held grouped by activation) came one at a time: 16 slices and
        # a concatenation a level, 518-582 -> 374-420 ms for the ES's 200 genomes at
        # 224 x 224. The order is the dot products' order of summation.
        feeding = (int(i) for i in np.flatnonzero(conn[:, list(nodes)].any(1)))
        sources = tuple(sorted(feeding, key=held.__getitem__))
        runs: list[list[int]] = []  # consecutive rows of one level read as one slice
        for level, row in map(held.__getitem__, sources):
            if runs and runs[-1][0] == level and runs[-1][2] == row:
                runs[-1][2] += 1
            else:
                runs.append([level, row, row + 1])
        levels.append(Level(nodes, sources, groups, tuple(map(tuple, runs))))
        held.update({j: (len(levels), r) for r, j in enumerate(nodes)})

    for d in range(1, int(depth.max(initial=0)) + 1):
        add_level([(int(act[j]), j) for j in hidden if depth[j] == d])
    add_level([(IDENTITY, j) for j in range(N_INPUTS, first_hidden)])
    return tuple(levels)


def _levels_one(weight: jax.Array, inputs: jax.Array, levels: tuple[Level, ...]) -> jax.Array:
    """Pre-squash outputs f32[C, H*W] of one genome's weights f32[M, M] along ``levels``."""
    pieces = [inputs]  # each level's values, f32[len(nodes), H*W]
    for lvl in levels:
        # The sources as slices of the pieces (a layered genome's are whole pieces: see
        # plan), not a gather from an M-row array of every slot.
        if lvl.runs:
            src = jnp.concatenate([pieces[p][a:b] for p, a, b in lvl.runs])
            z = weight[np.ix_(np.array(lvl.sources), np.array(lvl.nodes))].T @ src
        else:  # nodes without inputs (an edge deleted by the GA) see 0
            z = jnp.zeros((len(lvl.nodes), inputs.shape[1]), jnp.float32)
        out, start = [], 0
        for a, n in lvl.groups:
            out.append(FNS[a](z[start : start + n]))
            start += n
        pieces.append(jnp.concatenate(out))
    return pieces[-1]


@functools.partial(jax.jit, static_argnames=("levels", "height", "width", "batch"))
def render_levels(
    weight: jax.Array,
    levels: tuple[Level, ...],
    height: int,
    width: int,
    batch: int | None = None,
) -> jax.Array:
    """Images of a population sharing the topology that ``levels`` was planned from.

    Args:
        weight: The genomes' weights, f32[P, M, M] (only the planned edges are read).
        levels: :func:`plan` of any one genome of the population (its last level holds
            the C outputs).
        height: Image height H.
        width: Image width W.
        batch: Genomes rendered together (vmapped); default :func:`genome_batch` (4 on
            CPU).

    Returns:
        f32[P, H, W, 3] in [0, 1], as :func:`render_graph` gives for these genomes.
    """
    inputs = pixel_inputs(height, width)
    values = N_INPUTS + sum(len(lvl.nodes) for lvl in levels)
    # Whole images. On CPU 4 genomes at a time: a genome's level is some 30 small ops (its
    # dot, then slices and activations a few rows each, then their concatenation), each a
    # separate pass whose fixed cost 4 genomes share: the ES's 200 layered genomes at
    # 224 x 224 took 370-420 ms in batches of 4 against 585-615 ms one at a time (2-core
    # Sapphire Rapids VM); whole-population vmaps and 2048-pixel passes were slower still.
    batch = batch or genome_batch(weight.shape[0], values * height * width, cpu=4)
    # (lax.map with batch_size=1 would still vmap every op over a batch axis of 1.)
    z = jax.lax.map(
        lambda w: _levels_one(w, inputs, levels), weight, batch_size=batch if batch > 1 else None
    )
    return squash(z, height, width, len(levels[-1].nodes))


class Planned(NamedTuple):
    """A renderer for populations sharing one topology (an ``Encoding``'s ``render``).

    Attributes:
        levels: :func:`plan` of the shared topology.
    """

    levels: tuple[Level, ...]

    def render(self, genomes: CPPNGenome, height: int, width: int) -> jax.Array:
        """Images f32[P, H, W, 3] in [0, 1] of genomes with the planned topology."""
        return render_levels(genomes.weight, self.levels, height, width)
