"""Image priors of the input-optimisation methods: total variation, L-alpha norm, jitter.

Images are batches ``x`` of shape (N, H, W, C) in [0, 1]. Each regulariser returns one
value per image, shape (N,), so that a batch of independent problems (several random
starts, several classes) can be optimised together: the gradient of the sum with
respect to image ``n`` depends on image ``n`` only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Added under the power when beta != 2: (0 + eps)^(beta/2 - 1) stays finite, so flat
# regions (where the difference is exactly 0) do not turn the gradient into NaN.
TV_EPS = 1e-8


def total_variation(x: jax.Array, beta: float = 2.0, eps: float = TV_EPS) -> jax.Array:
    """Mahendran & Vedaldi's total-variation prior ``R_TV^beta``.

    ``R(x) = sum_{i,j,c} ((x[i,j+1,c] - x[i,j,c])^2 + (x[i+1,j,c] - x[i,j,c])^2)^(beta/2)``,
    with the last row and column replicated (their differences are 0), as in the
    authors' MATLAB code. For ``beta != 2`` the bracket gets ``+ eps``.

    Args:
        x: Images, shape (N, H, W, C).
        beta: Exponent; 2 penalises squared gradients (smooth images), values
            towards 1 allow sharper edges.
        eps: Smoothing of the power for ``beta != 2``.

    Returns:
        Shape (N,): the sum over pixels and channels of each image.
    """
    dx = jnp.pad(x[:, :, 1:] - x[:, :, :-1], ((0, 0), (0, 0), (0, 1), (0, 0)))
    dy = jnp.pad(x[:, 1:] - x[:, :-1], ((0, 0), (0, 1), (0, 0), (0, 0)))
    sq = dx * dx + dy * dy
    r = sq if beta == 2 else (sq + eps) ** (beta / 2)
    return jnp.sum(r, axis=(1, 2, 3))


def l_alpha(x: jax.Array, alpha: float = 6.0, center: float = 0.5) -> jax.Array:
    """The L-alpha norm to the power alpha, ``sum |x - center|^alpha``, per image.

    A large alpha (Mahendran & Vedaldi use 6) is nearly free for pixels near the
    centre of the range and grows steeply towards its ends: it keeps the
    reconstruction's dynamic range bounded without a hard clip.

    Args:
        x: Images, shape (N, H, W, C).
        alpha: Exponent, >= 1.
        center: The value the norm is measured from (mid-grey for [0, 1] images).

    Returns:
        Shape (N,).
    """
    return jnp.sum(jnp.abs(x - center) ** alpha, axis=(1, 2, 3))


def per_pixel(value: jax.Array, x: jax.Array, scale: float = 1.0) -> jax.Array:
    """``value / (H * W * scale)``: a regulariser made independent of the image size.

    Args:
        value: Per-image values, shape (N,), from :func:`total_variation` or
            :func:`l_alpha` of ``x``.
        x: The images, shape (N, H, W, C).
        scale: Further divisor, e.g. ``0.5 ** alpha`` so that a saturated pixel costs 1.
    """
    return value / (x.shape[1] * x.shape[2] * scale)


def check_jitter(max_shift: int, side: int) -> int:
    """``max_shift`` as an int if it is in [0, side], else raise ValueError.

    :func:`jitter` rolls the image (what leaves one edge comes back at the other), so a
    shift by the image's side is no shift and a larger one repeats a smaller one: no
    bound beyond the side does anything more, and the bound keeps the random draw within
    int32 (a larger one overflowed).

    Args:
        max_shift: Largest shift in pixels.
        side: The image's longer side in pixels.

    Returns:
        ``int(max_shift)``.

    Raises:
        ValueError: ``max_shift`` is negative or larger than ``side``.
    """
    if not 0 <= max_shift <= side:
        raise ValueError(
            f"jitter must be 0 to the image side, {side} pixels (a shift wraps around, so a "
            f"larger one does nothing more), got {max_shift}"
        )
    return int(max_shift)


def jitter(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
    """Roll the images by one random offset in [-max_shift, max_shift] along H and W.

    Optimising the loss of a randomly shifted image (with the gradient flowing back
    through the roll) stops the optimiser from relying on exact pixel positions, which
    is what makes class visualisations and dreams look like objects instead of a
    high-frequency adversarial pattern.

    Args:
        key: PRNG key.
        x: Images, shape (N, H, W, C); the whole batch moves by the same offset.
        max_shift: Largest shift in pixels; 0 returns ``x``.

    Returns:
        Shape (N, H, W, C).
    """
    if max_shift <= 0:
        return x
    shift = jax.random.randint(key, (2,), -max_shift, max_shift + 1)
    return jnp.roll(x, (shift[0], shift[1]), axis=(1, 2))
