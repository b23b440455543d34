"""Projected gradient descent (Madry et al. 2018) in L-inf and L2, targeted or not.

``run = pgd(model, params, eps=8/255); res = run(key, x, target)``. The loop is a
``lax.fori_loop`` compiled once per input shape (see :func:`.base.looped`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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
        return jax.random.uniform(key, shape, minval=-eps, maxval=eps)
    # Uniform in the L2 ball: a random direction times radius eps * u^(1/d).
    kd, kr = jax.random.split(key)
    g = jax.random.normal(kd, shape)
    d = shape[1] * shape[2] * shape[3]
    r = eps * jax.random.uniform(kr, (shape[0], 1, 1, 1)) ** (1.0 / d)
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
        steps: Number of gradient steps (>= 1).
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
        :func:`.base.looped`) for x (N, H, W, 3) and target (N,). Each
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
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if loss not in ("ce", "margin"):
        raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
    if step_size is not None and not 0 < step_size <= MAX_EPS:
        raise ValueError(f"step_size must be in (0, {MAX_EPS:g}], got {step_size}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    if schedule == "constant":
        lr = optax.constant_schedule(alpha)
    elif schedule == "cosine":
        lr = optax.cosine_decay_schedule(alpha, steps)
    else:
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    loss_fn = base.cross_entropy if loss == "ce" else base.margin

    def evaluate(p, x0, x, target):
        xq = base.snap(x0, x) if quantize else x
        logits = model(p, xq)
        return jnp.sum(loss_fn(logits, target, targeted)), (xq, logits)

    grad_fn = jax.value_and_grad(evaluate, argnums=2, has_aux=True)

    def start(p, key, x, target):
        x0, target = base.prepare(x, target, quantize)
        if random_start:
            # Only where the model can see: pixels that preprocessing crops away have zero
            # gradient, and noise there would be pure, never-undone distortion.
            seen = jax.grad(lambda x: jnp.sum(model(p, x)))(x0) != 0
            noise = jnp.where(seen, _random_start(key, x0.shape, eps, norm), 0.0)
            x = jnp.clip(x0 + noise, 0.0, 1.0)
        else:
            x = x0
        best = (x0, jnp.zeros(x0.shape[0], bool), model(p, x0))
        return (x0, target), (x, best)

    def step(p, ctx, i, carry):
        x0, target = ctx
        x, (bx, bok, blog) = carry
        (_, (xq, logits)), g = grad_fn(p, x0, x, target)
        ok = base.criterion(logits, target, targeted)
        sel = ok[:, None, None, None]
        best = (jnp.where(sel, xq, bx), bok | ok, jnp.where(ok[:, None], logits, blog))
        x = x - lr(i) * step_direction(g, norm)
        x = jnp.clip(x0 + project(x - x0, eps, norm), 0.0, 1.0)
        return x, best

    def finish(p, ctx, carry):
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

    return base.looped(start, step, finish, steps, params)
