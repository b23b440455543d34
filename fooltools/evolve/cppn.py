"""CPPN genome encoding of Nguyen, Yosinski & Clune (CVPR 2015), padded to fixed shapes.

A compositional pattern-producing network maps each pixel's coordinates to a colour.
Here a genome is a graph over ``M = max_nodes`` node slots held in fixed-shape arrays, so
populations are plain pytrees with a leading axis P that ``vmap``/``jit`` handle:

* slots ``0..3`` are the inputs x, y, d, bias (order 0, always active);
* slots ``4..4+C-1`` are the C outputs (order 1, always active);
* the rest are hidden slots, active or free, with an ``order`` strictly inside (0, 1).

An edge i -> j may exist only if both ends are active and ``order[i] < order[j]``, so
every genome is acyclic by construction and renders by visiting nodes in ``order``.

Inputs are sampled at pixel centres: x across the width and y down the height, both in
(-1, 1) regardless of the aspect ratio (a non-square render is the square one stretched,
so a genome means the same picture at any size); ``d = sqrt(x^2 + y^2) / sqrt(2)`` is in
[0, 1]. Outputs are squashed by ``(tanh(z) + 1) / 2``: with N(0, 1) weights on inputs in
[-1, 1] pre-activations are of order 1, where tanh already uses most of its range while
the (2x shallower) logistic sigmoid would give washed-out greys.

The defaults are NEAT/Picbreeder-style (N(0, 1) weights within [-3, 3], Gaussian weight
steps, weight-1 edge into a split node). The paper's own code (sferes2 configuration in
Evolving-AI-Lab/fooling) differs in ways that matter for the look of the images; the
:data:`SFERES2` overrides reproduce them: weights uniform in [-10, 10], polynomial
mutation of every weight with probability 0.1, and a split edge keeping its weight on
both new edges (a weight-1 edge into a squashing node shrinks the signal at each split,
so images fade under NEAT-style drift). Not reproduced: sferes2's "change connection"
moves an edge's endpoint (here it perturbs one weight), its outputs have activation
functions of their own, and it starts without hidden nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fooltools import rng
from fooltools.evolve import cppn_pallas
from fooltools.evolve.cppn_render import ACTIVATIONS, N_INPUTS, render_graph

_LINEAR = ACTIVATIONS.index("linear")
# Overrides for cppn(**SFERES2): the weight handling of the paper's sferes2 setup.
SFERES2: Mapping[str, Any] = MappingProxyType(
    {
        "weight_limit": 10.0,
        "init_weight": "uniform",
        "weight_mutation": "polynomial",
        "rate_weight_each": 0.1,
        "split": "sferes2",
    }
)


class CPPNGenome(NamedTuple):
    """One CPPN (or a population, with a leading axis P on every field).

    Attributes:
        weight: f32[M, M], ``weight[i, j]`` is the weight of edge i -> j (0 where no edge).
        conn: bool[M, M], whether edge i -> j exists.
        act: i32[M], index into :data:`ACTIVATIONS` (inputs, outputs, free slots: linear,
            unused; outputs are squashed by tanh instead).
        active: bool[M], whether the slot holds a node.
        order: f32[M], topological position: inputs 0, outputs 1, hidden in (0, 1).
    """

    weight: jax.Array
    conn: jax.Array
    act: jax.Array
    active: jax.Array
    order: jax.Array


def _tree_where(pred: jax.Array, a: CPPNGenome, b: CPPNGenome) -> CPPNGenome:
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def _pick(key: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A uniformly random True position of a flat ``mask``, and whether there was one."""
    scores = jnp.where(mask, rng.uniform(key, mask.shape), -1.0)
    return jnp.argmax(scores), mask.any()


class CPPN(NamedTuple):
    """The CPPN encoding; build it with :func:`cppn`. Fields are its hyper-parameters.

    Attributes:
        max_nodes: Node slots M per genome (4 inputs + ``channels`` outputs + hidden).
        channels: 3 (RGB) or 1 (grayscale, replicated to RGB by ``render``).
        init_hidden: Hidden nodes per layer of a fresh genome (see :meth:`init`).
        init_layers: Hidden layers of a fresh genome (1: the NEAT/Picbreeder start).
        activations: Names from :data:`ACTIVATIONS` that hidden nodes draw from; the
            default is the paper's (sferes2) set.
        rate_add_conn: Probability per mutate call of adding an edge (paper: 0.5).
        rate_del_conn: Of deleting an edge (paper: 0.3).
        rate_change_conn: Of perturbing one random weight (paper: 0.5).
        rate_add_neuron: Of splitting an edge with a new node (paper: 0.5).
        rate_del_neuron: Of deleting a hidden node and its edges (paper: 0.2).
        rate_change_act: Of redrawing one hidden activation (an addition to the paper).
        rate_weight_each: Probability for *every* weight to be perturbed, per call
            (sferes2's per-weight mutation: 0.1; 0 disables).
        weight_mutation: ``"gaussian"`` (add N(0, weight_sigma^2)) or ``"polynomial"``
            (sferes2's, on the [-weight_limit, weight_limit] range, index ``poly_eta``).
        weight_sigma: Step of the Gaussian weight mutation.
        poly_eta: Distribution index of the polynomial mutation (larger: smaller steps).
        weight_limit: Weights are clipped to [-weight_limit, weight_limit].
        init_weight: New weights: ``"normal"`` N(0, 1) (clipped), ``"uniform"`` over the
            whole [-weight_limit, weight_limit] range (sferes2), or ``"fan_in"``:
            N(0, 1 / fan_in) for a fresh genome's edges (``input_gain`` times that out of
            the inputs), N(0, 1) for edges added later.
        input_gain: With ``init_weight="fan_in"``, the scale of the weights from the
            inputs into hidden nodes: the spatial frequencies a fresh genome draws with.
        split: Weights of a split edge i -> j with weight w: ``"neat"`` i -(1)-> n -(w)-> j,
            ``"sferes2"`` i -(w)-> n -(w)-> j.
    """

    max_nodes: int = 32
    channels: int = 3
    init_hidden: int = 3
    init_layers: int = 1
    activations: tuple[str, ...] = ("sine", "sigmoid", "gaussian", "linear")
    rate_add_conn: float = 0.5
    rate_del_conn: float = 0.3
    rate_change_conn: float = 0.5
    rate_add_neuron: float = 0.5
    rate_del_neuron: float = 0.2
    rate_change_act: float = 0.1
    rate_weight_each: float = 0.0
    weight_mutation: str = "gaussian"
    weight_sigma: float = 0.5
    poly_eta: float = 15.0
    weight_limit: float = 3.0
    init_weight: str = "normal"
    input_gain: float = 1.0
    split: str = "neat"

    def init(self, key: jax.Array) -> CPPNGenome:
        """A random individual: inputs fully connected to outputs, plus hidden layers.

        Like NEAT/Picbreeder (and sferes2's ``ff`` init) every input feeds every output;
        ``init_layers`` layers of ``init_hidden`` hidden nodes (random activations) are
        chained fully connected from the inputs to the outputs, so the first generation
        shows patterns rather than linear gradients. Layer ``l`` of ``L`` sits at order
        ``(l + 1) / (L + 1)``.

        Args:
            key: PRNG key.

        Returns:
            A genome with fields of shapes [M, M], [M, M], [M], [M], [M].
        """
        m, h0, n = self.max_nodes, N_INPUTS + self.channels, self.init_hidden
        k_w, k_act = jax.random.split(key)
        idx = jnp.arange(m)
        is_in, is_out = idx < N_INPUTS, (idx >= N_INPUTS) & (idx < h0)
        layer = jnp.where(is_in, -1, jnp.where(is_out, self.init_layers, (idx - h0) // max(n, 1)))
        is_hid = (idx >= h0) & (idx < h0 + n * self.init_layers)
        first, last = is_hid & (layer == 0), is_hid & (layer == self.init_layers - 1)
        nxt = is_hid[:, None] & is_hid & (layer[:, None] + 1 == layer)
        conn = (is_in[:, None] & (is_out | first)) | (last[:, None] & is_out) | nxt
        weight = self._random_weight(k_w, (m, m))
        if self.init_weight == "fan_in":
            fan_in = jnp.maximum(conn.sum(0), 1)
            # The gain sets the frequencies hidden nodes see; input -> output edges keep
            # unit scale, or linear ramps would saturate the outputs.
            gain = jnp.where(is_in[:, None] & is_hid, self.input_gain, 1.0)
            weight = weight / jnp.sqrt(fan_in) * gain
            weight = jnp.clip(weight, -self.weight_limit, self.weight_limit)
        acts = self._random_act(k_act, (m,))
        order = (layer + 1) / (self.init_layers + 1)
        return CPPNGenome(
            weight=jnp.where(conn, weight, 0.0),
            conn=conn,
            act=jnp.where(is_hid, acts, _LINEAR).astype(jnp.int32),
            active=idx < h0 + n * self.init_layers,
            order=jnp.where(is_hid | is_in | is_out, order, 0.5).astype(jnp.float32),
        )

    def mutate(self, key: jax.Array, genome: CPPNGenome) -> CPPNGenome:
        """One mutated copy of one individual; pure and jittable, ``vmap`` it for a batch.

        Operators fire independently, each with its rate, in sferes2's order: weights,
        activation, add edge, delete edge, add node, delete node. One that finds nothing
        to act on (no free slot, no edge, no hidden node) leaves the genome as it is.

        Args:
            key: PRNG key.
            genome: One individual (unbatched fields).

        Returns:
            The mutated genome, same shapes and dtypes.
        """
        k_each, k_fire, k_ops = jax.random.split(key, 3)
        if self.rate_weight_each > 0:
            p_hit = rng.uniform(k_each, genome.conn.shape)
            hit = genome.conn & (p_hit < self.rate_weight_each)
            genome = self._perturb(jax.random.fold_in(k_each, 1), genome, hit)
        ops = (
            (self.rate_change_conn, self._change_conn),
            (self.rate_change_act, self._change_act),
            (self.rate_add_conn, self._add_conn),
            (self.rate_del_conn, self._del_conn),
            (self.rate_add_neuron, self._add_neuron),
            (self.rate_del_neuron, self._del_neuron),
        )
        fire = rng.uniform(k_fire, (len(ops),))
        for i, (k, (rate, op)) in enumerate(
            zip(jax.random.split(k_ops, len(ops)), ops, strict=True)
        ):
            if rate > 0:  # static: an operator that never fires is not even compiled
                genome = _tree_where(fire[i] < rate, op(k, genome), genome)
        return genome

    def render(self, genomes: CPPNGenome, height: int, width: int) -> jax.Array:
        """Images of a population (compiled once per P, H, W, M and channel count).

        Args:
            genomes: Genomes with a leading population axis P.
            height: Image height H.
            width: Image width W.

        Returns:
            f32[P, H, W, 3] in [0, 1]; a 1-channel CPPN's grey is replicated to RGB.
        """
        if cppn_pallas.available():  # CUDA GPUs: the node loop in registers
            return cppn_pallas.render_graph(genomes, height, width, self.channels)
        return render_graph(genomes, height, width, self.channels)

    # -- mutation operators: each (key, genome) -> genome, a no-op when inapplicable --

    def _random_act(self, key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
        ids = jnp.array([ACTIVATIONS.index(a) for a in self.activations], jnp.int32)
        return jax.random.choice(key, ids, shape)

    def _random_weight(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        lim = self.weight_limit
        if self.init_weight == "uniform":
            return rng.uniform(key, shape, -lim, lim)
        return jnp.clip(rng.normal(key, shape), -lim, lim)

    def _perturb(self, key: jax.Array, g: CPPNGenome, hit: jax.Array) -> CPPNGenome:
        """``g`` with the weights where ``hit`` (bool[M, M]) mutated."""
        w, lim = g.weight, self.weight_limit
        if self.weight_mutation == "gaussian":
            new = w + self.weight_sigma * rng.normal(key, w.shape)
        else:  # sferes2's evo_float: a step in [-1, 1] of the range, mostly small
            u = rng.uniform(key, w.shape)
            p = 1.0 / (self.poly_eta + 1.0)
            new = w + jnp.where(u < 0.5, (2 * u) ** p - 1, 1 - (2 * (1 - u)) ** p) * 2 * lim
        return g._replace(weight=jnp.where(hit, jnp.clip(new, -lim, lim), w))

    def _change_conn(self, key: jax.Array, g: CPPNGenome) -> CPPNGenome:
        k_pick, k_w = jax.random.split(key)
        e, _ = _pick(k_pick, g.conn.ravel())
        return self._perturb(k_w, g, g.conn & (jnp.arange(g.conn.size) == e).reshape(g.conn.shape))

    def _change_act(self, key: jax.Array, g: CPPNGenome) -> CPPNGenome:
        k_node, k_act = jax.random.split(key)
        n, ok = _pick(k_node, self._hidden(g))
        return _tree_where(ok, g._replace(act=g.act.at[n].set(self._random_act(k_act))), g)

    def _add_conn(self, key: jax.Array, g: CPPNGenome) -> CPPNGenome:
        k_pick, k_w = jax.random.split(key)
        fwd = g.active[:, None] & g.active & (g.order[:, None] < g.order)
        e, ok = _pick(k_pick, (fwd & ~g.conn).ravel())
        i, j = jnp.divmod(e, self.max_nodes)
        w = self._random_weight(k_w, ())
        new = g._replace(weight=g.weight.at[i, j].set(w), conn=g.conn.at[i, j].set(True))
        return _tree_where(ok, new, g)

    def _del_conn(self, key: jax.Array, g: CPPNGenome) -> CPPNGenome:
        e, ok = _pick(key, g.conn.ravel())
        i, j = jnp.divmod(e, self.max_nodes)
        new = g._replace(weight=g.weight.at[i, j].set(0.0), conn=g.conn.at[i, j].set(False))
        return _tree_where(ok, new, g)

    def _add_neuron(self, key: jax.Array, g: CPPNGenome) -> CPPNGenome:
        # Split an edge i -> j into i -> n -> j with n halfway in order, in the first free
        # slot. Float halving eventually makes the midpoint collide with an end; such
        # edges are not split, which keeps ``order`` strict (and the graph acyclic).
        k_edge, k_act = jax.random.split(key)
        mid = (g.order[:, None] + g.order) / 2
        splittable = g.conn & (g.order[:, None] < mid) & (mid < g.order)
        e, ok = _pick(k_edge, splittable.ravel())
        i, j = jnp.divmod(e, self.max_nodes)
        free = ~g.active & (jnp.arange(self.max_nodes) >= N_INPUTS + self.channels)
        n = jnp.argmax(free)
        w = g.weight[i, j]
        w_in = 1.0 if self.split == "neat" else w
        weight, conn = self._cleared(g, n)  # a reused slot may hold nothing stale
        new = CPPNGenome(
            weight=weight.at[i, j].set(0.0).at[i, n].set(w_in).at[n, j].set(w),
            conn=conn.at[i, j].set(False).at[i, n].set(True).at[n, j].set(True),
            act=g.act.at[n].set(self._random_act(k_act)),
            active=g.active.at[n].set(True),
            order=g.order.at[n].set(mid[i, j]),
        )
        return _tree_where(ok & free.any(), new, g)

    def _del_neuron(self, key: jax.Array, g: CPPNGenome) -> CPPNGenome:
        n, ok = _pick(key, self._hidden(g))
        weight, conn = self._cleared(g, n)
        new = CPPNGenome(
            weight=weight,
            conn=conn,
            act=g.act.at[n].set(_LINEAR),
            active=g.active.at[n].set(False),
            order=g.order.at[n].set(0.5),
        )
        return _tree_where(ok, new, g)

    def _hidden(self, g: CPPNGenome) -> jax.Array:
        return g.active & (jnp.arange(self.max_nodes) >= N_INPUTS + self.channels)

    @staticmethod
    def _cleared(g: CPPNGenome, n: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Weights and edges with node ``n``'s row and column removed."""
        weight = g.weight.at[n, :].set(0.0).at[:, n].set(0.0)
        return weight, g.conn.at[n, :].set(False).at[:, n].set(False)


def cppn(**hyper: Any) -> CPPN:
    """A validated :class:`CPPN` encoding, e.g. ``cppn(max_nodes=48)`` or ``cppn(**SFERES2)``.

    Args:
        **hyper: Keyword-only overrides of any :class:`CPPN` field.

    Raises:
        TypeError: An unknown hyper-parameter name.
        ValueError: An inconsistent hyper-parameter value.
    """
    enc = CPPN(**hyper)
    rates = [getattr(enc, f) for f in CPPN._fields if f.startswith("rate_")]
    bad = [
        f"{field} must be one of {allowed}"
        for field, allowed in (
            ("channels", (1, 3)),
            ("weight_mutation", ("gaussian", "polynomial")),
            ("init_weight", ("normal", "uniform", "fan_in")),
            ("split", ("neat", "sferes2")),
        )
        if getattr(enc, field) not in allowed
    ]
    hidden = enc.init_hidden * enc.init_layers
    if (
        enc.init_hidden < 0
        or enc.init_layers < 1
        or enc.max_nodes < N_INPUTS + enc.channels + hidden
    ):
        bad.append("max_nodes too small for the inputs, outputs and init_hidden x init_layers")
    if not enc.activations or not set(enc.activations) <= set(ACTIVATIONS):
        bad.append(f"activations must be a non-empty subset of {ACTIVATIONS}")
    if not all(0.0 <= r <= 1.0 for r in rates):
        bad.append("mutation rates must be in [0, 1]")
    if min(enc.weight_limit, enc.weight_sigma, enc.poly_eta, enc.input_gain) <= 0:
        bad.append("weight_limit, weight_sigma, poly_eta and input_gain must be > 0")
    if bad:
        raise ValueError("; ".join(bad))
    return enc._replace(activations=tuple(enc.activations))


def is_valid(genome: CPPNGenome, *, channels: int = 3, weight_limit: float | None = None) -> bool:
    """Whether one (unbatched) genome satisfies every invariant the encoding relies on.

    Checks shapes and dtypes, inputs/outputs active at order 0/1, hidden orders strictly
    inside (0, 1), edges only between active nodes and strictly forward in order (hence
    no edges into inputs or out of outputs, and no cycles), zero weights off the edges,
    finite (and, given ``weight_limit``, bounded) weights, known activations.
    """
    w, c, act, active, order = (np.asarray(a) for a in genome)
    m = order.shape[0]
    if not (w.shape == c.shape == (m, m) and act.shape == active.shape == order.shape == (m,)):
        return False
    io, hidden = np.arange(m) < N_INPUTS + channels, np.arange(m) >= N_INPUTS + channels
    forward = active[:, None] & active[None, :] & (order[:, None] < order[None, :])
    checks = (
        w.dtype == np.float32 and order.dtype == np.float32 and act.dtype == np.int32,
        c.dtype == np.bool_ and active.dtype == np.bool_,
        bool(active[io].all() and (order[:N_INPUTS] == 0).all()),
        bool((order[N_INPUTS : N_INPUTS + channels] == 1).all()),
        bool(((order[hidden & active] > 0) & (order[hidden & active] < 1)).all()),
        bool((c <= forward).all()),
        bool(np.isfinite(w).all() and (w[~c] == 0).all()),
        weight_limit is None or bool((np.abs(w) <= weight_limit).all()),
        bool(((act >= 0) & (act < len(ACTIVATIONS))).all()),
    )
    return all(checks)
