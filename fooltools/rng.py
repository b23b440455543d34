"""jax.random's ``bits``/``uniform``/``bernoulli``/``normal``/``randint``, bit for bit.

JAX lowers its Threefry-2x32 hash on CPU as a rolled loop of five iterations whose
state, two full-size uint32 arrays, goes through memory at every iteration, and then
XORs the two words. A 150k-gene genome's SBX crossover draws one word per gene: for a
population of 200 that was 250 ms of a ~3 s generation on a 2-core VM, most of the cost
of breeding. Written here as the same 20 unrolled rounds on the same counters, XLA fuses
it into one elementwise loop: 5-7x faster, and the same numbers as ``jax.random``
(tested), so results do not depend on which one drew them.

It also compiles faster: jax.random derives each element's counter from one iota per
axis, in 64-bit arithmetic on pairs of words, which XLA:CPU takes seconds to compile
for an image-shaped draw (a uniform (4, 224, 224, 3) inside a jitted program: 2.8 s,
against 0.2 s here, where the counter is one flat iota reshaped).

Any other key (``rbg``, ``unsafe_rbg``), ``jax_threefry_partitionable`` switched off or
more than 2^32 values fall back to ``jax.random`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # Threefish's key-schedule constant


def _rotl(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry_2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32, 20 rounds (Salmon et al. 2011), of the counter pairs ``(x0, x1)``.

    Args:
        key: Raw key words, uint32[2].
        x0: First counter words, uint32, any shape.
        x1: Second counter words, same shape.

    Returns:
        The two output words, each uint32 of the counters' shape.
    """
    ks = (key[0], key[1], key[0] ^ key[1] ^ np.uint32(_PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):  # unrolled: one fused elementwise loop, state in registers
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _fast(key: jax.Array, shape: Sequence[int]) -> bool:
    return (
        str(jax.random.key_impl(key)) == "threefry2x32"
        and bool(jax.config.jax_threefry_partitionable)
        and int(np.prod(shape)) < 2**32
    )


def bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """``jax.random.bits(key, shape, jnp.uint32)``, computed in one fused pass.

    Args:
        key: A typed PRNG key (``jax.random.key``), unbatched.
        shape: Output shape.

    Returns:
        uint32 array of ``shape``.
    """
    shape = tuple(shape)
    if not _fast(key, shape):
        return jax.random.bits(key, shape, jnp.uint32)
    # jax.random's partitionable layout: the row-major index of each element as a 64-bit
    # counter (high word 0 below 2^32 elements), and the XOR of Threefry's two words.
    count = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
    a, b = threefry_2x32(jax.random.key_data(key), jnp.zeros_like(count), count)
    return a ^ b


def uniform(
    key: jax.Array,
    shape: Sequence[int],
    minval: float | jax.Array = 0.0,
    maxval: float | jax.Array = 1.0,
) -> jax.Array:
    """``jax.random.uniform(key, shape, minval=minval, maxval=maxval)``, float32.

    jax.random's own construction on :func:`bits`, so the values are the same: 23 random
    mantissa bits under exponent 0 give [1, 2), minus 1, scaled into [minval, maxval).
    The bounds may be traced scalars.
    """
    mantissa = bits(key, shape) >> np.uint32(9)  # 23 bits, as jax.random takes them
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type(mantissa | one, jnp.float32) - np.float32(1.0)
    if _constant(minval) and _constant(maxval) and (minval, maxval) == (0.0, 1.0):
        return floats  # jax.random's scaling by 1 and shift by 0 change no value
    lo, hi = (_f32(v) for v in (minval, maxval))
    return jax.lax.max(lo, floats * (hi - lo) + lo)


def _constant(v: object) -> bool:
    return isinstance(v, (int, float, np.number))


def _f32(v: float | jax.Array) -> np.float32 | jax.Array:
    # A number stays a numpy scalar: no eager op on the device just to convert it.
    return np.float32(v) if _constant(v) else jnp.asarray(v, jnp.float32)


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``: bool, a :func:`uniform` below ``p``."""
    return uniform(key, shape) < p


def normal(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """``jax.random.normal(key, shape)``, float32: the same numbers, as jax.random makes them.

    ``sqrt(2) * erf_inv(u)`` of a uniform ``u`` in (-1, 1). Inside a jitted program this
    compiles ~8x faster than jax.random's own (for a (4, 224, 224, 3) draw on XLA:CPU
    0.35 s against 2.6 s), which computes each element's counter from one iota per axis.
    """
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = uniform(key, shape, lo, 1.0)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


def randint(key: jax.Array, shape: Sequence[int], maxval: int) -> jax.Array:
    """``jax.random.randint(key, shape, 0, maxval)``: int32 in [0, maxval).

    jax.random's own construction (two words per value, combined modulo ``maxval``) on
    :func:`bits`, with its wrap-around uint32 products, so the values are the same.
    """
    if not 0 < maxval < 2**31:
        raise ValueError(f"maxval must be in [1, 2^31), got {maxval}")
    k_hi, k_lo = jax.random.split(key)
    span = np.uint32(maxval)
    # (2^16 mod span)^2 in uint32, as jax.random computes it: 0 once span > 2^16, when
    # the high word drops out and is not drawn at all (half the work).
    multiplier = np.uint32((2**16 % maxval) ** 2 % 2**32 % maxval)
    offset = bits(k_lo, shape) % span
    if multiplier:
        offset = (bits(k_hi, shape) % span) * multiplier + offset
    return (offset % span).astype(jnp.int32)
