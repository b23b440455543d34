"""Class labels: turn the names, WordNet ids and indices users type into class indices.

The ImageNet-1k labels come from ``data/imagenet_classes.json`` (see
``data/LABELS_README.md`` for where it came from). Each class has a unique display
name, a list of synonyms (the WordNet lemmas) and a WordNet id such as ``n01558993``.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from fooltools.errors import UnknownClassError

_DATA = Path(__file__).parent / "data" / "imagenet_classes.json"
_MAX_SUGGESTIONS = 5
# A signed integer, so that "-1" is reported as out of range rather than as an unknown name.
_INDEX_RE = re.compile(r"[+-]?[0-9]+")


def _normalise(text: str) -> str:
    """Returns ``text`` in the form names are compared in.

    Case, runs of whitespace, ``_`` and ``-`` are ignored, so "great-white_SHARK"
    matches "great white shark" (shell users tend to avoid spaces).
    """
    return " ".join(text.replace("_", " ").replace("-", " ").casefold().split())


@dataclass(frozen=True)
class LabelSet:
    """The classes of a classifier, with lookup by name, synonym, WordNet id or index.

    Attributes:
        names: The display name of each class, in class-index order; unique.
        synonyms: Further names of each class (not repeating the display name).
        wnids: The WordNet id of each class, e.g. ``"n01558993"``.
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    wnids: tuple[str, ...]
    # Normalised name -> indices of the classes that have it, built once so that a
    # lookup is a dict access; a name with several indices is ambiguous.
    _index: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _by_wnid: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.synonyms) == len(self.wnids):
            raise ValueError("names, synonyms and wnids must have one entry per class")
        if len(set(self.names)) != len(self.names):
            raise ValueError("display names must be unique")
        index: dict[str, list[int]] = {}
        for i, (name, synonyms) in enumerate(zip(self.names, self.synonyms, strict=True)):
            for key in dict.fromkeys(_normalise(s) for s in (name, *synonyms)):
                index.setdefault(key, []).append(i)
        index.pop("", None)  # An empty name would match every empty query.
        # Frozen dataclasses forbid plain assignment, even in __post_init__.
        object.__setattr__(self, "_index", {k: tuple(v) for k, v in index.items()})
        object.__setattr__(self, "_by_wnid", {w.casefold(): i for i, w in enumerate(self.wnids)})

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        """Returns the display name of class ``index``.

        Raises:
            UnknownClassError: If ``index`` is out of range (negative indices included:
                -1 is far likelier a mistake than a request for the last class).
        """
        return self.names[self._check_index(index)]

    def lookup(self, query: str | int) -> int:
        """Returns the index of the class that ``query`` names.

        Args:
            query: A class index (an int or a string of digits), a WordNet id, or a
                display name or synonym, matched ignoring case, ``_``, ``-`` and extra
                whitespace; or names of one class joined by commas, as in ImageNet's
                ``synset_words.txt`` ("tench, Tinca tinca").

        Raises:
            UnknownClassError: If the index is out of range, the name is unknown (the
                message suggests close names) or the name is shared by several classes
                (unless it is the display name of one of them, which then wins).
            TypeError: If ``query`` is neither a string nor an integer (a bool included).
        """
        if not isinstance(query, str):
            return self._check_index(query)
        text = " ".join(query.split())  # One line in messages, whatever was typed.
        if _INDEX_RE.fullmatch(text):
            # int() refuses numbers over 4300 digits; any such number is out of range anyway.
            if len(text) > 20:
                raise self._range_error(text)
            return self._check_index(int(text))
        if text.casefold() in self._by_wnid:
            return self._by_wnid[text.casefold()]
        key = _normalise(text)
        if not key:
            raise UnknownClassError(f"empty class name; {self._usage()}")
        found = self._index.get(key, ()) or self._listed(key)
        if len(found) == 1:
            return found[0]
        if not found:
            suggestions = ", ".join(self._describe(i) for i in self._rank(key)[:_MAX_SUGGESTIONS])
            hint = f"did you mean: {suggestions}?" if suggestions else self._usage()
            raise UnknownClassError(f'unknown class "{text}"; {hint}')
        # A display name beats a synonym of another class ("partridge" is class 86's
        # display name and a synonym of 82), so that every displayed name round-trips;
        # between display names equal up to case ("Cardigan" the corgi, "cardigan" the
        # sweater) the exact spelling decides.
        displayed = [i for i in found if _normalise(self.names[i]) == key]
        spelled = [i for i in displayed if self.names[i] == text]
        for narrowed in (displayed, spelled):
            if len(narrowed) == 1:
                return narrowed[0]
        candidates = ", ".join(f"{i} ({self.names[i]})" for i in found)
        raise UnknownClassError(
            f'"{text}" is ambiguous: {candidates}; use the index or a more specific name'
        )

    def search(self, query: str | int, n: int = 5) -> list[tuple[int, str]]:
        """Returns up to ``n`` classes closest to ``query``, best first.

        The class ``query`` names exactly (if any) comes first, then the classes sharing
        an ambiguous name, then names containing ``query`` as a word, then names with a
        word starting with it, then close spellings, then names containing it anywhere.

        Returns:
            ``(index, display name)`` pairs.
        """
        ranked: list[int] = []
        try:
            ranked.append(self.lookup(query))
        except UnknownClassError:
            pass
        if isinstance(query, str):
            ranked += self._rank(_normalise(query))
        return [(i, self.names[i]) for i in list(dict.fromkeys(ranked))[: max(n, 0)]]

    def _listed(self, key: str) -> tuple[int, ...]:
        """Returns the one class of which ``key`` lists names, comma-separated, if any.

        ImageNet's ``synset_words.txt`` (Caffe's, and the class lists copied from it) gives
        each class as its names joined by commas, "tench, Tinca tinca": pasted whole, such a
        line was an unknown class. Every listed name must be one of the class's.
        """
        parts = [part.strip() for part in key.split(",")]
        if len(parts) < 2 or not all(part in self._index for part in parts):
            return ()
        common = set.intersection(*(set(self._index[part]) for part in parts))
        return tuple(common) if len(common) == 1 else ()

    def _rank(self, key: str) -> list[int]:
        """Returns the indices of classes with names like ``key``, best first, without repeats.

        Tiers, in order: the exact name; names with ``key`` as a word ("cat" -> "tiger
        cat"; a plural "s" is ignored); names with a word starting with ``key`` ("tige" ->
        "tiger"); close spellings, for typos ("robn" -> "robin"); names containing ``key``.
        """
        if not key:
            return []
        stem = re.escape(key.removesuffix("s") or key)
        word, prefix = re.compile(rf"\b{stem}s?\b"), re.compile(rf"\b{stem}")
        entries = [(k, i) for k, ids in self._index.items() for i in ids]
        # Whole words go by index, as ImageNet's order is taxonomic ("cat" lists the
        # domestic cats 281-285 together); prefixes go shortest first, the likeliest to
        # be what was meant before it was finished.
        words = sorted(i for k, i in entries if word.search(k))
        starts = [i for _, i in sorted((len(k), i) for k, i in entries if prefix.search(k))]
        close = difflib.get_close_matches(key, self._index, n=2 * _MAX_SUGGESTIONS, cutoff=0.6)
        fuzzy = [i for k in close for i in self._index[k]]
        inner = [i for k, i in entries if key in k]
        ranked = [*self._index.get(key, ()), *words, *starts, *fuzzy, *inner]
        return list(dict.fromkeys(ranked))

    def _describe(self, index: int) -> str:
        return f"{self.names[index]} ({index})"

    def _usage(self) -> str:
        return f"give a class name, a WordNet id or an index 0..{len(self) - 1}"

    def _range_error(self, index: object) -> UnknownClassError:
        return UnknownClassError(
            f"class index {index} is out of range; valid indices are 0..{len(self) - 1}"
        )

    def _check_index(self, index: int) -> int:
        # bool is an int subclass, but lookup(True) is surely a bug, not class 1.
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"a class is a name or an index, not {type(index).__name__}")
        index = index.__index__()  # Accepts numpy integers, e.g. from argmax.
        if not 0 <= index < len(self):
            raise self._range_error(index)
        return index


@functools.lru_cache(maxsize=1)
def imagenet() -> LabelSet:
    """Returns the 1000 ImageNet-1k classes, loaded once from the package data."""
    classes = json.loads(_DATA.read_text(encoding="utf-8"))
    return LabelSet(
        names=tuple(c["names"][0] for c in classes),
        synonyms=tuple(tuple(c["names"][1:]) for c in classes),
        wnids=tuple(c["wnid"] for c in classes),
    )
