"""Bounds on user-given numbers set by the device code and the machine, importable without JAX."""

import os

# Loop counters and indices in the jitted loops are int32.
INT32_MAX = 2**31 - 1
# ``jax.random.key`` keeps a seed's low 32 bits: seeds 2^32 apart would be one run.
SEED_MAX = 2**32 - 1


def host_memory() -> int | None:
    """Bytes of physical memory of this machine; None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
