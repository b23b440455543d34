"""The input-optimisation loop shared by inversion, class visualisation, Deep Dream and style.

Every method here is "gradient descent on the pixels of an image": a pure loss
``loss(params, x, aux) -> (N,)`` of a batch of [0, 1] images, an optax gradient
transformation, an optional random jitter, and projection onto the box [0, 1] after each
step. What differs between methods is only the loss, so they share this engine.

The loop runs on the device in segments of at most :data:`CHUNK` steps
(``lax.fori_loop`` with traced bounds inside one jitted function), returning to the host
between segments to report progress and to keep snapshots for the progress strip. The
bounds, the learning rate and everything in ``aux`` (targets, weights) are traced, so a
problem compiles once per image shape whatever the number of steps, the snapshot period
or the weights. (Unrolling the loop does not pay here: the body is a whole network's
forward and backward pass, and unrolling only multiplies compile time.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools import io
from fooltools.visualize import priors

Params = Any
LossFn = Callable[[Params, jax.Array, Any], jax.Array]
CHUNK = 25  # steps per device call; progress and snapshots happen between calls


SCHEDULES = ("constant", "cosine", "exponential")
EXP_FLOOR = 0.01  # the exponential schedule ends at this fraction of the learning rate


def _decay(kind: jax.Array, t: jax.Array) -> jax.Array:
    """Learning-rate factor at progress ``t`` in [0, 1] for schedule ``SCHEDULES[kind]``.

    ``constant``: 1. ``cosine``: ``(1 + cos(pi t)) / 2``, from 1 to 0. ``exponential``:
    ``EXP_FLOOR ** t``, from 1 to 0.01 spending equal time in each decade, which suits
    fitting problems whose last digits of precision need small steps (inversion).
    """
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    return jnp.select([kind == 1, kind == 2], [cosine, EXP_FLOOR**t], 1.0)


class Trace(NamedTuple):
    """The outcome of one optimisation.

    Attributes:
        x: Final images, shape (N, H, W, 3), on the 8-bit grid (what a PNG stores).
        frames: Snapshots on the 8-bit grid, shape (F, N, H, W, 3): the start, the
            image every ``every`` steps, and the final image.
        frame_steps: The step count of each frame, length F (0 first, ``steps`` last).
        losses: Shape (F, N): the loss of each image at the step before each frame (NaN
            for the start), as optimised, i.e. of the jittered image.
    """

    x: np.ndarray
    frames: np.ndarray
    frame_steps: tuple[int, ...]
    losses: np.ndarray


def normalized_gradient(eps: float = 1e-8) -> optax.GradientTransformation:
    """Divide each image's gradient by its mean absolute value (Deep Dream's step rule).

    With a constant learning rate ``lr`` every step then changes the pixels by ``lr``
    on average, however large or small the layer's gradients are.

    Args:
        eps: Guards the division for an all-zero gradient.

    Returns:
        A stateless optax transformation on updates of shape (N, H, W, C).
    """

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        scale = jnp.mean(jnp.abs(updates), axis=(1, 2, 3), keepdims=True)
        return updates / (scale + eps), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class InputOptimizer(NamedTuple):
    """A compiled problem: call :meth:`run` to optimise images.

    Attributes:
        run: ``run(key, x0, aux, *, steps, lr, every, schedule, progress) -> Trace``.
        segment: The jitted device loop ``run`` calls (exposed so that tests can check
            it compiles once per shape).
    """

    run: Callable[..., Trace]
    segment: Callable[..., Any]


def _segment_ends(steps: int, every: int) -> Iterator[int]:
    """Where the loop returns to the host: each snapshot step, at most CHUNK apart, ``steps``.

    Made one at a time: listed up front, the 2^31 - 1 steps the CLI allows would be 86
    million ends, gigabytes before the first step.
    """
    stop = 0
    while stop < steps:
        stop = min(steps, (stop // every + 1) * every, (stop // CHUNK + 1) * CHUNK)
        yield stop


def input_optimizer(
    loss: LossFn,
    params: Params,
    *,
    transform: optax.GradientTransformation | None = None,
    jitter: int = 0,
) -> InputOptimizer:
    """Build the loop minimising ``sum_n loss(params, x, aux)[n]`` over images ``x``.

    Args:
        loss: ``loss(params, x, aux) -> (N,)`` for x of shape (N, H, W, 3) in [0, 1];
            pure and jittable. Image ``n``'s loss must depend on image ``n`` only, so
            that a batch is N independent problems.
        params: Passed to ``loss`` (a jit argument, not baked in as constants).
        transform: optax transformation turning gradients into step directions;
            default ``optax.scale_by_adam()``. The learning rate is applied after it.
        jitter: Largest random shift (pixels) applied to the image before each loss
            evaluation (see :func:`.priors.jitter`); 0 for none.

    Returns:
        An :class:`InputOptimizer`; build it once per problem and reuse it, as each
        builder call compiles anew.
    """
    tx = transform or optax.scale_by_adam()

    def objective(p, key, x, aux):
        losses = loss(p, priors.jitter(key, x, jitter), aux)
        return jnp.sum(losses), losses

    grad = jax.grad(objective, argnums=2, has_aux=True)

    @jax.jit
    def segment(p, key, x, state, aux, start, stop, total, lr, kind):
        def body(i, carry):
            x, state, _ = carry
            g, losses = grad(p, jax.random.fold_in(key, i), x, aux)
            direction, state = tx.update(g, state, x)
            rate = lr * _decay(kind, i / total)
            return jnp.clip(x - rate * direction, 0.0, 1.0), state, losses

        init = (x, state, jnp.zeros(x.shape[0], jnp.float32))
        return jax.lax.fori_loop(start, stop, body, init)

    quantize = jax.jit(io.quantize)

    def run(
        key: jax.Array,
        x0: jax.Array,
        aux: Any,
        *,
        steps: int,
        lr: float,
        every: int | None = None,
        schedule: str = "cosine",
        progress: Callable[[int], None] | None = None,
    ) -> Trace:
        """Optimise ``x0`` for ``steps`` steps.

        Args:
            key: PRNG key of the jitter (one subkey per step, ``fold_in(key, step)``).
            x0: Starting images, shape (N, H, W, 3) in [0, 1].
            aux: Pytree of arrays passed to the loss (targets, weights).
            steps: Number of steps, >= 1.
            lr: Learning rate (step length after ``transform``).
            every: Snapshot period in steps; default ``ceil(steps / 8)``.
            schedule: One of :data:`SCHEDULES` (see :func:`_decay`).
            progress: Host callback ``progress(step)`` with the 0-based index of the
                last finished step, after each device call.

        Returns:
            The :class:`Trace`.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        every = -(-steps // 8) if every is None else every  # at most 8 snapshots after the start
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        x = jnp.clip(jnp.asarray(x0, jnp.float32), 0.0, 1.0)
        # Strong types: a Python float in aux (weakly typed) would otherwise compile anew.
        aux = jax.tree_util.tree_map(lambda a: jnp.array(a, jnp.asarray(a).dtype), aux)
        state = tx.init(x)
        frames, frame_steps = [np.asarray(quantize(x))], [0]
        losses = [np.full(x.shape[0], np.nan, np.float32)]
        start = 0
        for stop in _segment_ends(steps, every):
            x, state, last = segment(
                params, key, x, state, aux, start, stop, steps, lr, SCHEDULES.index(schedule)
            )
            if stop % every == 0 or stop == steps:
                frames.append(np.asarray(quantize(x)))
                frame_steps.append(stop)
                losses.append(np.asarray(last))
            if progress is not None:
                progress(stop - 1)
            start = stop
        return Trace(frames[-1], np.stack(frames), tuple(frame_steps), np.stack(losses))

    return InputOptimizer(run, segment)
