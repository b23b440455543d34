import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import export

from fooltools.evolve import cppn as cppn_mod
from fooltools.evolve import cppn_pallas, cppn_render
from fooltools.evolve.cppn import SFERES2, CPPNGenome, cppn, is_valid
from fooltools.evolve.es import ES_CPPN, ESConfig, make_strategy

P = 6
NO_MUTATION = dict.fromkeys((f for f in cppn_mod.CPPN._fields if f.startswith("rate_")), 0.0)
ENCODINGS = {
    "default": cppn(),
    "sferes2": cppn(**SFERES2),
    # Few slots, so add-neuron regularly finds the genome full; grayscale output.
    "small_gray": cppn(max_nodes=10, channels=1, init_hidden=1, activations=cppn_mod.ACTIVATIONS),
    # The evolution strategy's layered start, smaller and with free slots to grow into.
    "layered": cppn(
        **{**ES_CPPN, "max_nodes": 4 + 3 + 2 * 3 + 4, "init_hidden": 3, "init_layers": 2}
    ),
}
# Float32 vs float64 (or a different summation order): sferes2's weights up to 10 amplify
# rounding through chains of sines and gaussians.
ATOL = {"default": 1e-4, "sferes2": 2e-3, "small_gray": 1e-4, "layered": 2e-3}


def unbatch(genomes: CPPNGenome) -> list[CPPNGenome]:
    n = genomes.order.shape[0]
    return [jax.tree_util.tree_map(lambda a, i=i: np.asarray(a[i]), genomes) for i in range(n)]


MAX_STEPS = 200
# One render size for the tests of rendered images (the graph render compiles per size
# and encoding, ~2 s apiece): 12 x 20, not square, so a swapped height and width shows.
H, W = 12, 20


@functools.cache
def init_fn(enc):
    return jax.jit(jax.vmap(enc.init))


def population(enc, seed=0, n=P):
    return init_fn(enc)(jax.random.split(jax.random.key(seed), n))


def mutation_keys(seed, n=P):
    return jax.random.split(jax.random.key(seed), (MAX_STEPS, n))


@functools.cache
def evolve_fn(enc):
    """One compilation per encoding: the first `steps` of MAX_STEPS mutation rounds apply."""

    def run(keys, g, steps):
        def body(g, xs):
            i, k = xs
            new = jax.vmap(enc.mutate)(k, g)
            g = jax.tree_util.tree_map(lambda a, b: jnp.where(i < steps, a, b), new, g)
            return g, g

        return jax.lax.scan(body, g, (jnp.arange(MAX_STEPS), keys))

    return jax.jit(run)


def evolve(enc, g, steps, seed=1):
    """(final population, populations after each of the `steps` rounds)."""
    final, history = evolve_fn(enc)(mutation_keys(seed, g.order.shape[0]), g, steps)
    return final, jax.tree_util.tree_map(lambda a: a[:steps], history)


def acyclic(g: CPPNGenome) -> bool:
    """Kahn's algorithm on the edge matrix, independent of `order`."""
    conn = np.asarray(g.conn).copy()
    alive = np.ones(conn.shape[0], bool)
    while alive.any():
        sources = alive & ~conn[alive].any(axis=0)
        if not sources.any():
            return False
        alive &= ~sources
        conn[sources] = False
    return True


_NP_ACTS = (
    np.sin,
    lambda z: 2 / (1 + np.exp(-z)) - 1,
    lambda z: np.exp(-z * z),
    lambda z: np.clip(z, -3, 3) / 3,
    np.tanh,
    lambda z: np.minimum(np.abs(z), 3) / 3,
)


def reference_render(g: CPPNGenome, h: int, w: int, channels: int) -> np.ndarray:
    """Float64 recursive evaluation of the graph, ignoring `order` entirely."""
    y, x = np.meshgrid(
        (np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij"
    )
    values = {0: x, 1: y, 2: np.hypot(x, y) / np.sqrt(2), 3: np.ones_like(x)}
    outputs = range(4, 4 + channels)

    def value(j):
        if j not in values:
            z = sum(
                (g.weight[i, j] * value(i) for i in np.flatnonzero(g.conn[:, j])), np.zeros_like(x)
            )
            values[j] = z if j in outputs else _NP_ACTS[g.act[j]](z)
        return values[j]

    img = np.stack([(np.tanh(value(j)) + 1) / 2 for j in outputs], axis=-1)
    return np.broadcast_to(img, (h, w, 3))


def test_factory_validates():
    for bad in (
        {"channels": 2},
        {"max_nodes": 8},
        {"activations": ("relu",)},
        {"rate_add_conn": 1.5},
    ):
        with pytest.raises(ValueError):
            cppn(**bad)
    with pytest.raises(TypeError):
        cppn(no_such_field=1)
    assert cppn(activations=["sine"]).activations == ("sine",)


@pytest.mark.parametrize("name", ENCODINGS)
def test_init_is_valid(name):
    enc = ENCODINGS[name]
    g = population(enc)
    m = enc.max_nodes
    assert g.weight.shape == (P, m, m) and g.conn.shape == (P, m, m) and g.act.shape == (P, m)
    for one in unbatch(g):
        assert is_valid(one, channels=enc.channels, weight_limit=enc.weight_limit)
        assert one.active.sum() == 4 + enc.channels + enc.init_hidden * enc.init_layers


def test_layered_init_chains_layers_with_fan_in_weights():
    enc = cppn(**ES_CPPN)  # 4 inputs, 3 outputs, 3 layers of 16
    g = population(enc, n=64)
    layer = np.repeat([-1, 3, 0, 1, 2], [4, 3, 16, 16, 16])  # slot -> layer (outputs: 3)
    want = (layer[:, None] + 1 == layer[None, :]) | ((layer[:, None] == -1) & (layer == 3))
    assert (np.asarray(g.conn) == want).all()
    np.testing.assert_allclose(g.order[0], (layer + 1) / 4)
    w = np.asarray(g.weight)
    # Fan-in scaling: N(0, 1/fan_in), times input_gain 20 from the inputs into layer 0.
    first, hidden, out = w[:, :4, 7:23], w[:, 7:23, 23:39], w[:, 39:55, 4:7]
    for block, sd in ((first, 20 / 2), (hidden, 1 / 4), (out, 1 / np.sqrt(20))):
        assert abs(block.std() / sd - 1) < 0.05


@pytest.mark.parametrize("name", ENCODINGS)
def test_render_shape_range_and_reference(name):
    enc = ENCODINGS[name]
    g, _ = evolve(enc, population(enc), 30)
    img = enc.render(g, H, W)
    assert img.shape == (P, H, W, 3) and img.dtype == jnp.float32
    assert np.isfinite(img).all() and (img >= 0).all() and (img <= 1).all()
    for one, got in zip(unbatch(g), np.asarray(img), strict=True):
        np.testing.assert_allclose(got, reference_render(one, H, W, enc.channels), atol=ATOL[name])


def test_render_in_pixel_passes_matches_reference():
    # 48 x 50 = 2400 pixels: two passes of CHUNK = 2048, the second mostly padding.
    enc = ENCODINGS["layered"]
    g, _ = evolve(enc, population(enc), 10)
    assert 48 * 50 > cppn_render.CHUNK
    img = np.asarray(enc.render(g, 48, 50))
    for one, got in zip(unbatch(g), img, strict=True):
        np.testing.assert_allclose(got, reference_render(one, 48, 50, 3), atol=ATOL["layered"])


@pytest.mark.parametrize("name", ENCODINGS)
def test_level_render_of_any_topology_matches_reference(name):
    # Evolved genomes have ragged topologies: skip edges, nodes left without inputs.
    enc = ENCODINGS[name]
    g, _ = evolve(enc, population(enc), 30)
    graph = np.asarray(enc.render(g, H, W))
    for one, want in zip(unbatch(g), graph, strict=True):
        levels = cppn_render.plan(one, enc.channels)
        planned = cppn_render.Planned(levels)
        got = np.asarray(planned.render(jax.tree_util.tree_map(lambda a: a[None], one), H, W))
        np.testing.assert_allclose(got[0], want, atol=ATOL[name] / 10)  # sum order only
        np.testing.assert_allclose(
            got[0], reference_render(one, H, W, enc.channels), atol=ATOL[name]
        )


def test_level_render_of_the_es_population_matches_the_graph_render():
    # The evolution strategy's case: one plan, many weight vectors on its edges.
    enc = cppn(**ES_CPPN)
    center = jax.jit(enc.init)(jax.random.key(3))  # jitted as the ES does (not op by op)
    sample, _, _ = make_strategy(8, ESConfig(sigma=0.5))
    pop = sample(jax.random.key(4), center)
    levels = cppn_render.plan(center, enc.channels)
    assert [len(lvl.nodes) for lvl in levels] == [16, 16, 16, 3]
    assert [len(lvl.sources) for lvl in levels] == [4, 16, 16, 4 + 16]
    # Each level reads whole earlier levels, as one slice each (no gather, no row copies).
    assert [lvl.runs for lvl in levels] == [
        ((0, 0, 4),),
        ((1, 0, 16),),
        ((2, 0, 16),),
        ((0, 0, 4), (3, 0, 16)),
    ]
    got = cppn_render.Planned(levels).render(pop, 24, 20)
    np.testing.assert_allclose(got, enc.render(pop, 24, 20), atol=1e-5)


@pytest.mark.parametrize("name", ENCODINGS)
def test_batched_renders_match_one_genome_at_a_time(name):
    # The accelerators' path (vmapped batches of genomes, whole images), with a ragged
    # last batch (6 = 4 + 2), gives the CPU path's images up to the sums' order.
    enc = ENCODINGS[name]
    g, _ = evolve(enc, population(enc), 30)
    one_by_one = cppn_render.render_graph(g, H, W, enc.channels, batch=1)
    batched = cppn_render.render_graph(g, H, W, enc.channels, batch=4)
    np.testing.assert_allclose(batched, one_by_one, atol=ATOL[name] / 10)
    levels = cppn_render.plan(unbatch(g)[0], enc.channels)
    same = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a[:1], a.shape), g)
    np.testing.assert_allclose(
        cppn_render.render_levels(same.weight, levels, H, W, batch=4),
        cppn_render.render_levels(same.weight, levels, H, W, batch=1),
        atol=ATOL[name] / 10,
    )


@pytest.mark.parametrize("name", ENCODINGS)
def test_gpu_kernel_matches_the_xla_render(name):
    # The Pallas kernel (run by Pallas's interpreter here) renders evolved genomes of
    # every shape (grey, 10 to 55 slots, slot counts that are not powers of two, a size
    # that is not a multiple of its pixel block) as the XLA node loop does.
    enc = ENCODINGS[name]
    g, _ = evolve(enc, population(enc), 30)
    want = cppn_render.render_graph(g, H, W, enc.channels, batch=1)
    got = cppn_pallas.render_graph(g, H, W, enc.channels, interpret=True)
    np.testing.assert_allclose(got, want, atol=ATOL[name] / 10)


@pytest.mark.parametrize("name", ["layered", "small_gray"])
def test_gpu_levels_kernel_matches_the_xla_render(name):
    # The shared-topology kernel (Pallas's interpreter) against XLA's level render, for
    # the ES's layered genome and for evolved topologies (nodes whose edges the GA
    # deleted, grey output).
    enc = ENCODINGS[name]
    g, _ = evolve(enc, population(enc), 30)
    for genome in unbatch(g)[:1]:
        levels = cppn_render.plan(genome, enc.channels)
        same = jax.tree_util.tree_map(lambda a, x: jnp.broadcast_to(x, a.shape), g, genome)
        same = same._replace(weight=g.weight * genome.conn)  # its edges, others' weights
        want = cppn_render.render_levels(same.weight, levels, H, W)
        got = cppn_pallas.render_levels(same.weight, levels, H, W, interpret=True)
        np.testing.assert_allclose(got, want, atol=ATOL[name] / 10)


@pytest.mark.parametrize("kernel", ["graph", "levels"])
def test_gpu_kernels_lower_to_triton(kernel):
    # The kernels' lowering for CUDA (Triton IR), done here without a GPU: every
    # primitive they use must have a Triton lowering rule.
    enc = ENCODINGS["sferes2" if kernel == "graph" else "layered"]
    g = population(enc, n=3)
    if kernel == "graph":
        f = jax.jit(lambda g: cppn_pallas.render_graph(g, 224, 224, 3))
    else:
        levels = cppn_render.plan(unbatch(g)[0], enc.channels)
        f = jax.jit(lambda g: cppn_pallas.PlannedKernel(levels).render(g, 224, 224))
    check = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    module = export.export(f, platforms=["cuda"], disabled_checks=[check])(g).mlir_module()
    assert "xla.gpu.triton" in module and f"_{kernel}_kernel" in module


def test_gpu_kernel_only_on_cuda(monkeypatch):
    assert not cppn_pallas.available()  # CPU: the XLA render
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert cppn_pallas.available()
    monkeypatch.setenv("FOOLTOOLS_PALLAS", "0")
    assert not cppn_pallas.available()


def test_genome_batch(monkeypatch):
    assert cppn_render.genome_batch(400, 55 * 224 * 224) == 1  # CPU: one at a time
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    # At most 2^28 node values per batch (97 genomes of 55 x 224 x 224), in equal batches.
    assert cppn_render.genome_batch(400, 55 * 224 * 224) == 80  # 5 x 80, not 5 x 97
    assert cppn_render.genome_batch(200, 32 * 224 * 224) == 100  # 2 x 100, not 2 x 167
    assert cppn_render.genome_batch(8, 55 * 224 * 224) == 8
    assert cppn_render.genome_batch(8, 1 << 30) == 1
    for population in range(1, 300, 7):
        batch = cppn_render.genome_batch(population, 32 * 224 * 224)
        batches = -(-population // batch)
        assert batch <= 167 and batches * batch - population < batches


@pytest.mark.parametrize("name", ["default", "sferes2"])
def test_render_is_resolution_independent(name):
    # Pixel centres of an N grid are every third centre (offset 1) of a 3N grid (the
    # small grid is the shared H x W; the large one, 2160 pixels, two render passes).
    enc = ENCODINGS[name]
    g, _ = evolve(enc, population(enc), 30)
    small, big = enc.render(g, H, W), enc.render(g, 3 * H, 3 * W)
    np.testing.assert_allclose(big[:, 1::3, 1::3], small, atol=ATOL[name])


def test_grayscale_is_replicated():
    enc = ENCODINGS["small_gray"]
    img = np.asarray(enc.render(population(enc), H, W))
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()


def test_render_compiles_once_per_shape():
    enc = ENCODINGS["default"]
    before = cppn_render.render_graph._cache_size()
    enc.render(population(enc, 1), 13, 17)
    enc.render(population(enc, 2), 13, 17)
    assert cppn_render.render_graph._cache_size() == before + 1


@pytest.mark.parametrize("name", ENCODINGS)
def test_200_mutations_stay_valid(name):
    enc = ENCODINGS[name]
    _, history = evolve(enc, population(enc), 200)
    history = jax.tree_util.tree_map(np.asarray, history)
    for step in range(0, 200, 7):
        for one in unbatch(jax.tree_util.tree_map(lambda a, s=step: a[s], history)):
            assert is_valid(one, channels=enc.channels, weight_limit=enc.weight_limit)
            assert acyclic(one)
    sizes = history.active.sum(-1)
    assert (
        sizes.max() > 4 + enc.channels + enc.init_hidden * enc.init_layers
    )  # the topology did evolve
    assert sizes.max() <= enc.max_nodes


def test_add_and_delete_neuron():
    base = ENCODINGS["default"]._replace(**NO_MUTATION)
    n0 = 4 + 3 + base.init_hidden
    _, grow = evolve(base._replace(rate_add_neuron=1.0), population(base), 40)
    sizes = np.asarray(grow.active.sum(-1))  # (steps, P): one more node per step until full
    expected = np.minimum(n0 + np.arange(1, 41), base.max_nodes)[:, None]
    np.testing.assert_array_equal(sizes, np.broadcast_to(expected, sizes.shape))
    _, shrink = evolve(base._replace(rate_del_neuron=1.0), population(base), 5)
    sizes = np.asarray(shrink.active.sum(-1))
    expected = np.maximum(n0 - np.arange(1, 6), 7)[:, None]
    np.testing.assert_array_equal(sizes, np.broadcast_to(expected, sizes.shape))
    conn = np.asarray(shrink.conn[-1])
    assert not conn[:, 7:].any() and not conn[:, :, 7:].any()  # their edges went too


def test_add_and_delete_connection():
    base = ENCODINGS["default"]._replace(**NO_MUTATION)
    add_conn = base._replace(rate_add_conn=1.0)
    g = population(base)
    full, _ = evolve(add_conn, g, 1)  # init is complete feed-forward: nothing to add
    np.testing.assert_array_equal(full.conn, g.conn)
    g, _ = evolve(base._replace(rate_add_neuron=1.0), g, 5)
    e0 = np.asarray(g.conn.sum((1, 2)))
    _, hist = evolve(add_conn, g, 5)
    np.testing.assert_array_equal(hist.conn.sum((2, 3)), e0 + np.arange(1, 6)[:, None])
    final, _ = evolve(base._replace(rate_del_conn=1.0), g, 40)
    assert not final.conn.any() and not final.weight.any()


def test_zero_rates_change_nothing():
    enc = ENCODINGS["sferes2"]._replace(**NO_MUTATION)
    g = population(enc)
    final, _ = evolve(enc, g, 10)
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(g), strict=True):
        np.testing.assert_array_equal(a, b)


def test_vmap_matches_single():
    enc = ENCODINGS["default"]
    g, _ = evolve(enc, population(enc), 20)
    batched, _ = evolve(enc, g, 1, seed=5)
    keys = mutation_keys(5)[0]
    single = jax.jit(enc.mutate)
    for i, one in enumerate(unbatch(g)):
        expected = jax.tree_util.tree_map(lambda x, i=i: x[i], batched)
        for a, b in zip(single(keys[i], one), expected, strict=True):
            np.testing.assert_array_equal(a, b)
    init_keys = jax.random.split(jax.random.key(0), P)
    for a, b in zip(jax.jit(enc.init)(init_keys[2]), population(enc), strict=True):
        np.testing.assert_array_equal(a, b[2])
    # One genome renders the same alone as inside a population.
    one = jax.tree_util.tree_map(lambda x: x[2:3], g)
    np.testing.assert_array_equal(enc.render(one, H, W)[0], enc.render(g, H, W)[2])


def test_deterministic_and_diverse():
    enc = ENCODINGS["default"]
    g1, _ = evolve(enc, population(enc, seed=3), 10, seed=4)
    g2, _ = evolve(enc, population(enc, seed=3), 10, seed=4)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(enc.render(g1, H, W), enc.render(g2, H, W))
    img = np.asarray(enc.render(population(enc, seed=3), H, W))
    other = np.asarray(enc.render(population(enc, seed=9), H, W))
    assert np.abs(img - other).max() > 0.05
    diffs = [np.abs(img[i] - img[j]).mean() for i in range(P) for j in range(i)]
    assert min(diffs) > 0.01  # no two individuals of an initial population look alike


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(ENCODINGS)))
def test_random_lineages_stay_valid(seed, name):
    enc = ENCODINGS[name]
    final, _ = evolve(enc, population(enc, seed=seed), 60, seed=seed + 1)
    for one in unbatch(final):
        assert is_valid(one, channels=enc.channels, weight_limit=enc.weight_limit) and acyclic(one)
    img = enc.render(final, H, W)
    assert np.isfinite(img).all() and (img >= 0).all() and (img <= 1).all()


def test_is_valid_rejects_broken_genomes():
    enc = ENCODINGS["default"]
    g = unbatch(population(enc, n=1))[0]
    assert is_valid(g)
    hidden = 7  # an init hidden node, order 0.5
    broken = {
        "edge into an input": g._replace(
            conn=_set(g.conn, (5, 0), True), weight=_set(g.weight, (5, 0), 1.0)
        ),
        "backward edge": g._replace(
            conn=_set(g.conn, (4, hidden), True), weight=_set(g.weight, (4, hidden), 1.0)
        ),
        "edge from a free slot": g._replace(
            conn=_set(g.conn, (20, 4), True), weight=_set(g.weight, (20, 4), 1.0)
        ),
        "inactive output": g._replace(active=_set(g.active, 4, False)),
        "hidden at order 1": g._replace(order=_set(g.order, hidden, 1.0)),
        "NaN weight": g._replace(weight=_set(g.weight, (0, 4), np.nan)),
        "weight without edge": g._replace(weight=_set(g.weight, (20, 21), 1.0)),
        "unknown activation": g._replace(act=_set(g.act, hidden, 99)),
        "wrong dtype": g._replace(act=g.act.astype(np.int64)),
    }
    for why, bad in broken.items():
        assert not is_valid(bad), why
    assert not is_valid(g._replace(weight=_set(g.weight, (0, 4), 5.0)), weight_limit=3.0)


def _set(a, idx, v):
    a = np.array(a)
    a[idx] = v
    return a


def test_sine_matches_numpy_over_the_range_of_pre_activations():
    # |z| <= M x weight_limit (node values are in [-1, 1]): 55 x 100 for the ES genome.
    z = np.linspace(-6000, 6000, 1_200_001, dtype=np.float32)
    got = np.asarray(jax.jit(cppn_render._sine)(z), np.float64)
    np.testing.assert_allclose(got, np.sin(z.astype(np.float64)), rtol=0, atol=3e-7)
