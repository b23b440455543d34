"""fooltools.rng: jax.random's numbers, bit for bit, from a fused Threefry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fooltools import rng

# One element, an odd count, and a multi-dimensional image-sized shape (the counters are
# row-major over any shape: a small 3-D shape as well compiled every operation again).
SHAPES = [(1,), (7,), (224, 224, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 123456789])
def test_same_numbers_as_jax_random(shape, seed):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(rng.bits(key, shape), jax.random.bits(key, shape, jnp.uint32))
    np.testing.assert_array_equal(rng.uniform(key, shape), jax.random.uniform(key, shape))
    np.testing.assert_array_equal(
        rng.uniform(key, shape, -0.3, 0.7), jax.random.uniform(key, shape, minval=-0.3, maxval=0.7)
    )
    np.testing.assert_array_equal(rng.normal(key, shape), jax.random.normal(key, shape))
    np.testing.assert_array_equal(
        rng.bernoulli(key, 0.5, shape), jax.random.bernoulli(key, 0.5, shape)
    )
    # Spans below and above 2^16 (where jax.random's multiplier wraps to 0), and 2^31 - 1.
    for span in (1, 7, 1000, 65536, 65537, 150528, 2**31 - 1):
        np.testing.assert_array_equal(
            rng.randint(key, shape, span), jax.random.randint(key, shape, 0, span)
        )


@pytest.mark.parametrize("maxval", [2, 3, 81, 70000])
def test_a_shifted_randint_is_jax_randint_from_a_lower_bound(maxval):
    # jax.random.randint(key, shape, lo, hi) draws its offset over the span hi - lo: the
    # detector attacks' DAG labels (lo = 1) are drawn as 1 + rng.randint over hi - 1.
    keys = jax.random.split(jax.random.key(9), 4)
    for key in keys:
        np.testing.assert_array_equal(
            1 + rng.randint(key, (8, 30), maxval - 1), jax.random.randint(key, (8, 30), 1, maxval)
        )


def test_same_numbers_vmapped_and_jitted():
    keys = jax.random.split(jax.random.key(5), 6)
    ours = jax.jit(
        jax.vmap(
            lambda k: (
                rng.uniform(k, (4, 9), -2.0, 2.0),
                rng.normal(k, (4, 9)),
                rng.randint(k, (4, 9), 150528),
            )
        )
    )
    theirs = jax.vmap(
        lambda k: (
            jax.random.uniform(k, (4, 9), minval=-2.0, maxval=2.0),
            jax.random.normal(k, (4, 9)),
            jax.random.randint(k, (4, 9), 0, 150528),
        )
    )
    for a, b in zip(ours(keys), theirs(keys), strict=True):
        np.testing.assert_array_equal(a, b)


def test_other_generators_fall_back_to_jax_random():
    key = jax.random.key(3, impl="rbg")
    np.testing.assert_array_equal(rng.bits(key, (5, 3)), jax.random.bits(key, (5, 3), jnp.uint32))
    np.testing.assert_array_equal(rng.uniform(key, (8,)), jax.random.uniform(key, (8,)))
    np.testing.assert_array_equal(rng.normal(key, (8,)), jax.random.normal(key, (8,)))


def test_threefry_matches_the_published_known_answer():
    # Random123's kat_vectors for threefry2x32_20: key (0x13198a2e, 0x03707344), counter
    # (0x243f6a88, 0x85a308d3) -> (0xc4923a9c, 0x483df7a0).
    key = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
    x = jnp.array([0x243F6A88], jnp.uint32), jnp.array([0x85A308D3], jnp.uint32)
    out = rng.threefry_2x32(key, *x)
    assert [int(o[0]) for o in out] == [0xC4923A9C, 0x483DF7A0]


def test_randint_rejects_an_empty_or_too_large_range():
    with pytest.raises(ValueError, match="maxval"):
        rng.randint(jax.random.key(0), (3,), 0)
    with pytest.raises(ValueError, match="maxval"):
        rng.randint(jax.random.key(0), (3,), 2**31)
