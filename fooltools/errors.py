"""User-facing errors.

Every error a user can cause (a bad path, an unknown class name, a wrong weights file)
is a :class:`FoolError`; the CLI prints its message as one line on stderr and exits
with status 2. Anything else escaping is a bug in fooltools.
"""


class FoolError(Exception):
    """An error caused by the user's input, with a message fit to show them."""


class ImageError(FoolError):
    """An image file is missing, unreadable or not an image."""


class CheckpointError(FoolError):
    """A checkpoint file is missing, corrupt, of an unknown format or unsafe."""


class UnknownClassError(FoolError):
    """A class name or index that the label set does not know."""


class ModelError(FoolError):
    """An unknown model name, a model whose weights are not installed, or bad weights."""
