"""A natural evolution strategy over a CPPN's weights: the default single-target search.

The paper's genetic algorithm (``run.evolve_single``, ``--strategy ga``) needs millions of
evaluations; on EfficientNet-Lite0 it reaches a few percent on robin in the budget of a
laptop. Evolution strategies (Salimans et al. 2017, "Evolution Strategies as a Scalable
Alternative to Reinforcement Learning") use the same black-box access far better: each
generation samples ``P`` mirrored perturbations ``center.weight +- sigma * eps`` of one
CPPN whose topology stays fixed (a layered genome, see :data:`ES_CPPN`), renders and
classifies them in one call, and moves the centre along ``sum_i rank_i * eps_i`` with
Adam. Only the confidences' ranks are used: no gradient of the network, so the images
are found by evolution as in the paper, just with a different selection rule. The paper's
algorithm, not its released code: no L2 weight decay (the code's ``l2coeff`` 0.005), and
the centre's weights are not clipped.

Randomness derives from ``fold_in(key, generation)``; the state (centre genome, Adam
moments, hall of fame) is checkpointed like the GA's, so a resumed run is bit-identical.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools import io, rng
from fooltools.errors import FoolError
from fooltools.evolve import checkpoint, cppn_pallas, search
from fooltools.evolve.cppn import CPPN, CPPNGenome
from fooltools.evolve.cppn_render import Planned, plan
from fooltools.evolve.run import (
    CHECKPOINT,
    HISTORY,
    Loop,
    Progress,
    best_template,
    check_classes,
    encoding_settings,
    genome_template,
    lookahead_by_default,
    record_best,
    run_length,
    single_summary,
    weights_digest,
)
from fooltools.evolve.search import SearchConfig
from fooltools.models.base import Classifier

# The genome the ES moves: 3 layers of 16 hidden nodes (sine, sigmoid, gaussian, linear),
# fan-in-scaled weights with high spatial frequencies out of the inputs (input_gain 20:
# N(0, 10^2) on x, y, d), so the first generation already has detail at many scales.
ES_CPPN: Mapping[str, Any] = MappingProxyType(
    {
        "max_nodes": 4 + 3 + 3 * 16,
        "init_hidden": 16,
        "init_layers": 3,
        "init_weight": "fan_in",
        "input_gain": 20.0,
        "weight_limit": 100.0,
    }
)


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Hyper-parameters of the evolution strategy.

    Attributes:
        sigma: Standard deviation of the weight perturbations (absolute, in weight units).
        learning_rate: Adam's step size on the centre's weights.
    """

    sigma: float = 0.02
    learning_rate: float = 0.02

    def __post_init__(self) -> None:
        # sigma 0 ran to the end on nan fitness after generation 1; nan gave a black image
        # with a best confidence of -1.
        for name in ("sigma", "learning_rate"):
            value = getattr(self, name)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (real and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@functools.lru_cache(maxsize=16)
def make_strategy(
    population: int, es: ESConfig
) -> tuple[Callable[..., CPPNGenome], Callable[..., Any], optax.GradientTransformation]:
    """``(sample, update, opt)`` for a population of ``population`` (even).

    ``sample(key, center) -> genomes`` stacks ``P`` copies of the centre with weights
    ``w +- sigma * eps`` on its edges (eps drawn from ``key``, the first half +, the
    second -). ``update(key, center, opt_state, fitness) -> (center, opt_state)`` redraws
    the same eps from ``key`` and takes one Adam step along the rank-weighted sum of the
    fitness (P,) or (P, 1); both are jitted. ``opt`` is that Adam, whose ``init`` gives
    the first ``opt_state``.
    """
    half = population // 2
    opt = optax.adam(es.learning_rate)

    def noise(key, center):
        eps = rng.normal(key, (half, *center.weight.shape))
        return eps * center.conn  # only existing edges move: the topology stays as it is

    @jax.jit
    def sample(key, center):
        eps = noise(key, center)
        weight = center.weight + es.sigma * jnp.concatenate([eps, -eps])
        pop = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (population, *a.shape)), center)
        return pop._replace(weight=weight)

    @jax.jit
    def update(key, center, opt_state, fitness):
        fitness = fitness.reshape(population)
        eps = noise(key, center)
        # Centred ranks in [-0.5, 0.5]: invariant to any monotone rescaling of the
        # confidences, so the step does not vanish while they are all near zero.
        ranks = jnp.argsort(jnp.argsort(fitness)).astype(jnp.float32) / (population - 1) - 0.5
        grad = jnp.tensordot(ranks[:half] - ranks[half:], eps, 1) / (population * es.sigma)
        step, opt_state = opt.update(-grad, opt_state)  # optax minimises: ascend the ranks
        return center._replace(weight=optax.apply_updates(center.weight, step)), opt_state

    return sample, update, opt


def plan_renderer(center: CPPNGenome, encoding: CPPN) -> search.Encoding:
    """The renderer of the populations sampled around ``center`` (its topology, planned).

    The topology never changes, so a population renders level by level (4.5x faster than
    the GA's node-by-node render of genomes that each have their own); on CUDA GPUs with
    the Pallas kernel generated from the plan.
    """
    levels = plan(center, encoding.channels)
    return cppn_pallas.PlannedKernel(levels) if cppn_pallas.available() else Planned(levels)


@functools.lru_cache(maxsize=16)
def make_generation(
    clf: Classifier, renderer: search.Encoding, population: int, es: ESConfig
) -> Callable[..., Any]:
    """One ES generation, as one call (see :func:`fooltools.evolve.search.fuse`).

    ``generation(key, g, center, opt_state, columns) -> (center, opt_state, images,
    conf)``: the ``population`` perturbations of ``center`` drawn with generation ``g``'s
    key, rendered by ``renderer`` (images (P, H, W, 3)) and scored for ``columns`` (K,)
    (conf (P, K)), and the centre and Adam state after the step they give.
    """
    sample, update, _ = make_strategy(population, es)

    def step(evaluate, key, gen, center, opt_state, columns):
        k_gen = search.generation_jax_key(key, gen)
        images, conf = evaluate(sample(k_gen, center), columns)
        return *update(k_gen, center, opt_state, conf), images, conf

    return search.fuse(clf, renderer, step)


def evolve_es(
    clf: Classifier,
    encoding: CPPN,
    enc_name: str,
    target: int,
    cfg: SearchConfig,
    es: ESConfig,
    *,
    seed: int,
    out: Path | str,
    resume: bool = False,
    checkpoint_every: int = 10,
    progress: Progress | None = None,
    lookahead: bool | None = None,
) -> dict[str, Any]:
    """Evolve one CPPN image that the classifier labels ``target`` (see the module doc).

    ``lookahead`` queues each generation before the previous one is collected (see
    :meth:`fooltools.evolve.run.Loop.run`; the same run bit for bit); None: on
    accelerators only.

    Returns:
        The same summary as :func:`fooltools.evolve.run.evolve_single`.

    Raises:
        FoolError: ``target`` not a class of ``clf``, a population that is odd or < 2,
            or a bad checkpoint on resume.
        ValueError: ``cfg`` sets a field the strategy does not use (elites, cxpb, ...).
        Interrupted: Ctrl-C, after saving the state (see :meth:`.run.Loop.run`).
    """
    cfg.check_used(("population", "generations", "stop_at"), "the evolution strategy")
    (target,) = check_classes(clf, [target])
    seed = operator.index(seed)
    out = Path(out)
    if cfg.population < 2 or cfg.population % 2:
        raise FoolError(
            f"the evolution strategy needs an even population >= 2, got {cfg.population}"
        )
    if cfg.generations < 1:
        # It scores only the samples of its generations: none left a black image, -1.
        raise FoolError(f"the evolution strategy needs generations >= 1, got {cfg.generations}")
    io.make_dir(out)
    key = jax.random.key(seed)
    opt = make_strategy(cfg.population, es)[2]
    meta = {
        "kind": "es",
        "model": clf.name,
        "weights": weights_digest(clf),
        "encoding": enc_name,
        "seed": seed,
        "classes": [target],
        "population": cfg.population,
        "sigma": es.sigma,
        "learning_rate": es.learning_rate,
    }
    settings = encoding_settings(encoding)
    loop = Loop(out, cfg.generations, checkpoint_every, progress)
    if resume:
        template = genome_template(encoding, 1)
        # Adam's moments are shaped as the centre's weights (the template's, unstacked).
        weight = jax.ShapeDtypeStruct(template.weight.shape[1:], template.weight.dtype)
        stacked, arrays, saved = checkpoint.load(
            out / CHECKPOINT,
            template,
            meta,
            state={
                "adam_count": jax.ShapeDtypeStruct((), np.int32),
                "adam_mu": weight,
                "adam_nu": weight,
                **best_template(clf),
            },
            settings=settings,
        )
        center = search.take(stacked, 0)
        fresh = opt.init(center.weight)  # (adam moments, empty scale state)
        adam = fresh[0]._replace(
            count=jnp.asarray(arrays["adam_count"]),
            mu=jnp.asarray(arrays["adam_mu"]),
            nu=jnp.asarray(arrays["adam_nu"]),
        )
        opt_state = (adam, *fresh[1:])
        state = {"best_image": arrays["best_image"], "best": arrays["best"]}
        start = saved["generation"]
        loop.resume_from(start)
    else:
        k_init = search.generation_jax_key(key, 0)
        center = encoding.init(k_init)
        opt_state = opt.init(center.weight)
        # The centre itself is never scored (only its perturbations are): an empty hall
        # of fame, filled by generation 1, spares compiling the evaluator for batch 1.
        h, w = clf.info.input_size
        state = {"best_image": np.zeros((h, w, 3), np.uint8), "best": np.array([-1.0, 0, 0])}
        start = 0
        (out / HISTORY).unlink(missing_ok=True)
    pop = {"center": center, "opt": opt_state}
    generation = make_generation(clf, plan_renderer(center, encoding), cfg.population, es)
    cols = jnp.asarray([target])

    # The last dispatched generation's centre and Adam state, device arrays that may still
    # be in flight: the next generation needs nothing from the host, so with lookahead it
    # is queued before this one is collected. ``pop`` is the last collected state.
    ahead = dict(pop)

    def step(gen: int) -> Callable[[], tuple[np.ndarray, int]]:
        center, opt_state, images, conf = generation(key, gen, ahead["center"], ahead["opt"], cols)
        ahead["center"], ahead["opt"] = center, opt_state

        def collect() -> tuple[np.ndarray, int]:
            fitness = np.asarray(conf)[:, 0]
            pop["center"], pop["opt"] = center, opt_state
            record_best(state, fitness, images, gen)
            return fitness, cfg.population

        return collect

    def save(gen: int) -> None:
        adam = pop["opt"][0]
        arrays = {
            **state,
            "adam_count": np.asarray(adam.count),
            "adam_mu": np.asarray(adam.mu),
            "adam_nu": np.asarray(adam.nu),
        }
        stacked = jax.tree_util.tree_map(lambda a: a[None], pop["center"])
        info = {**meta, **settings, **run_length(cfg), "generation": gen}
        checkpoint.save(out / CHECKPOINT, stacked, arrays, info)

    if not resume:
        save(0)
    if lookahead is None:
        lookahead = lookahead_by_default()
    last = loop.run(start, step, save, cfg.stop_at, lookahead=lookahead)
    return single_summary(state, last, loop, clf.info.input_size)
