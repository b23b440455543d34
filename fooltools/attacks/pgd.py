"""Projected gradient descent (Madry et al. 2018) in L-inf and L2, targeted or not.

``run = pgd(model, params, eps=8/255); res = run(key, x, target)``. The loop is a
``lax.fori_loop`` compiled once per model, input shape and choice of norm, schedule, loss
and so on (see :func:`.base.loop`): the budget (eps, step length, steps) is an argument
of the compiled program, so a grid over eps compiles one attack.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fooltools import rng
from fooltools.attacks import base

# The largest budget (and step) taken. Two images in [0, 1] are at most sqrt(3 H W) apart in
# L2, under 1e6 for any image below 3e11 pixels, so no budget that means anything is refused;
# and a step of 1e6 has a squared L2 norm far inside float32, where at ~1e19 it overflows
# to inf and the projection silently undoes the whole perturbation (inf: NaN images).
MAX_EPS = 1e6


def _flat_norm(v: jax.Array) -> jax.Array:
    # Per-example L2 norm broadcastable against (N, H, W, C).
    return jnp.sqrt(jnp.sum(v * v, axis=(1, 2, 3), keepdims=True))


def project(delta: jax.Array, eps: float, norm: str) -> jax.Array:
    """Project perturbations (N, H, W, C) onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(_flat_norm(delta), 1e-12))


def step_direction(grad: jax.Array, norm: str) -> jax.Array:
    """The steepest-ascent direction of unit ``norm`` for gradients (N, H, W, C)."""
    if norm == "linf":
        return jnp.sign(grad)
    return grad / jnp.maximum(_flat_norm(grad), 1e-12)


def _random_start(key: jax.Array, shape: tuple[int, ...], eps: float, norm: str) -> jax.Array:
    if norm == "linf":
        return rng.uniform(key, shape, -eps, eps)
    # Uniform in the L2 ball: a random direction times radius eps * u^(1/d).
    kd, kr = jax.random.split(key)
    g = rng.normal(kd, shape)
    d = shape[1] * shape[2] * shape[3]
    r = eps * rng.uniform(kr, (shape[0], 1, 1, 1)) ** (1.0 / d)
    return g / _flat_norm(g) * r


def pgd(
    model: base.Model,
    params: base.Params,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    schedule: str = "constant",
    random_start: bool = True,
    targeted: bool = True,
    quantize: bool = True,
    loss: str = "ce",
) -> base.Run:
    """Build a PGD attack.

    Args:
        model: ``model(params, x) -> logits`` on (N, H, W, 3) images in [0, 1].
        params: Passed to ``model`` (kept as a jit argument, not baked in as constants).
        eps: Radius of the ball, in [0, 1] pixel units (8/255 is the classic L-inf
            budget), at most :data:`MAX_EPS`; with ``quantize`` at least 1/255.
        norm: ``"linf"`` or ``"l2"``.
        steps: Number of gradient steps, 1 to :data:`.base.MAX_STEPS`.
        step_size: Step length, at most :data:`MAX_EPS`; default ``2.5 * eps / steps``
            (Madry et al.).
        schedule: ``"constant"`` or ``"cosine"`` decay of the step length to 0.
        random_start: Start from a uniform random point of the ball (restricted to the
            pixels the model sees, e.g. inside its centre crop).
        targeted: Reach ``target`` (True) or leave the true class ``target`` (False).
        quantize: Evaluate and return images on the 8-bit grid (see :mod:`.base`).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini-Wagner f6 on logits).

    Returns:
        ``run(key, x, target, *, progress=None) -> AttackResult`` (see
        :func:`.base.run_loop`) for x (N, H, W, 3) and target (N,). Each
        example returns its last successful iterate if it ever succeeded, else the
        final iterate.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if not 0 < eps <= MAX_EPS:  # also refuses NaN
        raise ValueError(f"eps must be in (0, {MAX_EPS:g}], got {eps}")
    if quantize and eps < 1 / 255:
        # No change reaches a whole 8-bit level (snap rounds towards the original): the
        # attack returned its input unchanged, as a failure.
        raise ValueError(f"eps must be at least 1/255 (one 8-bit level) with quantize, got {eps}")
    base.check_integers(steps=steps)
    if not 1 <= steps <= base.MAX_STEPS:  # the budget holds it as an int32
        raise ValueError(f"steps must be in 1..{base.MAX_STEPS}, got {steps}")
    if loss not in ("ce", "margin"):
        raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if step_size is not None and not 0 < step_size <= MAX_EPS:
        raise ValueError(f"step_size must be in (0, {MAX_EPS:g}], got {step_size}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    pieces = _kept_loop(model, norm, schedule, random_start, targeted, quantize, loss)
    budget = Budget(np.float32(eps), np.float32(alpha), np.int32(steps))
    return base.run_loop(pieces, steps, (params, budget))


class Budget(NamedTuple):
    """PGD's numbers, passed to its compiled loop as arguments (float32/int32 scalars)."""

    eps: ArrayLike
    alpha: ArrayLike  # the (initial) step length
    steps: ArrayLike  # what the cosine schedule decays over


def _step_length(b: Budget, i: jax.Array, schedule: str) -> jax.Array:
    if schedule == "constant":
        return b.alpha
    # optax.cosine_decay_schedule(alpha, steps)'s formula; optax's needs a Python int.
    return b.alpha * (0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(i, b.steps) / b.steps)))


def _loop(
    model: base.Model,
    norm: str,
    schedule: str,
    random_start: bool,
    targeted: bool,
    quantize: bool,
    loss: str,
) -> base.Loop:
    """PGD's jitted pieces for one model and choice of settings; ``p = (params, Budget)``."""
    loss_fn = base.cross_entropy if loss == "ce" else base.margin

    def evaluate(p, x0, x, target):
        xq = base.snap(x0, x) if quantize else x
        logits = model(p, xq)
        return jnp.sum(loss_fn(logits, target, targeted)), (xq, logits)

    grad_fn = jax.value_and_grad(evaluate, argnums=2, has_aux=True)

    def start(pb, key, x, target):
        p, b = pb
        x0, target = base.prepare(x, target, quantize)
        if random_start:
            # Only where the model can see: pixels that preprocessing crops away have zero
            # gradient, and noise there would be pure, never-undone distortion. Along a
            # random direction of the logits, not their sum: logits whose sum is constant
            # ((z, -z), centred ones, probabilities) have a zero gradient everywhere, and
            # the random start was silently off.
            logits, pullback = jax.vjp(lambda x: model(p, x), x0)
            probe = jax.random.normal(jax.random.key(0), logits.shape, logits.dtype)
            seen = pullback(probe)[0] != 0
            noise = jnp.where(seen, _random_start(key, x0.shape, b.eps, norm), 0.0)
            x = jnp.clip(x0 + noise, 0.0, 1.0)
        else:
            x = x0
        best = (x0, jnp.zeros(x0.shape[0], bool), model(p, x0))
        return (x0, target), (x, best)

    def step(pb, ctx, i, carry):
        p, b = pb
        x0, target = ctx
        x, (bx, bok, blog) = carry
        (_, (xq, logits)), g = grad_fn(p, x0, x, target)
        ok = base.criterion(logits, target, targeted)
        sel = ok[:, None, None, None]
        best = (jnp.where(sel, xq, bx), bok | ok, jnp.where(ok[:, None], logits, blog))
        x = x - _step_length(b, i, schedule) * step_direction(g, norm)
        x = jnp.clip(x0 + project(x - x0, b.eps, norm), 0.0, 1.0)
        return x, best

    def finish(pb, ctx, carry):
        p, _ = pb
        x0, target = ctx
        x, (bx, bok, blog) = carry
        xq = base.snap(x0, x) if quantize else x
        logits = model(p, xq)
        ok = base.criterion(logits, target, targeted)
        # Prefer the final iterate when it succeeds (it is the most confident), else the
        # last iterate that did.
        use_best = (~ok & bok)[:, None, None, None]
        xf = jnp.where(use_best, bx, xq)
        lf = jnp.where(use_best[:, :, 0, 0], blog, logits)
        return base.result(x0, xf, lf, target, targeted)

    return base.loop(start, step, finish)


# pgd() called again (another eps, another image) runs the programs already compiled.
_kept_loop = base.kept(_loop)
