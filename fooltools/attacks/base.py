"""Shared pieces of the gradient attacks: result type, losses, criteria, the 8-bit grid.

Conventions for every attack in this package:

* Images are batches ``x`` of shape (N, H, W, 3) in [0, 1] at the user's own
  resolution; the model function ``model(params, x) -> logits`` (N, K) includes the
  preprocessing (e.g. :meth:`fooltools.models.Classifier.logits`), so gradients flow
  back to the original pixels.
* ``target`` has shape (N,): the class to reach (targeted) or the true class to leave
  (untargeted).
* With ``quantize=True`` every candidate is put *on the 8-bit grid* before it is
  evaluated, so the success, logits and distortions an attack reports are those of the
  PNG that will be written, not of a float tensor that rounding might undo. Budgeted
  attacks (PGD, FGSM) use :func:`snap`, which rounds each change towards the original so
  the norm budget still holds; minimal-perturbation attacks (Szegedy, L-BFGS, C&W) round
  to the nearest level (:func:`fooltools.io.quantize`), because truncation would erase
  the many sub-level changes they spread over the image. Gradients pass straight through.
"""

from __future__ import annotations

import functools
import numbers
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from fooltools import io
from fooltools.limits import INT32_MAX

Params = Any
Model = Callable[[Params, jax.Array], jax.Array]
T = TypeVar("T")

# Slack when converting a float difference to whole grid steps: 8/255 in float32 times
# 255 is 7.9999995, which must count as 8 steps, not 7.
_GRID_TOL = 1e-3


class AttackResult(NamedTuple):
    """What an attack returns, per example of the batch.

    Attributes:
        x: Adversarial images, shape (N, H, W, 3), in [0, 1] (on the 8-bit grid when the
            attack quantizes).
        success: Whether ``x`` meets the criterion, shape (N,), bool.
        logits: Model logits at ``x``, shape (N, K).
        linf: L-inf distortion ``max |x - x0|``, shape (N,), in [0, 1] units.
        l2: L2 distortion ``||x - x0||_2``, shape (N,), in [0, 1] units.
        l0: Number of changed pixel values (over H*W*3), shape (N,).

    ``x0`` is the input as the attack used it: when the attack quantizes, the input
    rounded to the 8-bit grid (:func:`fooltools.io.quantize`). From an input off the grid
    (a resized photo), ``x`` may be up to half a level (0.5/255) further from the input
    itself than these norms, and than a budget, say; quantize it first to have them hold
    for the input.
    """

    x: jax.Array
    success: jax.Array
    logits: jax.Array
    linf: jax.Array
    l2: jax.Array
    l0: jax.Array


ProgressFn = Callable[[int], None]

# With a progress bar, the loop runs in device calls of about this many seconds each
# (the host reports between calls). A call cost ~8 ms beyond its steps on 2 CPU cores
# (C&W on Lite0, 28 ms a step): under 2% at this length.
PROGRESS_SECONDS = 0.5

# Most iterations an attack runs: lax.fori_loop's counters are int32 (one more was an
# OverflowError once the attack started).
MAX_STEPS = INT32_MAX


class Run(Protocol):
    """What every attack factory returns (see :func:`run_loop`)."""

    def __call__(
        self, key: jax.Array, x: jax.Array, target: jax.Array, *, progress: ProgressFn | None = None
    ) -> AttackResult:
        """Attack images x (N, H, W, 3) in [0, 1] towards/away from ``target`` (N,)."""
        ...


class Loop(NamedTuple):
    """An attack's three pure pieces, each jitted (see :func:`loop`).

    Every :func:`run_loop` built on the same ``Loop`` shares its compiled programs.
    """

    start: Callable[..., tuple[Any, Any]]
    chunk: Callable[..., Any]
    finish: Callable[..., AttackResult]


def loop(
    start: Callable[[Params, jax.Array, jax.Array, jax.Array], tuple[Any, Any]],
    step: Callable[[Params, Any, jax.Array, Any], Any],
    finish: Callable[[Params, Any, Any], AttackResult],
) -> Loop:
    """Jit an attack's three pure pieces, each compiled once per input shape.

    ``start(p, key, x, target) -> (ctx, carry)`` prepares the loop (``ctx``: what stays
    constant, e.g. the originals and targets; ``carry``: the iterate and the best so far),
    ``step(p, ctx, i, carry) -> carry`` is iteration ``i`` (a traced int32 scalar), and
    ``finish(p, ctx, carry) -> AttackResult`` reads the answer off the last carry. ``p`` is
    a jit argument, not baked in: the model's params, and any numeric settings put beside
    them (:func:`fooltools.attacks.pgd` passes its budget there, so one compiled attack
    serves every eps). ``start`` validates shapes (raising ValueError) at trace time.
    """

    @jax.jit
    def start_j(p, key, x, target):
        # Strong types throughout: the loop returns its carry strongly typed, and a weakly
        # typed start (e.g. a Python float made an array) would compile the loop twice.
        return jax.tree.map(lambda a: jnp.asarray(a, a.dtype), start(p, key, x, target))

    @jax.jit
    def chunk(p, ctx, carry, lo, hi):
        return jax.lax.fori_loop(lo, hi, lambda i, c: step(p, ctx, i, c), carry)

    return Loop(start_j, chunk, jax.jit(finish))


def kept(build: Callable[..., T]) -> Callable[..., T]:
    """``build`` kept per its arguments: an attack's jitted pieces per model and settings.

    So that building the attack again (another budget, another image) runs the programs
    this process compiled already. The last 16 are held (models are keyed by identity, as
    jit's own caches would); an unhashable argument (a callable object with ``__eq__``)
    builds afresh.
    """
    cached = functools.lru_cache(maxsize=16)(build)

    @functools.wraps(build)
    def get(*args: Any) -> T:
        try:
            return cached(*args)
        except TypeError:  # unhashable: not kept
            return build(*args)

    return get


def looped(
    start: Callable[[Params, jax.Array, jax.Array, jax.Array], tuple[Any, Any]],
    step: Callable[[Params, Any, jax.Array, Any], Any],
    finish: Callable[[Params, Any, Any], AttackResult],
    steps: int,
    params: Params,
) -> Run:
    """Assemble an attack from its three pure pieces: ``run_loop(loop(...), steps, params)``.

    See :func:`loop` for the pieces and :func:`run_loop` for the returned ``run``.
    """
    return run_loop(loop(start, step, finish), steps, params)


def run_loop(pieces: Loop, steps: int, params: Params) -> Run:
    """The attack ``run`` that runs ``steps`` iterations of ``pieces`` with ``p = params``.

    The iterations run as ``lax.fori_loop`` over traced bounds: all of them in one device
    call, or, when the caller passes ``progress``, in calls of the same compiled loop of
    about :data:`PROGRESS_SECONDS` each, with the host reporting between them. So a
    progress bar costs no compilation of its own and, unlike a host callback inside the
    loop (which JAX's persistent cache does not store), lets the next process load the
    compiled attack from disk. Both ways give the same bytes; so does any number of steps
    with the same program.

    Args:
        pieces: From :func:`loop`.
        steps: Total iterations, 1 to :data:`MAX_STEPS`.
        params: Passed as ``p`` to every piece.

    Returns:
        ``run(key, x, target, *, progress=None) -> AttackResult``. ``progress(i)`` is
        called on the host with the 0-based index of the last finished iteration, after
        that iteration has run; it cannot be used under an outer ``jax.jit``. ``x`` and
        ``target`` may be any array-likes; ``run`` raises ValueError for images of an
        integer dtype, wrong shapes, or (outside ``jax.jit``) values outside
        :data:`fooltools.io.PIXEL_RANGE` or a target not in 0..K-1.

    Raises:
        ValueError: ``steps`` out of range.
    """
    check_integers(steps=steps)
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in 1..{MAX_STEPS} (int32 loop counters), got {steps}")
    start_j, chunk, finish_j = pieces

    def run(
        key: jax.Array, x: jax.Array, target: jax.Array, *, progress: ProgressFn | None = None
    ) -> AttackResult:
        # Array-likes (a list of classes) as arrays: jit would take a list for a pytree.
        x, target = (v if isinstance(v, jax.Array) else np.asarray(v) for v in (x, target))
        # Before start_j, so that a refused image costs no compilation.
        io.require_float(x, "x")
        if x.ndim == 4 and x.shape[0] == 0:  # was "zero-size array to reduction operation"
            raise ValueError(f"x holds no images (shape {x.shape})")
        if not jnp.issubdtype(target.dtype, jnp.integer):
            # Cast to int32, [2.9, 3.5] attacked classes 2 and 3 and reported success.
            raise ValueError(f"target must be integer class indices, got dtype {target.dtype}")
        if not isinstance(x, jax.core.Tracer):
            # Images on another scale (8-bit values as floats, np.asarray(img, np.float32),
            # or normalised ones) were clipped to [0, 1] and attacked without a word.
            io.require_pixel_range(x, "x")
        ctx, carry = start_j(params, key, x, target)
        if not isinstance(target, jax.core.Tracer):
            # A class outside the logits is a gather out of range: the attack would run to
            # the end and never succeed (targeted) or always (untargeted), without a word.
            k = jax.eval_shape(finish_j, params, ctx, carry).logits.shape[-1]
            bad = [int(t) for t in np.asarray(target).ravel() if not 0 <= t < k]
            if bad:
                raise ValueError(f"target classes must be in 0..{k - 1}, got {bad[:8]}")
        if progress is None:
            carry = chunk(params, ctx, carry, 0, steps)
        else:
            lo, size = 0, 1
            while lo < steps:
                hi = min(lo + size, steps)
                t0 = time.perf_counter()
                carry = jax.block_until_ready(chunk(params, ctx, carry, lo, hi))
                progress(hi - 1)
                # The next call's length from this one's pace (the first also compiles).
                per_step = (time.perf_counter() - t0) / (hi - lo)
                lo, size = hi, max(1, int(PROGRESS_SECONDS / per_step))
        return finish_j(params, ctx, carry)

    return run


def criterion(logits: jax.Array, target: jax.Array, targeted: bool) -> jax.Array:
    """Success mask, shape (N,): top-1 is ``target`` (targeted) or is not (untargeted)."""
    hit = jnp.argmax(logits, axis=-1) == target
    return hit if targeted else ~hit


def cross_entropy(logits: jax.Array, target: jax.Array, targeted: bool) -> jax.Array:
    """Per-example loss to *minimise*, shape (N,): CE to the target, or minus CE to the label."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
    return ce if targeted else -ce


def margin(logits: jax.Array, target: jax.Array, targeted: bool, kappa: float = 0.0) -> jax.Array:
    """Carlini-Wagner's f6 on logits, shape (N,); <= -kappa once the attack succeeds.

    Targeted: ``max(max_{i != t} Z_i - Z_t, -kappa)``; untargeted:
    ``max(Z_t - max_{i != t} Z_i, -kappa)``.
    """
    onehot = jax.nn.one_hot(target, logits.shape[-1], dtype=bool)
    z_t = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    diff = z_other - z_t if targeted else z_t - z_other
    return jnp.maximum(diff, -kappa)


def snap(x0: jax.Array, x: jax.Array) -> jax.Array:
    """Move ``x`` onto the 8-bit grid, rounding each change towards ``x0``.

    Args:
        x0: Originals, on the 8-bit grid (see :func:`fooltools.io.quantize`).
        x: Candidates of the same shape, in [0, 1].

    Returns:
        ``x0 + trunc(x - x0)`` in whole 1/255 steps, exactly on the grid that
        :func:`fooltools.io.write_png` / :func:`fooltools.io.read_image` round-trip; the
        gradient is the identity (straight-through).
    """
    d = x - x0
    steps = jnp.sign(d) * jnp.floor(jnp.abs(d) * 255.0 + _GRID_TOL)
    snapped = io.quantize(x0 + steps / 255.0)
    return x + jax.lax.stop_gradient(snapped - x)


def to_tanh_space(x: jax.Array) -> jax.Array:
    """``w`` with ``(tanh(w) + 1) / 2 == x`` for x in [0, 1] (a change of variables for the box).

    Pixels at exactly 0 or 1 are pulled in by 1e-6 so that ``arctanh`` stays finite.
    """
    return jnp.arctanh((x * 2.0 - 1.0) * (1.0 - 1e-6))


def from_tanh_space(w: jax.Array) -> jax.Array:
    """Inverse of :func:`to_tanh_space`: images in [0, 1] whatever ``w``."""
    return (jnp.tanh(w) + 1.0) / 2.0


def distortions(x0: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(L-inf, L2, L0) of ``x - x0`` per example, each shape (N,), [0, 1] units."""
    d = (x - x0).reshape(x.shape[0], -1)
    return (
        jnp.max(jnp.abs(d), axis=-1),
        jnp.sqrt(jnp.sum(d * d, axis=-1)),
        jnp.sum(jnp.abs(d) > 0.5 / 255.0, axis=-1),
    )


def result(
    x0: jax.Array, x: jax.Array, logits: jax.Array, target: jax.Array, targeted: bool
) -> AttackResult:
    """Assemble an :class:`AttackResult` for final images ``x`` with their ``logits``."""
    linf, l2, l0 = distortions(x0, x)
    return AttackResult(x, criterion(logits, target, targeted), logits, linf, l2, l0)


def check_integers(**counts: Any) -> None:
    """Refuse a count (steps, search steps) that is not an int (a bool neither).

    Raises:
        ValueError: Naming the first that is not: ``steps=2.0`` (from JSON or argparse)
            failed inside ``lax.fori_loop`` as a TypeError on its bounds' types.
    """
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")


def prepare(x0: jax.Array, target: jax.Array, quantize: bool) -> tuple[jax.Array, jax.Array]:
    """Validate shapes and put the originals on the grid if the attack quantizes.

    Args:
        x0: Shape (N, H, W, 3) in [0, 1].
        target: Shape (N,) integer classes.
        quantize: Whether the attack works on the 8-bit grid.

    Returns:
        ``(x0, target)`` as float32 / int32 arrays.

    Raises:
        ValueError: a shape is wrong, or ``x0`` has an integer dtype (8-bit pixels).
    """
    io.require_float(x0, "x")
    if x0.ndim != 4 or x0.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {x0.shape}")
    if target.shape != (x0.shape[0],):
        raise ValueError(f"expected target of shape ({x0.shape[0]},), got {target.shape}")
    x0 = jnp.asarray(x0, jnp.float32)
    return (io.quantize(x0) if quantize else x0), jnp.asarray(target, jnp.int32)
