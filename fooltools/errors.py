"""User-facing errors.

Every error a user can cause (a bad path, an unknown class name, a wrong weights file)
is a :class:`FoolError`; the CLI prints its message as one line on stderr and exits
with status 2, as it does for an :class:`Interrupted` command. Anything else escaping is
a bug in fooltools.
"""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none), for a user."""
    return " ".join(str(err).split()) or type(err).__name__


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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, see ``fooltools.cli``) stopped work that saved its state first.

    The message says what was saved and how to continue. A ``KeyboardInterrupt``, not a
    :class:`FoolError`: a batch (``fool run``) records a task's errors and goes on with
    the next run, but stops at an interruption and leaves the run unfinished, to be
    continued by ``fool run --resume``.
    """
