"""Szegedy et al. (ICLR 2014), "Intriguing properties of neural networks".

Two solvers of the seed formulation:

* :func:`szegedy`: ``min_r ||softmax(NN(I + r)) - S||^2 + lambda ||r||^2`` by gradient
  descent with any optax optimiser, projected onto the box ``I + r in [0, 1]``; ``S``
  is the one-hot target (targeted) or, untargeted, the squared distance to the true
  class's one-hot is maximised instead.
* :func:`lbfgs`: the paper's attack, ``min_r c |r|^2 + loss_f(I + r, l)`` by L-BFGS
  with a search over ``c`` for the largest constant (smallest perturbation) whose
  minimiser is still classified ``l``. The box constraint is enforced by the change of
  variables ``I + r = (tanh(w) + 1) / 2`` rather than by L-BFGS-B's active set (optax has
  no bound-constrained L-BFGS); the feasible set is the same.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from fooltools import io
from fooltools.attacks import base


def szegedy(
    model: base.Model,
    params: base.Params,
    *,
    lam: float = 0.01,
    steps: int = 100,
    optimizer: optax.GradientTransformation | None = None,
    targeted: bool = True,
    quantize: bool = True,
) -> base.Run:
    """Build the gradient-descent solver of Szegedy et al.'s formulation.

    Args:
        model: ``model(params, x) -> logits`` on (N, H, W, 3) images in [0, 1].
        params: Passed to ``model``.
        lam: Weight of ``||r||^2`` (r in [0, 1] pixel units).
        steps: Optimiser steps.
        optimizer: Any optax transformation; default ``optax.adam(1e-3)``.
        targeted: Reach ``target`` (True) or leave the true class ``target`` (False).
        quantize: Evaluate and return images on the 8-bit grid (see :mod:`.base`).

    Returns:
        ``run(key, x, target, *, progress=None) -> AttackResult`` (see
        :func:`.base.run_loop`): the smallest-L2 successful iterate of each example, else
        its final iterate.
    """
    base.check_integers(steps=steps)
    # lam = inf made NaN images, whose NaN logits' argmax (class 0) read as a success.
    if steps < 1 or not 0 <= lam < math.inf:
        raise ValueError(f"steps must be >= 1 and lam finite and >= 0, got {steps}, {lam}")
    opt = optimizer or optax.adam(1e-3)

    def objective(p, x0, r, target):
        xq = io.quantize(x0 + r) if quantize else x0 + r
        logits = model(p, xq)
        s = jax.nn.one_hot(target, logits.shape[-1])
        dist = jnp.sum((jax.nn.softmax(logits) - s) ** 2, axis=-1)
        l2sq = jnp.sum((xq - x0) ** 2, axis=(1, 2, 3))
        fit = dist if targeted else -dist
        return jnp.sum(fit + lam * l2sq), (xq, logits, l2sq)

    grad_fn = jax.value_and_grad(objective, argnums=2, has_aux=True)

    def start(p, key, x, target):
        del key
        x0, target = base.prepare(x, target, quantize)
        r = jnp.zeros_like(x0)
        n = x0.shape[0]
        return (x0, target), (r, opt.init(r), (x0, jnp.full(n, jnp.inf), model(p, x0)))

    def step(p, ctx, i, carry):
        x0, target = ctx
        r, state, (bx, bl2, blog) = carry
        (_, (xq, logits, l2sq)), g = grad_fn(p, x0, r, target)
        better = base.criterion(logits, target, targeted) & (l2sq < bl2)
        best = (
            jnp.where(better[:, None, None, None], xq, bx),
            jnp.where(better, l2sq, bl2),
            jnp.where(better[:, None], logits, blog),
        )
        updates, state = opt.update(g, state, r)
        r = optax.apply_updates(r, updates)
        return jnp.clip(x0 + r, 0.0, 1.0) - x0, state, best

    def finish(p, ctx, carry):
        x0, target = ctx
        r, _, (bx, bl2, blog) = carry
        xq = io.quantize(x0 + r) if quantize else x0 + r
        found = jnp.isfinite(bl2)
        xf = jnp.where(found[:, None, None, None], bx, xq)
        lf = jnp.where(found[:, None], blog, model(p, xq))
        return base.result(x0, xf, lf, target, targeted)

    return base.looped(start, step, finish, steps, params)


def lbfgs(
    model: base.Model,
    params: base.Params,
    *,
    c: float = 1.0,
    steps: int = 20,
    search_steps: int = 5,
    targeted: bool = True,
    quantize: bool = True,
) -> base.Run:
    """Build Szegedy et al.'s L-BFGS attack with a search over ``c``.

    Each example is solved independently (``vmap``) so every one gets its own curvature
    estimate and its own ``c``: after a success ``c`` is raised (x10 until the first
    failure, then bisected in log space), after a failure it is lowered.

    Args:
        model: ``model(params, x) -> logits`` on (N, H, W, 3) images in [0, 1].
        params: Passed to ``model``.
        c: Initial weight of ``|r|^2`` (r in [0, 1] pixel units).
        steps: L-BFGS iterations per value of ``c``.
        search_steps: Values of ``c`` tried.
        targeted: Reach ``target`` (True) or leave the true class ``target`` (False).
        quantize: Judge and return the minimiser snapped to the 8-bit grid.

    Returns:
        ``run(key, x, target, *, progress=None) -> AttackResult`` (see
        :func:`.base.run_loop`) holding the smallest successful perturbation found for
        each example (else the unperturbed input).
    """
    base.check_integers(steps=steps, search_steps=search_steps)
    if steps < 1 or search_steps < 1 or not 0 < c < math.inf:
        raise ValueError(
            f"steps and search_steps must be >= 1 and c finite and > 0, got {steps}, "
            f"{search_steps}, {c}"
        )
    numbers = LBFGSNumbers(np.float32(c), np.int32(steps))
    pieces = _kept_lbfgs_loop(model, targeted, quantize)
    return base.run_loop(pieces, search_steps * steps, (params, numbers))


class LBFGSNumbers(NamedTuple):
    """L-BFGS's numbers, passed to its compiled loop as arguments (float32/int32 scalars)."""

    c: ArrayLike  # the initial weight of |r|^2
    steps: ArrayLike  # L-BFGS iterations per round of the search over c


def _lbfgs_loop(model: base.Model, targeted: bool, quantize: bool) -> base.Loop:
    """L-BFGS's jitted pieces for one model and settings; ``p = (params, LBFGSNumbers)``."""
    opt = optax.lbfgs(memory_size=10)

    def loss_at(p, x0, target, w, const):
        x = base.from_tanh_space(w)
        logits = model(p, x[None])
        ce = base.cross_entropy(logits, target[None], targeted)[0]
        return const * jnp.sum((x - x0) ** 2) + ce

    # One example's pieces, vmapped below so that every example gets its own curvature
    # estimate and its own c. Iteration j is step j % steps of round j // steps.
    def start_one(c, x0, target):
        # x0: (H, W, 3) on the grid; target: () int.
        w0 = base.to_tanh_space(x0)
        search = (jnp.asarray(c), jnp.asarray(0.0), jnp.asarray(jnp.inf))
        return (x0, target, w0), (search, (w0, opt.init(w0)), (x0, jnp.asarray(jnp.inf)))

    def step_one(pn, ctx, j, carry):
        p, num = pn
        steps = num.steps
        x0, target, w0 = ctx
        search, (w, state), best = carry
        # Each round minimises afresh from the original, with a fresh curvature estimate.
        w, state = jax.lax.cond(j % steps == 0, lambda: (w0, opt.init(w0)), lambda: (w, state))

        def fn(w):  # the line search evaluates the loss at other points: a unary function
            return loss_at(p, x0, target, w, search[0])

        value, grad = optax.value_and_grad_from_state(fn)(w, state=state)
        updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=fn)
        w = optax.apply_updates(w, updates)
        # The round's last step: judge its minimiser (one forward pass per round, as the
        # predicate is the same for every example and the cond is not turned into a select).
        search, best = jax.lax.cond(
            j % steps == steps - 1,
            lambda: end_round(p, x0, target, w, search, best),
            lambda: (search, best),
        )
        return search, (w, state), best

    def end_round(p, x0, target, w, search, best):
        const, lo, hi = search
        bx, bl2 = best
        xq = io.quantize(base.from_tanh_space(w)) if quantize else base.from_tanh_space(w)
        logits = model(p, xq[None])
        ok = base.criterion(logits, target[None], targeted)[0]
        l2sq = jnp.sum((xq - x0) ** 2)
        better = ok & (l2sq < bl2)
        best = (jnp.where(better, xq, bx), jnp.where(better, l2sq, bl2))
        # Success: the penalty can grow (smaller r); failure: it must shrink.
        lo = jnp.where(ok, const, lo)
        hi = jnp.where(ok, hi, const)
        const = jnp.where(jnp.isfinite(hi), jnp.sqrt(jnp.maximum(lo, 1e-6 * hi) * hi), const * 10.0)
        return (const, lo, hi), best

    def start(pn, key, x, target):
        del key
        _, num = pn
        x0, target = base.prepare(x, target, quantize)
        return jax.vmap(start_one, in_axes=(None, 0, 0))(num.c, x0, target)

    def finish(pn, ctx, carry):
        x0, target, _ = ctx
        xf = carry[2][0]
        p, _ = pn
        return base.result(x0, xf, model(p, xf), target, targeted)

    step = jax.vmap(step_one, in_axes=(None, 0, None, 0))
    return base.loop(start, step, finish)


# lbfgs() called again (another c or number of steps) runs the programs already compiled.
_kept_lbfgs_loop = base.kept(_lbfgs_loop)
