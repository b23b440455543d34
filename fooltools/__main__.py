"""``python -m fooltools``: the ``fool`` command, where its script is not on PATH."""

from fooltools.hugepages import fool

if __name__ == "__main__":
    fool()
