"""Bounds on user-given integers set by the device code, importable without JAX."""

# Loop counters and indices in the jitted loops are int32.
INT32_MAX = 2**31 - 1
# ``jax.random.key`` keeps a seed's low 32 bits: seeds 2^32 apart would be one run.
SEED_MAX = 2**32 - 1
