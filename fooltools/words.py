"""Words in messages: counts with their nouns."""


def count(n: int, noun: str) -> str:
    """``"1 run"``, ``"2 runs"``: ``n`` and ``noun``, with an ``s`` unless n is 1."""
    return f"{n} {noun}{'s' * (n != 1)}"
