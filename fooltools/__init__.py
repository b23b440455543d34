"""fooltools: adversarial perturbations and fooling images in JAX."""

__version__ = "0.1.0"
