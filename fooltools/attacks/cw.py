"""Carlini-Wagner L2 (S&P 2017) with a binary search over the constant c.

Minimises ``||x - x0||_2^2 + c * f(x)`` over ``x = (tanh(w) + 1) / 2`` (so x stays in the
box) with Adam, where ``f`` is the margin loss (``base.margin``); between rounds, each
example's ``c`` is bisected: halved towards the last failure after a success, multiplied
by 10 while no success has been seen. The smallest successful perturbation over all
rounds and steps is returned. The rounds' steps run as one ``fori_loop`` (see
:func:`.base.run_loop`): iteration j is step ``j % steps`` of round ``j // steps``. The
numbers (c, kappa, the rate, steps per round) are arguments of the compiled loop: another
value compiles nothing new.
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


def cw(
    model: base.Model,
    params: base.Params,
    *,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 100,
    search_steps: int = 5,
    lr: float = 0.01,
    targeted: bool = True,
    quantize: bool = True,
) -> base.Run:
    """Build a Carlini-Wagner L2 attack.

    Args:
        model: ``model(params, x) -> logits`` on (N, H, W, 3) images in [0, 1].
        params: Passed to ``model``.
        c: Initial trade-off constant (per example, then bisected).
        kappa: Confidence margin on the logits, >= 0: an iterate counts as a success (for
            the example kept and for the search over c) only once the target's logit leads
            every other by ``kappa`` (untargeted: another class leads the true one by it),
            as in Carlini and Wagner's code.
        steps: Adam steps per search round.
        search_steps: Rounds of the binary search over c.
        lr: Adam learning rate in tanh space, > 0.
        targeted: Reach ``target`` (True) or leave the true class ``target`` (False).
        quantize: Evaluate and return images on the 8-bit grid (see :mod:`.base`).

    Returns:
        ``run(key, x, target, *, progress=None) -> AttackResult`` (see
        :func:`.base.run_loop`); ``key`` is unused (C&W is deterministic) but kept for the
        common signature. Examples that never succeed return ``x``.

    Raises:
        ValueError: steps or search_steps < 1, c or lr not > 0, kappa not >= 0.
    """
    base.check_integers(steps=steps, search_steps=search_steps)
    if steps < 1 or search_steps < 1:
        raise ValueError("steps and search_steps must be >= 1")
    if not 0 < c < math.inf:  # inf returned the input unchanged, as a failure
        raise ValueError(f"c must be finite and > 0, got {c}")
    # A negative rate ascended the objective and 0 stood still, each reporting a failure.
    if not 0 < lr < math.inf:
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    if not 0 <= kappa < math.inf:
        raise ValueError(f"kappa must be finite and >= 0, got {kappa}")
    numbers = Numbers(np.float32(c), np.float32(kappa), np.float32(lr), np.int32(steps))
    pieces = _kept_loop(model, targeted, quantize)
    return base.run_loop(pieces, search_steps * steps, (params, numbers))


class Numbers(NamedTuple):
    """C&W's numbers, passed to its compiled loop as arguments (float32/int32 scalars)."""

    c: ArrayLike  # the initial trade-off constant
    kappa: ArrayLike
    lr: ArrayLike
    steps: ArrayLike  # Adam steps per round of the search over c


def _loop(model: base.Model, targeted: bool, quantize: bool) -> base.Loop:
    """C&W's jitted pieces for one model and choice of settings; ``p = (params, Numbers)``."""
    # optax.adam(lr) is scale_by_adam() then a step of -lr: with the rate an argument.
    opt = optax.scale_by_adam()

    def objective(p, x0, w, target, const, kappa):
        x = base.from_tanh_space(w)
        xq = io.quantize(x) if quantize else x
        logits = model(p, xq)
        l2sq = jnp.sum((xq - x0) ** 2, axis=(1, 2, 3))
        f = base.margin(logits, target, targeted, kappa)
        return jnp.sum(l2sq + const * f), (xq, logits, l2sq)

    grad_fn = jax.value_and_grad(objective, argnums=2, has_aux=True)

    def start(pn, key, x, target):
        del key
        p, num = pn
        x0, target = base.prepare(x, target, quantize)
        n = x0.shape[0]
        w0 = base.to_tanh_space(x0)
        search = (jnp.full(n, num.c), jnp.zeros(n), jnp.full(n, jnp.inf))  # c, lo, hi
        rnd = (w0, opt.init(w0), jnp.zeros(n, bool))  # this round's iterate, Adam, success
        best = (x0, jnp.full(n, jnp.inf), model(p, x0))
        return (x0, target, w0), (search, rnd, best)

    def step(pn, ctx, j, carry):
        p, num = pn
        x0, target, w0 = ctx
        (const, lo, hi), rnd, (bx, bl2, blog) = carry
        # Each round starts again from the original, with Adam's moments reset (built in
        # the branch, so only on a round's first step).
        w, state, hit = jax.lax.cond(
            j % num.steps == 0, lambda: (w0, opt.init(w0), jnp.zeros_like(rnd[2])), lambda: rnd
        )
        (_, (xq, logits, l2sq)), g = grad_fn(p, x0, w, target, const, num.kappa)
        # With the confidence kappa asked for, not merely across the boundary: the smallest
        # L2 among iterates that only reached top-1 was returned whatever kappa was.
        ok = base.criterion(logits, target, targeted) & (
            base.margin(logits, target, targeted, num.kappa) <= -num.kappa
        )
        better = ok & (l2sq < bl2)
        best = (
            jnp.where(better[:, None, None, None], xq, bx),
            jnp.where(better, l2sq, bl2),
            jnp.where(better[:, None], logits, blog),
        )
        updates, state = opt.update(g, state, w)
        hit = hit | ok
        # The round's last step: bisect c on whether the round ever succeeded.
        last = j % num.steps == num.steps - 1
        new_hi = jnp.where(hit, jnp.minimum(hi, const), hi)
        new_lo = jnp.where(hit, lo, jnp.maximum(lo, const))
        new_const = jnp.where(jnp.isfinite(new_hi), (new_lo + new_hi) / 2.0, const * 10.0)
        search = tuple(
            jnp.where(last, a, b) for a, b in ((new_const, const), (new_lo, lo), (new_hi, hi))
        )
        return search, (optax.apply_updates(w, -num.lr * updates), state, hit), best

    def finish(pn, ctx, carry):
        x0, target, _ = ctx
        bx, bl2, blog = carry[2]
        # A success is an iterate with kappa's margin, as Carlini's compare() judges: an
        # input already of the target class, returned unchanged when no iterate reached
        # kappa, read as a success by the plain top-1 test.
        return base.result(x0, bx, blog, target, targeted)._replace(success=jnp.isfinite(bl2))

    return base.loop(start, step, finish)


# cw() called again (another c, kappa, rate or number of steps) runs the programs already
# compiled.
_kept_loop = base.kept(_loop)
