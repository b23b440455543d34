"""Evolution: operators, searches, checkpoints, outputs — on a tiny model (fast)."""

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from io import BytesIO, StringIO
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sharding_probe
from deap import tools
from PIL import Image
from sharding_probe import S
from test_cli import run as fool

from fooltools import io, rng, words
from fooltools.errors import FoolError, Interrupted
from fooltools.evolve import checkpoint, cli_support, es, report, search
from fooltools.evolve import run as run_module
from fooltools.evolve.cli_support import GenerationBar
from fooltools.evolve.cppn import cppn
from fooltools.evolve.cppn_render import Planned, plan
from fooltools.evolve.direct import direct, polynomial_mutation, sbx_crossover
from fooltools.evolve.es import ES_CPPN, ESConfig, evolve_es
from fooltools.evolve.run import HISTORY, Loop, evolve_map_elites, evolve_single
from fooltools.evolve.search import SearchConfig
from fooltools.models.base import WeightsFile

# One population size (and elite count) throughout: each new one compiles its own
# breeder and evaluator (~1-2 s apiece on CPU), which is most of this file's time.
P = 16
ES_TEST = ESConfig(sigma=0.05, learning_rate=0.05)
# One set of MAP-Elites cells throughout, for the same reason: each cell count compiled
# the archive's search again (~7 s apiece).
CELLS = [1, 15, 130]

# The direct operators jitted, as the breeder runs them: called op by op, each of their
# primitives compiled a program of its own per shape (~70 programs, 5 s in one test).
poly_jit = jax.jit(polynomial_mutation, static_argnames=("eta", "rate"))
sbx_jit = jax.jit(sbx_crossover, static_argnames=("eta", "rate"))


@pytest.fixture(scope="module")
def tiny():
    """A linear 'ImageNet' classifier on 12x12 images: fast to compile and to fool."""
    return sharding_probe.tiny()


# --- direct encoding operators -------------------------------------------------------


def test_polynomial_mutation_matches_deap_distribution():
    x = 0.3
    ours = np.asarray(poly_jit(jax.random.key(0), jnp.full(20000, x), eta=15, rate=1.0))
    random.seed(0)
    theirs = np.array(
        [
            tools.mutPolynomialBounded([x], eta=15, low=0.0, up=1.0, indpb=1.0)[0][0]
            for _ in range(20000)
        ]
    )
    assert abs(ours.mean() - theirs.mean()) < 3e-3
    assert abs(ours.std() - theirs.std()) < 3e-3
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert abs(np.quantile(ours, q) - np.quantile(theirs, q)) < 5e-3


def test_polynomial_mutation_equals_deap_given_the_same_draws(monkeypatch):
    # DEAP's mutPolynomialBounded (float64) fed, through random.random, our operator's
    # uniforms (at rate 1 every gene is mutated with the third key of the split).
    key, n = jax.random.key(6), 4000
    x = jax.random.uniform(jax.random.key(7), (n,))
    ours = np.asarray(poly_jit(key, x, eta=15, rate=1.0))
    u = np.asarray(jax.random.uniform(jax.random.split(key, 3)[2], (n,)), np.float64)
    draws = [v for ui in u.tolist() for v in (0.0, ui)]  # per gene: the coin, then u
    monkeypatch.setattr(random, "random", iter(draws).__next__)
    (theirs,) = tools.mutPolynomialBounded(
        np.asarray(x, np.float64).tolist(), eta=15, low=0.0, up=1.0, indpb=1.0
    )
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)


def test_sparse_polynomial_mutation_rate_and_step_distribution():
    # A Lite0-size genome at the paper's rate: each gene mutated independently with
    # probability 0.1 (binomial sd of the fraction: 7.7e-4), anywhere in the genome, and
    # the mutated genes move as DEAP's dense operator moves them.
    x = jnp.full((224, 224, 3), 0.3)
    runs = [poly_jit(jax.random.key(k), x, eta=15, rate=0.1) for k in range(4)]
    changed = np.stack([np.asarray(r) != 0.3 for r in runs])
    assert np.all(np.abs(changed.mean(axis=(1, 2, 3)) - 0.1) < 4 * 7.7e-4)
    for part in np.array_split(changed.reshape(4, -1), 8, axis=1):
        assert abs(part.mean() - 0.1) < 0.004  # no region favoured
    overlap = (changed[0] & changed[1]).mean()
    assert abs(overlap - 0.01) < 0.001  # independent draws across calls
    moved = np.concatenate([np.asarray(r)[c] for r, c in zip(runs, changed, strict=True)])
    dense = np.asarray(poly_jit(jax.random.key(9), jnp.full(60000, 0.3), eta=15, rate=1))
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert abs(np.quantile(moved, q) - np.quantile(dense[dense != 0.3], q)) < 5e-3


def test_sbx_matches_deap_distribution():
    a, b = 0.2, 0.6
    # DEAP recombines each gene pair with probability 0.5, our default rate.
    c1, c2 = sbx_jit(jax.random.key(1), jnp.full(20000, a), jnp.full(20000, b), eta=10)
    ours = np.concatenate([np.asarray(c1), np.asarray(c2)])
    random.seed(1)
    theirs = []
    for _ in range(10000):
        k1, k2 = tools.cxSimulatedBinaryBounded([a], [b], eta=10, low=0.0, up=1.0)
        theirs += [k1[0], k2[0]]
    theirs = np.array(theirs)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(ours, q) - np.quantile(theirs, q)) < 1e-2
    assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_sbx_equals_deap_given_the_same_draws(monkeypatch):
    # DEAP's cxSimulatedBinaryBounded (float64) fed, through random.random, the draws our
    # operator makes from its key: per gene the crossover coin, u and the swap coin, all
    # from one 32-bit word (bits 1-8, 9-31 and 0; rng.bits equals jax.random.bits).
    key, n = jax.random.key(3), 4000
    a = jax.random.uniform(jax.random.key(4), (n,))
    b = jax.random.uniform(jax.random.key(5), (n,))
    c1, c2 = sbx_jit(key, a, b, eta=10)
    bits = np.asarray(jax.random.bits(key, (n,), jnp.uint32))
    draws = []
    for w in bits.tolist():
        cross = ((w >> 1) & 0xFF) < 128
        draws.append(0.0 if cross else 1.0)
        if cross:  # DEAP draws u and the swap coin only for recombined pairs
            draws += [(w >> 9) * 2.0**-23, 0.0 if w & 1 else 1.0]
    monkeypatch.setattr(random, "random", iter(draws).__next__)
    d1, d2 = tools.cxSimulatedBinaryBounded(
        np.asarray(a, np.float64).tolist(), np.asarray(b, np.float64).tolist(), 10, 0.0, 1.0
    )
    # float32 against float64: 2 - u * alpha cancels as u * alpha nears 2 (7.7e-6 here).
    np.testing.assert_allclose(np.asarray(c1), d1, rtol=0, atol=2e-5)
    np.testing.assert_allclose(np.asarray(c2), d2, rtol=0, atol=2e-5)
    assert 0.4 < np.mean(np.asarray(c1) != np.asarray(a)) < 0.6  # about half recombined


def test_direct_encoding_valid_and_rate_zero_is_identity():
    enc = direct(height=8, width=6)
    # Jitted, as the searches run them (op by op: 77 programs compiled).
    g = jax.jit(jax.vmap(enc.init))(jax.random.split(jax.random.key(0), 4))
    img = jax.jit(enc.render, static_argnums=(1, 2))(g, 16, 12)
    assert img.shape == (4, 16, 12, 3) and float(img.min()) >= 0 and float(img.max()) <= 1
    m = jax.jit(jax.vmap(enc.mutate))(jax.random.split(jax.random.key(1), 4), g)
    assert m.shape == g.shape and float(m.min()) >= 0 and float(m.max()) <= 1
    changed = float((m != g).mean())
    assert 0.05 < changed < 0.15  # per-gene rate 0.1
    frozen = direct(height=8, width=6, mutation_rate=0.0)
    np.testing.assert_array_equal(frozen.mutate(jax.random.key(2), g[0]), g[0])


# --- searches -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["direct", "cppn"])
def test_single_target_search_improves_confidence(tiny, tmp_path, encoding):
    enc = direct(height=S, width=S) if encoding == "direct" else cppn()
    cfg = SearchConfig(population=P, generations=8, elites=2, stop_at=None)
    out = evolve_single(tiny, enc, encoding, 15, cfg, seed=0, out=tmp_path)
    hist = out["history"]
    assert len(hist) == 8
    assert hist[-1]["best"] > hist[0]["best"] * 1.2
    assert all(b["best"] >= a["best"] for a, b in zip(hist, hist[1:], strict=False))  # elitism


def test_evolution_strategy_improves_confidence(tiny, tmp_path):
    cfg = SearchConfig(population=P, generations=8, stop_at=None)
    out = evolve_es(tiny, cppn(**ES_CPPN), "cppn", 15, cfg, ES_TEST, seed=0, out=tmp_path)
    hist = out["history"]
    assert len(hist) == 8 and out["evaluations"] == 8 * P
    # The whole sampled population moves, not just a lucky best: the median climbs.
    assert hist[-1]["median"] > hist[0]["median"] * 1.2
    assert out["best_confidence"] == max(h["best"] for h in hist)


@pytest.mark.parametrize(
    "settings", [{"sigma": 0.0}, {"sigma": float("nan")}, {"learning_rate": -1}, {"sigma": "1"}]
)
def test_es_settings_that_cannot_search_are_refused(settings):
    # sigma 0 ran to the end on nan fitness; nan returned a black image at confidence -1.
    with pytest.raises(ValueError, match=r"must be a finite number > 0, got"):
        ESConfig(**settings)


def test_an_es_run_of_no_generations_is_refused(tiny, tmp_path):
    # It scores only its generations' samples: none reported a black image at -1.
    cfg = SearchConfig(population=P, generations=0, stop_at=None)
    with pytest.raises(FoolError, match="the evolution strategy needs generations >= 1, got 0"):
        evolve_es(tiny, cppn(**ES_CPPN), "cppn", 15, cfg, ES_TEST, seed=0, out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_class_outside_the_model_or_a_misspelt_selection_is_refused(tiny, tmp_path):
    # Class 1000 (or -1) of 1000 was clamped by the device gather: class 999 was evolved
    # under the name asked for. Any selection but "truncation" ran a tournament.
    cfg = SearchConfig(population=P, generations=1, elites=2, stop_at=None)
    no_elites = dataclasses.replace(cfg, elites=0)  # the ES's and MAP-Elites'
    n = len(tiny.labels)
    for bad in (n, -1):
        with pytest.raises(FoolError, match="class indices"):
            evolve_single(tiny, direct(height=S, width=S), "direct", bad, cfg, seed=0, out=tmp_path)
        with pytest.raises(FoolError, match="class indices"):
            evolve_es(tiny, cppn(**ES_CPPN), "cppn", bad, no_elites, ES_TEST, seed=0, out=tmp_path)
        with pytest.raises(FoolError, match="class indices"):
            evolve_map_elites(tiny, cppn(), "cppn", [0, bad], no_elites, seed=0, out=tmp_path)
    with pytest.raises(FoolError, match="no classes"):
        evolve_map_elites(tiny, cppn(), "cppn", [], no_elites, seed=0, out=tmp_path)
    with pytest.raises(ValueError, match="selection"):
        SearchConfig(selection="tournement")
    for bad in ({"elites": -1}, {"tournament": 0}, {"generations": -1}, {"cxpb": 1.5},
                {"stop_at": float("nan")}):  # fmt: skip
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            SearchConfig(**bad)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs",
    [{"height": 0}, {"width": 8.0}, {"eta_m": -1.0}, {"eta_c": -2.0}, {"mutation_rate": 1.5},
     {"crossover_rate": float("nan")}],
)  # fmt: skip
def test_direct_refuses_bad_hyper_parameters(kwargs):
    # eta_m = -1 made every mutation a no-op without a word; height 0 was jax's
    # "maxval must be in [1, 2^31)" from inside init.
    with pytest.raises(ValueError, match="must be"):
        direct(**kwargs)


def test_out_may_be_a_string_and_numbers_numpy_integers(tiny, tmp_path):
    # out="runs/x" was a TypeError ('str' / 'str') after the search had compiled, and a
    # class or seed from numpy (np.argmax) a JSON TypeError writing the run's meta.
    classes = run_module.check_classes(tiny, np.array([1, 2]))
    assert classes == [1, 2] and all(type(c) is int for c in classes)
    cfg = SearchConfig(population=P, generations=1, elites=2, stop_at=None)
    target, seed = np.int64(15), np.int64(0)
    out = evolve_single(
        tiny, direct(height=S, width=S), "direct", target, cfg, seed=seed, out=str(tmp_path)
    )
    assert out["generation"] == 1 and (tmp_path / run_module.HISTORY).exists()


# The CPPN has no crossover: its breeder only mutates each child, the same program for
# an even and an odd count, so 9 children cover 8 (a case cost ~15 s, compiling the
# breeder three ways). The direct encoding's even count returns before the odd child.
@pytest.mark.parametrize(("encoding", "children"), [("direct", 8), ("direct", 9), ("cppn", 9)])
def test_breeder_pairs_recombines_and_mutates_the_selected_parents(encoding, children):
    # The jitted breeder against the operators applied one family at a time, in both of
    # its forms (one pair at a time, as on CPU for large genomes, and vmapped). An odd
    # number of children (the CLI's population 101 less 2 elites) still mates its pairs,
    # as DEAP's varAnd does; only the last child is mutated alone.
    enc = direct(height=8, width=6) if encoding == "direct" else cppn()
    key = jax.random.key(4)
    pop = jax.jit(jax.vmap(enc.init))(jax.random.split(jax.random.key(1), 6))
    parents = jnp.array([5, 0, 2, 2, 3, 1, 4, 0, 3][:children])
    k_cx, k_mut, k_pair = jax.random.split(key, 3)
    mate = np.asarray(jax.random.uniform(k_pair, (4,)) < 0.5)
    assert mate.any() and not mate.all()  # both kinds of pair are checked
    k_cx, k_mut = jax.random.split(k_cx, 4), jax.random.split(k_mut, children)
    mutate = jax.jit(enc.mutate)  # the same operators, compiled once rather than op by op
    crossover = jax.jit(enc.crossover) if encoding == "direct" else None
    expected = []
    for i in range(4):
        x, y = (search.take(pop, parents[2 * i + j]) for j in (0, 1))
        if mate[i] and encoding == "direct":
            x, y = crossover(k_cx[i], x, y)
        expected += [mutate(k_mut[2 * i], x), mutate(k_mut[2 * i + 1], y)]
    if children % 2:
        expected.append(mutate(k_mut[8], search.take(pop, parents[8])))
    expected = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *expected)
    # The default (sequential=None) is one of these two forms: vmapped for genomes this
    # small (and on accelerators), the same program as False. The searches build it in
    # every run; compiling it here once more cost a third of this test.
    for sequential in (True, False):
        kids = search.make_breeder(enc, 0.5, sequential)(key, pop, parents)
        leaves = jax.tree_util.tree_leaves(kids), jax.tree_util.tree_leaves(expected)
        for got, want in zip(*leaves, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_python_seeds_in_blocks_equal_one_generation_at_a_time():
    # Seeds come 64 generations to a fetch; every generation's seed (and JAX key) must be
    # the one derived from that generation alone, whatever the order (resume starts
    # mid-block).
    key = jax.random.key(7)
    seeds = search.PythonSeeds(key)
    for gen in (0, 1, 63, 64, 130, 5, 200, 199):
        k_jax, k_py = jax.random.split(jax.random.fold_in(key, gen))
        assert seeds(gen) == int(jax.random.randint(k_py, (), 0, 2**31 - 1))
        got = search.generation_jax_key(key, gen)
        np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(k_jax))


def test_row_uint8_is_the_saved_png_rounding():
    uniform = jax.jit(rng.uniform, static_argnums=(1, 2, 3))  # = jax.random.uniform's
    images = uniform(jax.random.key(0), (3, 5, 4, 3), -0.2, 1.2)
    images = images.at[1, 0, 0].set(0.5 / 255)  # a tie: rounds to even, as numpy does
    np.testing.assert_array_equal(search.row_uint8(images, 1), io.to_uint8(images[1]))


def test_selection_individuals_carry_deap_fitness():
    # Individuals set DEAP's weighted values directly: they must compare, sort and
    # select exactly as ones built through the Fitness constructor.
    fit = [0.3, 0.9, 0.1, 0.9, 0.5]
    inds = [search.Individual(i, f) for i, f in enumerate(fit)]
    assert [ind.fitness.values for ind in inds] == [(f,) for f in fit]
    assert all(ind.fitness.valid for ind in inds)
    assert [i.index for i in tools.selBest(inds, 3)] == [1, 3, 4]
    random.seed(3)
    got = [i.index for i in tools.selTournament(inds, 8, tournsize=2)]
    ref = [_RefInd(i, f) for i, f in enumerate(fit)]
    random.seed(3)
    assert got == [i.index for i in tools.selTournament(ref, 8, tournsize=2)]


@pytest.mark.parametrize("selection", ["truncation", "tournament"])
def test_select_parents_equals_deap_over_the_whole_population(selection):
    # Truncation builds Individuals only for the candidates; the picks (ties included:
    # fitness on a coarse grid) must be DEAP's over all P individuals.
    gen = np.random.default_rng(0)
    for trial in range(40):
        p, elites = int(gen.integers(3, 40)), int(gen.integers(1, 6))
        if elites >= p:
            continue
        fitness = (gen.integers(0, 5, p) / 4).astype(np.float32)
        cfg = SearchConfig(population=p, elites=elites, selection=selection, tournament=2)
        random.seed(trial)
        inds = [_RefInd(i, float(f)) for i, f in enumerate(fitness)]
        best = tools.selBest(inds, elites)
        if selection == "truncation":
            chosen = [best[i % elites] for i in range(p - elites)]
        else:
            chosen = tools.selTournament(inds, p - elites, tournsize=2)
        want = [i.index for i in best], [i.index for i in chosen]
        got = search.select_parents(fitness, cfg, trial)
        assert [g.dtype for g in got] == [np.int32, np.int32]
        assert (got[0].tolist(), got[1].tolist()) == want
        if selection == "truncation":  # the device's picks (GA lookahead): DEAP's too
            dev = search.select_truncation(jnp.asarray(fitness), elites, p - elites)
            assert [d.dtype for d in dev] == [jnp.int32, jnp.int32]
            assert (dev[0].tolist(), dev[1].tolist()) == want


def test_selection_leaves_the_callers_random_stream_as_it_was():
    # DEAP draws from Python's global random, which the searches seeded for it: a script
    # calling random.random() after a search got another number than without one.
    random.seed(123)
    want = random.random()
    random.seed(123)
    cfg = SearchConfig(population=6, elites=1, selection="tournament", tournament=2)
    search.select_parents(np.arange(6, dtype=np.float32), cfg, 7)
    search.select_random(np.array([True, False, True]), 4, 7)
    assert random.random() == want


class _RefInd:
    def __init__(self, index, f):
        self.index, self.fitness = index, search._Fitness((f,))


def test_fused_generations_equal_their_parts(tiny):
    # One device: the GA's and the ES's generations are one jitted call each; each must
    # be the same generation as its jitted parts called one after another (as on
    # several devices, and as MAP-Elites runs).
    # Shapes and settings are the searches' below, so the fused calls compile once.
    def same(got, want):
        leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
        for g, w in zip(*leaves, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)

    key, enc, cols = jax.random.key(4), cppn(), jnp.asarray([15])
    genomes = jax.vmap(enc.init)(jax.random.split(jax.random.key(5), P))
    parents, elites = np.arange(P - 2, dtype=np.int32)[::-1], np.int32([3, 7])
    evaluate, breed = search.make_evaluator(tiny, enc), search.make_breeder(enc, 0.5)
    kids = breed(search.generation_jax_key(key, 9), genomes, parents)
    want = search.survivors(genomes, elites, kids), *evaluate(kids, cols)
    same(search.make_generation(tiny, enc, 0.5)(key, 9, genomes, parents, elites, cols), want)

    es_enc, es_cfg, cols = cppn(**ES_CPPN), ES_TEST, jnp.asarray([15])
    center = es_enc.init(search.generation_jax_key(jax.random.key(0), 0))
    renderer = Planned(plan(center, es_enc.channels))
    sample, update, opt = es.make_strategy(P, es_cfg)
    k_gen, opt_state = search.generation_jax_key(key, 9), opt.init(center.weight)
    images, conf = search.make_evaluator(tiny, renderer)(sample(k_gen, center), cols)
    want = *update(k_gen, center, opt_state, conf), images, conf
    same(es.make_generation(tiny, renderer, P, es_cfg)(key, 9, center, opt_state, cols), want)


def test_map_elites_never_replaces_an_elite_with_a_worse_one():
    archive = jnp.arange(5.0)[:, None]
    fitness = jnp.array([0.5, -1.0, 0.9, 0.2, 0.7])
    kids = jnp.arange(10.0, 13.0)[:, None]
    conf = jnp.array(
        [[0.4, 0.1, 0.95, 0.1, 0.7], [0.6, 0.0, 0.10, 0.3, 0.1], [0.1, 0.2, 0.20, 0.1, 0.1]]
    )
    new, fit, replaced = search.archive_update(archive, fitness, kids, conf)
    np.testing.assert_allclose(fit, [0.6, 0.2, 0.95, 0.3, 0.7])
    np.testing.assert_array_equal(new[:, 0], [11, 12, 10, 11, 4])  # a tie (0.7) keeps the elite
    np.testing.assert_array_equal(replaced, [True, True, True, True, False])


def test_a_map_elites_run_succeeds_only_with_every_cell_at_99(tiny, tmp_path, monkeypatch):
    # Every cell is filled from the first population on, so "all filled" badged a run
    # whose cells were at 0.04% a success.
    classes = CELLS
    cfg = SearchConfig(population=P, generations=1, elites=0, stop_at=None)
    out = evolve_map_elites(tiny, cppn(), "cppn", classes, cfg, seed=0, out=tmp_path)
    verdicts = []
    for at in (0.99, 0.98):  # the re-read confidence of the last cell
        probs = np.zeros((3, 1000), np.float32)
        probs[[0, 1, 2], classes] = [0.995, 0.999, at]
        monkeypatch.setattr(report, "probabilities", lambda clf, images, p=probs: p)
        rep = report.write_map_elites(tmp_path, tiny, classes, out, {"encoding": "cppn"})
        verdicts.append((rep["filled"], rep["cells_at_99"], rep["success"]))
    assert verdicts == [(3, 3, True), (3, 2, False)]
    assert 'class="badge failed"' in (tmp_path / "index.html").read_text()  # the last page


def test_map_elites_refuses_a_class_given_twice(tiny, tmp_path):
    # Two cells of one class: the report read "3/3 cells" beside two images, and its
    # median counted that class twice. (The CLI drops repeats before this.)
    cfg = SearchConfig(population=P, generations=1, elites=0, stop_at=None)
    with pytest.raises(FoolError, match=r"one archive cell: \[15\] given more than once"):
        evolve_map_elites(tiny, cppn(), "cppn", [15, 9, 15], cfg, seed=0, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_map_elites_fills_cells_and_fitness_never_drops(tiny, tmp_path):
    classes = CELLS
    cfg = SearchConfig(population=P, generations=6, elites=0, stop_at=None)
    out = evolve_map_elites(
        tiny, cppn(), "cppn", classes, cfg, seed=3, out=tmp_path, checkpoint_every=1
    )
    assert (out["fitness"] >= 0).all()
    assert out["images"].shape == (3, S, S, 3)
    best = [h["best"] for h in out["history"]]
    assert best == sorted(best)
    rep = report.write_map_elites(tmp_path, tiny, classes, out, {"encoding": "cppn"})
    assert rep["filled"] == 3 and (tmp_path / "index.html").is_file()
    assert len(list((tmp_path / "cells").glob("*.png"))) == 3
    # Each cell's PNG, re-read (all in one batched call), has its elite's confidence: the
    # search scored the 8-bit image it saves (captions cut to 0.1 percentage point).
    captions = {p["file"]: p["caption"] for p in rep["images"][1:]}
    for cls, fit in zip(classes, out["fitness"], strict=True):
        (name,) = [f for f in captions if f.startswith(f"cells/{cls:03d}-")]
        shown = float(captions[name].split()[-1].rstrip("%"))
        assert shown <= 100 * fit + 1e-4 < shown + 0.1
    assert rep["median_confidence"] == pytest.approx(np.median(out["fitness"]), abs=1e-6)


@pytest.mark.parametrize("stop", ["generations", "ctrl-c"])
@pytest.mark.parametrize("kind", ["single", "single-lookahead", "map-elites", "es", "es-lookahead"])
def test_resume_is_bit_identical(tiny, tmp_path, kind, stop):
    # *-lookahead: the interrupted and resumed run queues each generation before the
    # last is collected (as on GPUs), the whole run does not; same bytes either way.
    single = kind.startswith("single")
    cfg = SearchConfig(population=P, generations=6, elites=2 if single else 0, stop_at=None)
    enc = cppn(**ES_CPPN) if kind.startswith("es") else cppn()

    def run(out, generations, resume=False, progress=None):
        c = SearchConfig(**{**cfg.__dict__, "generations": generations})
        kw = {"seed": 1, "out": out, "resume": resume, "checkpoint_every": 2, "progress": progress}
        ahead = kind.endswith("lookahead") and out.name == "part"
        if kind.startswith("es"):
            return evolve_es(tiny, enc, "cppn", 15, c, ES_TEST, lookahead=ahead, **kw)
        if single:
            return evolve_single(tiny, enc, "cppn", 15, c, lookahead=ahead, **kw)
        return evolve_map_elites(tiny, enc, "cppn", CELLS, c, **kw)

    def ctrl_c_at_3(gen, best):
        # Generation 3's books are kept while generation 4 runs: the checkpoint must
        # still be generation 3's state, and its history line written.
        if gen == 3:
            raise KeyboardInterrupt

    whole = tmp_path / "whole"
    part = tmp_path / "part"
    run(whole, 6)
    if stop == "generations":
        run(part, 3)
    else:
        with pytest.raises(Interrupted, match="interrupted after generation 3; state saved"):
            run(part, 6, progress=ctrl_c_at_3)
    lines = (part / HISTORY).read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == [1, 2, 3]
    run(part, 6, resume=True)
    a = np.load(whole / "checkpoint.npz")
    b = np.load(part / "checkpoint.npz")
    assert a.files == b.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    w, p = ([json.loads(x) for x in (d / HISTORY).read_text().splitlines()] for d in (whole, part))
    assert [h["generation"] for h in p] == list(range(1, 7))
    assert [h["best"] for h in w] == [h["best"] for h in p]


def test_resume_after_a_kill_mid_history_line(tiny, tmp_path):
    # SIGKILL (or a power cut) while generation 4's line was being appended: the torn
    # line is dropped on resume and the run ends as an uninterrupted one.
    cfg = SearchConfig(population=P, generations=5, elites=2, stop_at=None)

    def run(out, generations, resume=False):
        c = SearchConfig(**{**cfg.__dict__, "generations": generations})
        kw = {"seed": 1, "out": out, "resume": resume, "checkpoint_every": 1}
        return evolve_single(tiny, cppn(), "cppn", 15, c, **kw)

    whole = run(tmp_path / "whole", 5)
    run(tmp_path / "part", 3)
    with open(tmp_path / "part" / HISTORY, "a") as log:
        log.write('{"generation": 4, "best": 0.0')
    resumed = run(tmp_path / "part", 5, resume=True)
    assert [h["best"] for h in resumed["history"]] == [h["best"] for h in whole["history"]]
    lines = (tmp_path / "part" / HISTORY).read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == [1, 2, 3, 4, 5]
    # Damage before the last line is not a torn write: refused, the file left as it is.
    damaged = "{broken\n" + "\n".join(lines[1:]) + "\n"
    (tmp_path / "part" / HISTORY).write_text(damaged)
    with pytest.raises(FoolError, match=r"corrupt .*history.jsonl \(line 1\); left untouched"):
        run(tmp_path / "part", 6, resume=True)
    assert (tmp_path / "part" / HISTORY).read_text() == damaged
    # JSON that is no generation's record, even last (a torn line is never JSON): refused.
    for bad in ("5", '{"gen": 3}', '{"generation": "3", "best": 0.1}'):
        edited = "\n".join([*lines, bad]) + "\n"
        (tmp_path / "part" / HISTORY).write_text(edited)
        with pytest.raises(FoolError, match=r"history.jsonl \(line 6: not a generation's rec"):
            run(tmp_path / "part", 6, resume=True)
        assert (tmp_path / "part" / HISTORY).read_text() == edited


def test_generation_bar_paces_the_time_left_from_the_first_generation_it_sees():
    # Resumed at generation 40 of 1000 after a 30 s compile: 2 s a generation from there.
    stream, now = StringIO(), [30.0]
    bar = GenerationBar(1000, "robin", stream=stream, clock=lambda: now[0])
    for gen, best in [(41, 0.1), (42, 0.25), (43, 0.5)]:
        bar(gen, {"best": best, "median": 0.0})
        now[0] += 2.0
    bar.close()
    frames = stream.getvalue().split("\r")[1:]
    assert frames[0] == "robin: generation 41/1000  best  10.00%"
    assert frames[2] == "robin: generation 43/1000  best  50.00%  0:04, 31:54 left\n"
    # MAP-Elites also shows the median cell: the paper's summary of a run.
    stream = StringIO()
    GenerationBar(5000, "MAP-Elites", median=True, stream=stream)(7, {"best": 1, "median": 0.25})
    assert stream.getvalue() == "\rMAP-Elites: generation 7/5000  best 100.00%  median  25.00%"
    # Short of a 99% stop, the bar does not show 99.00%.
    stream = StringIO()
    GenerationBar(5, "robin", stream=stream)(1, {"best": 0.98996, "median": 0.0})
    assert stream.getvalue() == "\rrobin: generation 1/5  best  98.99%"


def test_generation_bar_blanks_the_end_of_a_longer_line():
    # "\r" only moves back: drawn over "10:00, 10:00 left", "19:59, 0:00 left" read
    # "19:59, 0:00 leftt" on a terminal.
    stream, now = StringIO(), [0.0]
    bar = GenerationBar(3, "robin", stream=stream, clock=lambda: now[0])
    for gen, t in [(1, 0.0), (2, 600.0), (3, 1199.0)]:
        now[0] = t
        bar(gen, {"best": 0.5, "median": 0.0})
    frames = stream.getvalue().split("\r")[1:]
    assert frames[1] == "robin: generation 2/3  best  50.00%  10:00, 10:00 left"
    assert frames[2] == "robin: generation 3/3  best  50.00%  19:59, 0:00 left "


def test_progress_gets_each_generations_history_line(tiny, tmp_path):
    cfg = SearchConfig(population=P, generations=3, elites=0, stop_at=None)
    seen = []
    out = evolve_map_elites(
        tiny, cppn(), "cppn", CELLS, cfg, seed=0, out=tmp_path,
        progress=lambda gen, line: seen.append((gen, line)),
    )  # fmt: skip
    assert seen == [(h["generation"], h) for h in out["history"]] and len(seen) == 3


def test_a_full_disk_under_the_history_is_one_error(tmp_path):
    # history.jsonl on /dev/full: every write fails with ENOSPC, as on a full disk.
    (tmp_path / HISTORY).symlink_to("/dev/full")

    def step(gen):
        return lambda: (np.array([0.1 * gen]), 4)

    saved = []
    with pytest.raises(FoolError, match="No space left on device.*continue with --resume"):
        Loop(tmp_path, generations=3, checkpoint_every=1, progress=None).run(0, step, saved.append)
    # Generation 1's line failed, so no checkpoint got ahead of the history.
    assert saved == []


def _cppn_search(kind, tiny, cfg, out, resume=False):
    """The CPPN GA (``kind`` "ga") or ES ("es") search for class 15 on ``tiny``, seed 3.

    The ES keeps no elites: it runs ``cfg`` without them.
    """
    kw = {"seed": 3, "out": out, "resume": resume}
    if kind == "es":
        cfg = dataclasses.replace(cfg, elites=0)
        return evolve_es(tiny, cppn(**ES_CPPN), "cppn", 15, cfg, ES_TEST, **kw)
    return evolve_single(tiny, cppn(), "cppn", 15, cfg, **kw)


@pytest.mark.parametrize("kind", ["ga", "es"])
def test_ctrl_c_in_the_first_generation_leaves_a_run_to_resume(tiny, tmp_path, monkeypatch, kind):
    # Each search saves its first population before generation 1: Ctrl-C there says so
    # (not "nothing saved", with advice the CLI then refuses), and --resume ends where
    # an uninterrupted run ends.
    cfg = SearchConfig(population=P, generations=3, elites=2, stop_at=None)

    def run(out, resume=False):
        return _cppn_search(kind, tiny, cfg, out, resume)

    def interrupted(*args):
        raise KeyboardInterrupt

    run(tmp_path / "whole")
    part = tmp_path / "part"
    for module in (run_module, es):  # generation 1's collection, in either search
        monkeypatch.setattr(module, "record_best", interrupted)
    saved = re.escape(str(part / "checkpoint.npz"))
    with pytest.raises(Interrupted, match=rf"in generation 1; .* saved in {saved}, continue with"):
        run(part)
    monkeypatch.undo()
    run(part, resume=True)
    a, b = np.load(tmp_path / "whole/checkpoint.npz"), np.load(part / "checkpoint.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "whole" / HISTORY).read_text().count("\n") == 3
    w, p = ([json.loads(x)["best"] for x in (d / HISTORY).read_text().splitlines()]
            for d in (tmp_path / "whole", part))  # fmt: skip
    assert w == p


@pytest.fixture
def python_ctrl_c():
    """Python's own SIGINT handler for the test, however the suite was started.

    A shell script's ``make test &`` starts it with SIGINT ignored, which the evolution's
    interrupt gate rightly leaves ignored: the test's Ctrl-C was then lost.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_ctrl_c")
@pytest.mark.parametrize("kind", ["ga", "es"])
def test_ctrl_c_while_a_generation_is_collected_saves_one_generations_state(
    tiny, tmp_path, monkeypatch, kind
):
    # Ctrl-C landing between collect's updates of the state (here: the hall of fame,
    # after the population) saved generation 3's population as generation 2's: the
    # resumed run quietly differed from an uninterrupted one.
    cfg = SearchConfig(population=P, generations=5, elites=2, stop_at=None)

    def run(out, resume=False):
        return _cppn_search(kind, tiny, cfg, out, resume)

    record_best = run_module.record_best

    def ctrl_c_at_3(state, fitness, images, gen):
        if gen == 3:
            os.kill(os.getpid(), signal.SIGINT)
        record_best(state, fitness, images, gen)

    run(tmp_path / "whole")
    part = tmp_path / "part"
    for module in (run_module, es):
        monkeypatch.setattr(module, "record_best", ctrl_c_at_3)
    with pytest.raises(Interrupted, match="interrupted after generation 3; state saved"):
        run(part)
    monkeypatch.undo()
    assert checkpoint.read_meta(part / "checkpoint.npz")["generation"] == 3
    run(part, resume=True)
    a, b = np.load(tmp_path / "whole/checkpoint.npz"), np.load(part / "checkpoint.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    w, p = ([json.loads(x)["mean"] for x in (d / HISTORY).read_text().splitlines()]
            for d in (tmp_path / "whole", part))  # fmt: skip
    assert w == p


def test_ctrl_c_during_the_last_checkpoint_says_how_to_go_on(tiny, tmp_path, monkeypatch):
    # The end-of-run save (a generation count not a multiple of --checkpoint-every; a
    # 1000-cell direct archive takes seconds to write) was outside the handler: a bare
    # KeyboardInterrupt, no word of what was saved or of --resume.
    cfg = SearchConfig(population=P, generations=3, elites=2, stop_at=None)
    save = checkpoint.save

    def ctrl_c_once(path, genomes, arrays, meta):
        if meta["generation"] == 3 and not saves:
            saves.append(3)
            raise KeyboardInterrupt
        save(path, genomes, arrays, meta)

    saves = []
    monkeypatch.setattr(checkpoint, "save", ctrl_c_once)
    with pytest.raises(KeyboardInterrupt) as err:
        evolve_single(tiny, cppn(), "cppn", 15, cfg, seed=0, out=tmp_path)
    assert isinstance(err.value, Interrupted)
    assert "interrupted after generation 3; state saved" in str(err.value)
    assert checkpoint.read_meta(tmp_path / "checkpoint.npz")["generation"] == 3


def test_a_run_resumed_after_reaching_its_stop_runs_no_more(tiny, tmp_path):
    # Killed after its last checkpoint but before its outputs, or the same command run
    # again: the run has ended, and must not become a longer one on each resume.
    def run(out, stop_at, resume=False):
        cfg = SearchConfig(population=P, generations=8, elites=2, stop_at=stop_at)
        return evolve_single(tiny, direct(height=S, width=S), "direct", 15, cfg, seed=2,
                             out=out, resume=resume)  # fmt: skip

    stop_at = run(tmp_path / "free", None)["history"][3]["best"]
    first = run(tmp_path / "run", stop_at)
    assert first["generation"] < 8
    files = ("checkpoint.npz", HISTORY)
    before = {f: (tmp_path / "run" / f).read_bytes() for f in files}
    again = run(tmp_path / "run", stop_at, resume=True)
    assert again["generation"] == first["generation"]
    assert again["best_confidence"] == first["best_confidence"]
    assert {f: (tmp_path / "run" / f).read_bytes() for f in files} == before
    # A higher stop is a deliberate extension: that resume runs on.
    assert run(tmp_path / "run", 2.0, resume=True)["generation"] == 8


def evolve_options(out, **options):
    """``fool evolve --class robin --encoding direct`` for 3 generations of P (or ``options``).

    P, as the searches above: the CLI's GA on ``tiny`` (2 elites) is then their program,
    from the compile cache (a population of 4 compiled its own, ~5 s).
    """
    kw = {
        "target": "robin", "map_elites": False, "classes": None, "encoding": "direct",
        "strategy": None, "generations": 3, "population": P, "stop_at": 0.0, "seed": 0,
        "out_dir": str(out), "resume": False, "checkpoint_every": 1,
    }  # fmt: skip
    return {**kw, **options}


def test_a_resume_continues_the_run_as_it_was_started(tiny, tmp_path):
    # README's resume form gives only --class, --out and --resume: the run's length,
    # stop and population are its own, not the CLI's defaults (1000 generations, stop
    # at 99%, 100), which would silently make it another run.
    cli_support.run_job(tiny, cli_support.parse_job(**evolve_options(tmp_path)))
    left_out = {"generations": None, "population": None, "stop_at": None, "resume": True}
    job = cli_support.parse_job(**evolve_options(tmp_path, **left_out))
    assert (job.search.generations, job.search.population, job.search.stop_at) == (3, P, None)
    longer = evolve_options(tmp_path, **{**left_out, "generations": 5, "stop_at": 0.5})
    rep = cli_support.run_job(tiny, cli_support.parse_job(**longer))
    assert (rep["generations"], rep["stop_at"], rep["population"]) == (5, 0.5, P)
    job = cli_support.parse_job(**evolve_options(tmp_path, **left_out))
    assert (job.search.generations, job.search.stop_at) == (5, 0.5)


def test_a_resume_keeps_the_runs_own_strategy_and_cells(tiny, tmp_path):
    # README's resume form leaves the search out: a GA run's checkpoint was refused for
    # the ES default ("population must be even" with an odd one), and a MAP-Elites run's
    # for all 1000 cells (an error line listing 1000 indices).
    ga = tmp_path / "ga"
    checkpoint.save(ga / "checkpoint.npz", {}, {}, {"kind": "single", "population": 5})
    left_out = {"encoding": "cppn", "population": None, "resume": True}
    job = cli_support.parse_job(**evolve_options(ga, **left_out))
    assert (job.strategy, job.search.population) == ("ga", 5)
    # A left-out --encoding and --seed too (were refused as cppn and 0); else cppn and 0.
    meta = {"kind": "single", "encoding": "direct", "seed": 5}
    checkpoint.save(ga / "checkpoint.npz", {}, {}, meta)
    job = cli_support.parse_job(
        **evolve_options(ga, **{**left_out, "encoding": None, "seed": None})
    )
    assert (job.encoding, job.strategy, job.seed) == ("direct", "ga", 5)
    fresh = {"encoding": None, "seed": None, "out_dir": str(tmp_path / "new")}
    job = cli_support.parse_job(**evolve_options(tmp_path, **fresh))
    assert (job.encoding, job.strategy, job.seed) == ("cppn", "es", 0)
    assert (job.model, job.crops) == (None, 1)
    # And its model and --crops (the scorer's name in the checkpoint; were refused).
    checkpoint.save(ga / "checkpoint.npz", {}, {}, {**meta, "model": "tiny, mean of 10 crops"})
    job = cli_support.parse_job(**evolve_options(ga, **left_out))
    assert (job.model, job.crops) == ("tiny", 10)
    job = cli_support.parse_job(**evolve_options(ga, **left_out, crops=5))
    assert (job.model, job.crops) == ("tiny", 5)  # given: the checkpoint refuses it
    cells = {"target": None, "map_elites": True, "stop_at": None}
    run = cli_support.parse_job(**evolve_options(tmp_path, classes="ostrich,robin", **cells))
    cli_support.run_job(tiny, run)
    again = {**cells, "resume": True, "generations": 4}
    job = cli_support.parse_job(**evolve_options(tmp_path, **again))
    assert job.classes == (9, 15)
    # The same cells in another order are the same archive, in the checkpoint's order.
    job = cli_support.parse_job(**evolve_options(tmp_path, classes="robin,ostrich", **again))
    assert job.classes == (9, 15)
    assert cli_support.run_job(tiny, job)["generations_run"] == 4
    with pytest.raises(FoolError, match=r"classes = \[9, 15\], this run has \[15\]"):
        cli_support.run_job(tiny, cli_support.parse_job(**evolve_options(
            tmp_path, classes="robin", **again)))  # fmt: skip


GA, ES, ME = "--class NAME --strategy ga", "--class NAME --strategy es", "--map-elites"


@pytest.mark.parametrize(
    ("kind", "options", "there", "here"),
    [
        ("single", ["--class", "robin", "--strategy", "es"], GA, ES),
        ("es", ["--class", "robin", "--strategy", "ga"], ES, GA),
        ("map-elites", ["--class", "robin"], ME, ES),
        ("es", ["--map-elites"], ES, ME),
    ],
)
def test_a_resume_of_another_search_names_the_options(capsys, tmp_path, kind, options, there, here):
    # The checkpoint refused it as "kind = 'single', this run has 'es'", once the model
    # was loaded: in its own terms, not the command line's.
    checkpoint.save(tmp_path / "checkpoint.npz", {}, {}, {"kind": kind, "classes": [15]})
    code, _, err = fool(capsys, "evolve", *options, "--out", str(tmp_path), "--resume")
    assert code == 2 and f"holds a `{there}` run, not a `{here}` one; resume it with" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_resume_of_an_es_run_as_direct_blames_the_encoding(capsys, tmp_path):
    # The ES came from the checkpoint, but the line blamed a --strategy es never given.
    checkpoint.save(tmp_path / "checkpoint.npz", {}, {}, {"kind": "es", "encoding": "cppn"})
    options = ["--class", "robin", "--encoding", "direct", "--out", str(tmp_path), "--resume"]
    code, _, err = fool(capsys, "evolve", *options)
    assert code == 2 and "--strategy es" not in err.replace("(--strategy es)", "")
    assert f"{tmp_path} holds a CPPN run (--strategy es), not a direct one" in err
    assert len(err.strip().splitlines()) == 1
    # Given on the command line, it is the option that is wrong.
    code, _, err = fool(capsys, "evolve", *options, "--strategy", "es")
    assert code == 2 and err.startswith("error: --strategy es evolves one CPPN for one class")


def test_ctrl_c_while_writing_the_outputs_says_resume_writes_them(tiny, tmp_path, monkeypatch):
    # The search was over and saved, but the line was a bare "interrupted".
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "plot_history", interrupted)
    with pytest.raises(KeyboardInterrupt) as err:
        cli_support.run_job(tiny, cli_support.parse_job(**evolve_options(tmp_path)))
    assert isinstance(err.value, Interrupted)
    assert "while writing the outputs; the finished run is saved in" in str(err.value)
    monkeypatch.undo()
    job = cli_support.parse_job(**evolve_options(tmp_path, resume=True))
    assert cli_support.run_job(tiny, job)["generations_run"] == 3


def test_classes_all_is_every_class_in_any_case(tmp_path):
    cells = {"target": None, "map_elites": True, "stop_at": None, "generations": 1}
    for spelling in ("all", "ALL", " All "):
        job = cli_support.parse_job(**evolve_options(tmp_path, classes=spelling, **cells))
        assert job.classes == tuple(range(1000))


def test_the_weights_are_reported_and_a_resume_with_others_is_refused(tiny, tmp_path):
    # --weights: the report names the file, and the checkpoint its digest. Resuming
    # with other weights would change the network in mid-run.
    mine = dataclasses.replace(tiny, weights=WeightsFile("mine.pth", "0123456789abcdef"))
    rep = cli_support.run_job(mine, cli_support.parse_job(**evolve_options(tmp_path)))
    assert rep["weights"] == {"path": "mine.pth", "digest": "0123456789abcdef"}
    assert json.loads((tmp_path / "report.json").read_text())["weights"] == rep["weights"]
    before = (tmp_path / "checkpoint.npz").read_bytes()
    resume = cli_support.parse_job(**evolve_options(tmp_path, resume=True))
    with pytest.raises(FoolError, match=r"another run \(weights = '0123456789abcdef', this"):
        cli_support.run_job(tiny, resume)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert cli_support.run_job(mine, resume)["generations_run"] == 3


@pytest.mark.parametrize("search_kind", ["es", "ga-direct"])
def test_lookahead_stops_where_the_plain_loop_stops(tiny, tmp_path, search_kind):
    # A generation queued past the stop is discarded: the same last generation, history,
    # hall of fame and checkpoint as the loop that dispatches after each collection.
    # The GA's run (SBX and mutation) picks its parents on the device, DEAP checking.
    def run(out, lookahead, stop_at):
        elites = 0 if search_kind == "es" else 2
        cfg = SearchConfig(population=P, generations=8, elites=elites, stop_at=stop_at)
        kw = {"seed": 2, "out": out, "lookahead": lookahead}
        if search_kind == "es":
            return evolve_es(tiny, cppn(**ES_CPPN), "cppn", 15, cfg, ES_TEST, **kw)
        return evolve_single(tiny, direct(height=S, width=S), "direct", 15, cfg, **kw)

    free = run(tmp_path / "free", False, None)
    stop_at = free["history"][3]["best"]  # first reached at generation 4 or before
    first = next(h["generation"] for h in free["history"] if h["best"] >= stop_at)
    plain, ahead = run(tmp_path / "plain", False, stop_at), run(tmp_path / "ahead", True, stop_at)
    assert plain["generation"] == ahead["generation"] == first < 8
    assert [h["best"] for h in plain["history"]] == [h["best"] for h in ahead["history"]]
    np.testing.assert_array_equal(plain["best_image"], ahead["best_image"])
    a, b = np.load(tmp_path / "plain/checkpoint.npz"), np.load(tmp_path / "ahead/checkpoint.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_truncation_selection_without_elites_is_refused_before_the_run(tiny, tmp_path):
    # The elites parent every child: with none, generation 1 was a ZeroDivisionError
    # traceback after the first population had been saved in --out.
    cfg = SearchConfig(population=P, generations=1, elites=0)
    with pytest.raises(FoolError, match=r"truncation selection needs elites >= 1"):
        evolve_single(tiny, cppn(), "cppn", 15, cfg, seed=0, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kind", "setting", "named"),
    [
        ("es", {"elites": 5}, "elites=5"),
        ("es", {"cxpb": 0.9, "tournament": 2}, "tournament=2, cxpb=0.9: leave them out"),
        ("es", {"selection": "tournament"}, "selection='tournament'"),
        ("map-elites", {"elites": 3}, "elites=3"),
        ("map-elites", {"stop_at": 0.5}, "stop_at=0.5"),
    ],
)
def test_a_search_refuses_settings_it_does_not_use(tiny, tmp_path, kind, setting, named):
    # The ES ran as if elites=5 or cxpb=0.9 were not there, MAP-Elites as if stop_at were.
    cfg = SearchConfig(**{"population": P, "generations": 1, "elites": 0, **setting})
    with pytest.raises(ValueError, match=rf"does not use SearchConfig's {named}"):
        if kind == "es":
            evolve_es(tiny, cppn(**ES_CPPN), "cppn", 15, cfg, ES_TEST, seed=0, out=tmp_path / "r")
        else:
            evolve_map_elites(tiny, cppn(), "cppn", CELLS, cfg, seed=0, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_map_elites_resumes_whatever_elites_and_tournament_it_is_given(tiny, tmp_path):
    # Neither is MAP-Elites', but both were in its checkpoint: a run the CLI started
    # (elites 0) resumed from Python with SearchConfig's default elites was "another run".
    first = SearchConfig(population=P, generations=1, elites=0, stop_at=None)
    evolve_map_elites(tiny, cppn(), "cppn", CELLS, first, seed=0, out=tmp_path)
    more = SearchConfig(population=P, generations=2, stop_at=None)  # elites 10, tournament 3
    out = evolve_map_elites(tiny, cppn(), "cppn", CELLS, more, seed=0, out=tmp_path, resume=True)
    assert out["generation"] == 2


def test_ga_lookahead_needs_truncation_selection(tiny, tmp_path):
    # A tournament draws from Python's random on the host: the device cannot pick.
    cfg = SearchConfig(population=P, generations=1, elites=2, selection="tournament")
    with pytest.raises(ValueError, match="lookahead needs truncation selection"):
        evolve_single(tiny, cppn(), "cppn", 15, cfg, seed=0, out=tmp_path, lookahead=True)


def test_corrupt_checkpoint_is_refused_and_left_untouched(tiny, tmp_path):
    cfg = SearchConfig(population=P, generations=2, elites=2, stop_at=None)
    evolve_single(tiny, cppn(), "cppn", 15, cfg, seed=0, out=tmp_path)
    ck = tmp_path / "checkpoint.npz"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    before = ck.read_bytes()
    with pytest.raises(FoolError, match="corrupt checkpoint"):
        evolve_single(tiny, cppn(), "cppn", 15, cfg, seed=0, out=tmp_path, resume=True)
    assert ck.read_bytes() == before


def test_resume_with_another_runs_settings_or_fewer_generations_is_refused(tiny, tmp_path):
    cfg = SearchConfig(population=P, generations=2, elites=2, stop_at=None)
    evolve_single(tiny, cppn(), "cppn", 15, cfg, seed=0, out=tmp_path)
    # Without --resume the CLI refuses this --out too, so the advice is another --out.
    with pytest.raises(FoolError, match=r"another run \(classes = \[15\].*use another --out$"):
        evolve_single(tiny, cppn(), "cppn", 16, cfg, seed=0, out=tmp_path, resume=True)
    shorter = SearchConfig(population=P, generations=1, elites=2, stop_at=None)
    with pytest.raises(FoolError, match="has 2 generations already; resume it with --gen"):
        evolve_single(tiny, cppn(), "cppn", 15, shorter, seed=0, out=tmp_path, resume=True)


def test_a_resume_with_another_selection_is_refused(tiny, tmp_path):
    # The selection was not in the checkpoint: a tournament run resumed with truncation
    # (or the reverse) silently ran on as another run.
    tournament = SearchConfig(population=P, generations=1, elites=2, selection="tournament")
    evolve_single(tiny, cppn(), "cppn", 15, tournament, seed=0, out=tmp_path / "t")
    truncation = dataclasses.replace(tournament, generations=2, selection="truncation")
    with pytest.raises(
        FoolError, match=r"another run \(selection = 'tournament', this run has None"
    ):
        evolve_single(tiny, cppn(), "cppn", 15, truncation, seed=0, out=tmp_path / "t", resume=True)
    evolve_single(tiny, cppn(), "cppn", 15, dataclasses.replace(truncation, generations=1),
                  seed=0, out=tmp_path / "c")  # fmt: skip
    with pytest.raises(FoolError, match=r"another run \(selection = None, this run has 'tour"):
        evolve_single(tiny, cppn(), "cppn", 15, dataclasses.replace(tournament, generations=2),
                      seed=0, out=tmp_path / "c", resume=True)  # fmt: skip


def _rewrite_meta(path, edit):
    """Rewrite a checkpoint's meta blob with ``edit(meta)`` (arrays kept as they are)."""
    with np.load(path) as data:
        files = dict(data)
    meta = json.loads(files.pop("meta").tobytes())
    edit(meta)
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **files)


@pytest.mark.parametrize(
    ("kind", "other", "named"),
    [
        ("ga", {"weight_sigma": 0.3}, r"encoding_settings.weight_sigma = 0.5, this run has 0.3"),
        # Another genome size was "corrupt checkpoint (genome array 0)": now the setting.
        ("ga", {"max_nodes": 40}, r"encoding_settings.max_nodes = 32, this run has 40"),
        ("es", {"input_gain": 10.0}, r"encoding_settings.input_gain = 20.0, this run has 10.0"),
        ("map-elites", {"eta_m": 20.0}, r"encoding_settings.eta_m = 15.0, this run has 20.0"),
    ],
)
def test_a_resume_with_other_encoding_settings_is_refused(tiny, tmp_path, kind, other, named):
    # The encoding's hyper-parameters were not in the checkpoint: a run resumed with
    # other mutation rates went on as another run, without a word.
    cfg = SearchConfig(population=P, generations=1, elites=2 if kind == "ga" else 0)
    base = {"es": dict(ES_CPPN), "map-elites": {"height": S, "width": S}}.get(kind, {})

    def run(settings, resume, generations=1):
        c = dataclasses.replace(cfg, generations=generations)
        kw = {"seed": 0, "out": tmp_path, "resume": resume}
        if kind == "es":
            return evolve_es(tiny, cppn(**settings), "cppn", 15, c, ES_TEST, **kw)
        if kind == "map-elites":
            return evolve_map_elites(tiny, direct(**settings), "direct", CELLS, c, **kw)
        return evolve_single(tiny, cppn(**settings), "cppn", 15, c, **kw)

    run(base, resume=False)
    ck = tmp_path / "checkpoint.npz"
    before = ck.read_bytes()
    with pytest.raises(FoolError, match=rf"another run \({named}\); resume it with its own"):
        run({**base, **other}, resume=True, generations=2)
    assert ck.read_bytes() == before
    # A checkpoint written before the settings were recorded resumes as it did.
    _rewrite_meta(ck, lambda meta: meta.pop("encoding_settings"))
    assert run(base, resume=True, generations=2)["generation"] == 2
    # And one whose record is not an object is corrupt, not a traceback.
    _rewrite_meta(ck, lambda meta: meta.update(encoding_settings=[1]))
    with pytest.raises(FoolError, match=r"corrupt checkpoint .*\(encoding_settings is not an"):
        run(base, resume=True, generations=3)


def test_a_checkpoint_of_other_cells_is_refused_in_a_short_line(tmp_path):
    # --classes all against a 2-cell archive listed 1000 indices in the error line.
    ck = tmp_path / "checkpoint.npz"
    checkpoint.save(ck, {}, {}, {"kind": "map-elites", "classes": [9, 15]})
    with pytest.raises(FoolError) as err:
        checkpoint.load(ck, {}, {"kind": "map-elites", "classes": list(range(1000))})
    assert "this run has [0, 1, 2, ..., 999] (1000 items))" in str(err.value)
    assert "(classes = [9, 15]," in str(err.value) and len(str(err.value)) < 250


def test_checkpoint_never_unpickles(tmp_path):
    # A checkpoint holding an object array would need pickle: it must be refused.
    path = tmp_path / "checkpoint.npz"
    np.savez(
        path,
        meta=np.frombuffer(b'{"format": 1}', np.uint8),
        genome_0=np.array([object()], dtype=object),
    )
    template = jax.ShapeDtypeStruct((1,), jnp.float32)
    with pytest.raises(FoolError):
        checkpoint.load(path, template, {})


def test_checkpoint_with_a_huge_array_or_deep_meta_is_corrupt_not_a_traceback(tmp_path, huge_npz):
    # numpy allocates a member's declared shape before reading it: a header of 16 TiB
    # raised MemoryError, and a meta of nested lists RecursionError, through `--resume`.
    huge = huge_npz("meta")
    deep = tmp_path / "deep.npz"
    np.savez(deep, meta=np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8))
    for path in (huge, deep):
        before = path.read_bytes()
        with pytest.raises(FoolError, match="corrupt checkpoint"):
            checkpoint.read_meta(path)
        assert path.read_bytes() == before


def test_checkpoint_without_the_state_a_resume_reads_is_refused(tmp_path):
    # A checkpoint without fitness (or generation) resumed into a KeyError traceback.
    ck = tmp_path / "checkpoint.npz"
    fitness = {"fitness": jax.ShapeDtypeStruct((3,), np.float32)}
    checkpoint.save(ck, {}, {"best": np.zeros(3)}, {"kind": "single", "generation": 2})
    with pytest.raises(FoolError, match=r"corrupt checkpoint .*\(no fitness\); left untouched"):
        checkpoint.load(ck, {}, {"kind": "single"}, state=fitness)
    checkpoint.save(ck, {}, {"fitness": np.zeros(3)}, {"kind": "single", "generation": -1})
    with pytest.raises(FoolError, match=r"\(no generation\)"):
        checkpoint.load(ck, {}, {"kind": "single"}, state=fitness)
    checkpoint.save(ck, {}, {"fitness": np.zeros(3)}, {"kind": "single", "generation": 2})
    _, arrays, meta = checkpoint.load(ck, {}, {"kind": "single"}, state=fitness)
    # Saved as float64, read as the run's float32: a dtype of the same kind is cast.
    assert meta["generation"] == 2 and arrays["fitness"].dtype == np.float32


def _npz(path, members, compression=zipfile.ZIP_STORED, stored=()):
    """Write ``members`` (name -> array) as an .npz: compressed but those named ``stored``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in members.items():
            buf = BytesIO()
            np.save(buf, arr)
            how = zipfile.ZIP_STORED if name in stored else compression
            zf.writestr(f"{name}.npy", buf.getvalue(), compress_type=how)
    return path


@pytest.mark.parametrize(
    "make",
    [
        # An .npy under the name: np.load gave an array, and `with` a TypeError traceback.
        lambda p: np.save(open(p, "wb"), np.zeros(3)),
        # Meta entries of another type: TypeError tracebacks (unhashable kind; a float
        # population in JAX).
        lambda p: checkpoint.save(p, {}, {}, {"kind": ["single"]}),
        lambda p: checkpoint.save(p, {}, {}, {"kind": "single", "population": 3.5}),
        lambda p: checkpoint.save(p, {}, {}, {"kind": "single", "seed": True}),
        # A compressed member (np.savez stores them): 1 KB of bzip2 declared, and held, a
        # gigabyte, which numpy allocated before reading.
        lambda p: _npz(
            p, {"meta": np.frombuffer(b'{"format": 1}' + bytes(2**20), np.uint8)}, zipfile.ZIP_BZIP2
        ),  # fmt: skip
    ],
    ids=["npy", "kind-list", "population-float", "seed-bool", "bzip2"],
)
def test_a_checkpoint_that_is_not_ours_is_one_line(tmp_path, make):
    ck = tmp_path / "checkpoint.npz"
    make(ck)
    before = ck.read_bytes()
    with pytest.raises(FoolError, match=r"^corrupt checkpoint .*; left untouched$"):
        checkpoint.read_meta(ck)
    assert ck.read_bytes() == before
    # A member the resume never reads is not read (it was, whole, before any check).
    meta = np.frombuffer(b'{"format": 1}', np.uint8)
    _npz(ck, {"meta": meta, "other": np.zeros(2**20, np.uint8)}, zipfile.ZIP_BZIP2, ["meta"])
    assert checkpoint.read_meta(ck) == {"format": 1}


@pytest.mark.parametrize(
    ("kind", "name", "bad"),
    [
        ("single", "fitness", np.zeros(3, np.float32)),  # ran on, quietly, with 3 of 16
        ("single", "best", np.zeros(2)),  # IndexError
        ("single", "best_image", np.zeros((5, 5, 3), np.uint8)),  # saved as best.png
        ("single", "best", np.array(["a", "b", "c"])),  # TypeError
        ("map-elites", "evaluations", np.zeros(2, np.int64)),
        ("es", "adam_mu", np.zeros((3, 3), np.float32)),
        ("es", "adam_count", np.zeros((), np.float32)),
    ],
)
def test_a_checkpoint_whose_state_has_another_shape_is_corrupt(tiny, tmp_path, kind, name, bad):
    # The state arrays' shapes were not checked: a resume ran into a traceback or, worse,
    # on with the wrong state. The genome arrays were, and these are checked the same way.
    elites = 2 if kind == "single" else 0
    cfg = SearchConfig(population=P, generations=1, elites=elites, stop_at=None)
    longer = dataclasses.replace(cfg, generations=2)
    runs = {
        "single": lambda c, r: evolve_single(tiny, cppn(), "cppn", 15, c, seed=0, out=tmp_path,
                                             resume=r),
        "map-elites": lambda c, r: evolve_map_elites(tiny, cppn(), "cppn", CELLS, c, seed=0,
                                                     out=tmp_path, resume=r),
        "es": lambda c, r: evolve_es(tiny, cppn(**ES_CPPN), "cppn", 15, c, ES_TEST, seed=0,
                                     out=tmp_path, resume=r),
    }  # fmt: skip
    runs[kind](cfg, False)
    ck = tmp_path / "checkpoint.npz"
    with np.load(ck) as data:
        files = {k: data[k] for k in data.files}
    np.savez(ck, **{**files, f"state_{name}": bad})
    before = ck.read_bytes()
    with pytest.raises(FoolError, match=rf"corrupt checkpoint .*\({name} is .*\); left untouched"):
        runs[kind](longer, True)
    assert ck.read_bytes() == before


def test_figures_shown_are_cut_so_a_failed_run_never_reads_99(tiny, tmp_path, monkeypatch):
    # best.png re-read at 98.996%: rounded, its title, caption and metrics said 99.0%,
    # 99.00% and 0.99 beside success false.
    assert report.percent(0.98996, 1) == "98.9%" and words.cut(0.98996, 4) == 0.9899
    assert report.percent(0.99, 1) == "99.0%" and report.percent(np.float32(0.99), 2) == "99.00%"
    # A small confidence keeps two significant digits instead of reading as zero.
    small = [report.percent(c, 1) for c in (0.00034, 0.005, 0.0099999, 3.4e-9, 0.0)]
    assert small == ["0.034%", "0.50%", "0.99%", "3.4e-07%", "0.0%"]
    assert words.cut(0.99, 4) == 0.99  # 0.99 * 1e4 is 9899.999999999998 in floats
    cfg = SearchConfig(population=P, generations=1, elites=2, stop_at=None)
    out = evolve_single(tiny, direct(height=S, width=S), "direct", 15, cfg, seed=0, out=tmp_path)
    monkeypatch.setattr(report, "_confidence", lambda *args: 0.98996)
    rep = report.write_single(tmp_path, tiny, 15, out, {"encoding": "direct"})
    assert not rep["success"] and rep["title"] == "robin (direct) 98.9%"
    assert rep["images"][0]["caption"] == "robin 98.99%" and rep["metrics"]["confidence"] == 0.9899
    # And the metrics' confidence of a run that barely moved is not 0 beside its title.
    monkeypatch.setattr(report, "_confidence", lambda *args: 5.8e-05)
    rep = report.write_single(tmp_path, tiny, 15, out, {"encoding": "direct"})
    assert rep["title"] == "robin (direct) 0.0058%" and rep["metrics"]["confidence"] == 5.8e-05
    assert "<td>5.8e-05</td>" in (tmp_path / "index.html").read_text()
    assert [words.figure(v) for v in (0.123456, 0.0123456, 0.00123456, 0.0)] == [
        0.1235,
        0.0123,
        0.0012,
        0.0,
    ]
    assert words.figure(0.98996, cut_down=True) == 0.9899 and words.figure(0.98996) == 0.99


def test_the_plot_of_a_one_generation_run_shows_its_confidences(tmp_path):
    # A line needs two points: a run of one generation drew an empty plot beside its report.
    line = {"generation": 1, "best": 0.9, "median": 0.5, "mean": 0.3}
    plot = np.asarray(Image.open(report.plot_history([line], tmp_path / "c.png", "t")))
    inside = plot[30:-40, 55:]  # within the axes (x = 1 is the right edge), not the legend
    for colour in ((200, 30, 30), (30, 30, 200), (30, 150, 30)):
        assert (inside == colour).all(-1).any(), colour
    # The axis labels are apart: 0.99's, 3 pixels under 1.00's, was drawn over it.
    dark = (plot[:, :48] < 128).all(-1).any(1)
    bands = np.flatnonzero(np.diff(dark.astype(int)))  # where each label's rows start, end
    heights = bands[1::2] - bands[0::2]
    assert len(heights) == 5 and heights.max() == heights.min(), heights


def test_single_outputs_report_the_saved_file(tiny, tmp_path):
    cfg = SearchConfig(population=P, generations=3, elites=2, stop_at=None)
    out = evolve_single(tiny, direct(height=S, width=S), "direct", 15, cfg, seed=0, out=tmp_path)
    rep = report.write_single(tmp_path, tiny, 15, out, {"encoding": "direct"})
    assert abs(rep["best_confidence"] - rep["best_confidence_in_search"]) <= 0.01
    # The rate is over the timed generations: the first population's scoring is not in
    # the seconds (the rate counted its evaluations all the same).
    assert rep["evaluations"] == P + 3 * (P - 2)
    # Over the run's own seconds: the history's are rounded to 0.1 ms, a few % of a
    # generation of the tiny model.
    rate = 3 * (P - 2) / out["seconds"]
    assert rep["evaluations_per_second"] == pytest.approx(rate, rel=0.01)
    for name in ("best.png", "confidence.png", "report.json", "index.html", "history.jsonl"):
        assert (tmp_path / name).is_file(), name


# --- the command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--class", "robn"], "robin (15)"),
        (["--class", "robin", "--population", "1"], "population must be >= 2"),
        (["--class", "robin", "--generations", "0"], "generations must be >= 1"),
        ([], "exactly one of --class NAME or --map-elites"),
        (["--map-elites", "--classes", "robin,ostrch"], "ostrich (9)"),
        (["--class", "robin", "--resume"], "--resume needs --out"),
        (["--class", "robin", "--population", "5"], "population must be even"),
        (["--class", "robin", "--encoding", "direct", "--strategy", "es"], "use it with --class"),
        (["--map-elites", "--strategy", "es"], "use it with --class"),
        (["--class", "robin", "--classes", "robin,ostrich"], "--classes is for --map-elites"),
        (["--map-elites", "--stop-at", "0.5"], "--stop-at is for --class"),
        (["--map-elites", "--classes", ""], "--classes is empty"),  # an unset "$CLASSES"
        (["--map-elites", "--classes", "robin,ALL"], "--classes all stands alone"),
        (["--class", "robin", "--out", ""], "--out is empty"),  # not the current directory
        (["--class", "robin", "--population", "3000000000"], "population must be at most"),
        (["--class", "robin", "--generations", "3000000000"], "generations must be at most"),
    ],
)
def test_bad_evolve_arguments(capsys, args, fragment):
    code, _, err = fool(capsys, "evolve", *args)
    assert code == 2 and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_population_that_cannot_fit_in_memory_is_one_line(capsys, tmp_path):
    # 4M images of 224 x 224 are 2.2 TiB of float32 before the classifier's activations:
    # refused before the run starts, instead of a kernel OOM kill or an XLA traceback.
    out = tmp_path / "run"
    code, _, err = fool(capsys, "evolve", "--class", "robin", "--population", "4000000",
                        "--out", str(out))  # fmt: skip
    assert code == 2 and "a population of 4000000 needs at least 2243.0 GiB" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_resume_of_corrupt_checkpoint_via_cli(capsys, tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 garbage")
    code, _, err = fool(capsys, "evolve", "--class", "robin", "--out", str(tmp_path), "--resume")
    assert code == 2 and "corrupt checkpoint" in err
    assert (tmp_path / "checkpoint.npz").read_bytes() == b"PK\x03\x04 garbage"


def test_resume_without_a_checkpoint_is_refused_before_the_run(capsys, tmp_path, monkeypatch):
    # A mistyped --out: refused before the model's load, and not made as an empty run.
    out = tmp_path / "typo"
    monkeypatch.setattr("fooltools.models.load_model", lambda *a, **k: pytest.fail("loaded"))
    code, _, err = fool(capsys, "evolve", "--class", "robin", "--out", str(out), "--resume")
    assert code == 2 and f"no checkpoint to resume from: {out / 'checkpoint.npz'}" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_an_out_that_holds_a_run_is_not_started_afresh(capsys, tmp_path):
    # Forgetting --resume after a long run was stopped must not overwrite its checkpoint.
    (tmp_path / "checkpoint.npz").write_bytes(b"a stopped run's state")
    (tmp_path / HISTORY).write_text('{"generation": 1}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for mode in (["--class", "robin"], ["--map-elites", "--classes", "robin,ostrich"]):
        code, _, err = fool(capsys, "evolve", *mode, "--generations", "2", "--out", str(tmp_path))
        assert code == 2 and "already holds a run" in err and "--resume" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_finished_run_without_its_checkpoint_is_not_overwritten(capsys, tmp_path):
    # A finished run whose checkpoint.npz was deleted to save space (or a fool perturb
    # run) was silently overwritten by a fresh run into the same --out.
    (tmp_path / "report.json").write_text('{"kind": "evolve"}')
    (tmp_path / "best.png").write_bytes(b"a finished run's image")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for mode in (["--class", "robin"], ["--map-elites", "--classes", "robin,ostrich"]):
        code, _, err = fool(capsys, "evolve", *mode, "--generations", "1", "--population", "2",
                            "--out", str(tmp_path))  # fmt: skip
        assert code == 2 and "already holds a run (report.json)" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_out_that_cannot_be_made_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("in the way")
    out = tmp_path / "file" / "run"
    # Each search (ES, GA, MAP-Elites) makes its own run directory.
    searches = (["--class", "robin"], ["--class", "robin", "--strategy", "ga"], ["--map-elites"])
    for mode in searches:
        code, _, err = fool(capsys, "evolve", *mode, "--generations", "1", "--out", str(out))
        assert code == 2 and f"cannot create directory {out}" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_evolve_end_to_end_on_lite0_stopped_by_sigterm_and_resumed(capsys, tmp_path):
    # `fool evolve` in its own process, stopped as a scheduler (or `kill`, `timeout`)
    # stops a long search: the last finished generation's state is saved, one line says
    # so, exit code 2. Then --resume, in this process, finishes the run.
    args = ["evolve", "--class", "robin", "--population", "4", "--seed", "1"]
    cmd = [sys.executable, "-c", "from fooltools.cli import main; main()"]
    proc = subprocess.Popen(
        [*cmd, *args, "--generations", "100000", "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    history = tmp_path / HISTORY
    deadline = time.monotonic() + 300
    while not (history.is_file() and history.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    match = re.fullmatch(
        r"error: interrupted after generation (\d+); state saved in (.+), .*", err.strip()
    )
    assert match and "Traceback" not in err, err
    done = int(match[1])
    assert Path(match[2]) == tmp_path / "checkpoint.npz"
    assert len(history.read_text().splitlines()) == done >= 2

    code, out, _ = fool(
        capsys, *args, "--generations", str(done + 1), "--out", str(tmp_path), "--resume"
    )
    assert code == 0, out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["target"] == {"index": 15, "label": "robin"}
    assert rep["strategy"] == "es"  # the default for one class with the CPPN encoding
    assert rep["generations_run"] == done + 1 and rep["evaluations"] == (done + 1) * 4
    assert abs(rep["best_confidence"] - rep["best_confidence_in_search"]) <= 0.01
    assert len(history.read_text().splitlines()) == done + 1
