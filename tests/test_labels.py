"""Tests for fooltools.labels: class lookup by name, synonym, WordNet id and index."""

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fooltools.errors import FoolError, UnknownClassError
from fooltools.labels import LabelSet, imagenet

LABELS = imagenet()


def _norm(text: str) -> str:
    # A second, independent spelling of the matching rule, to check the module against.
    return " ".join(re.sub(r"[_-]", " ", text).lower().split())


# Normalised name -> classes having it, built by brute force as the oracle for round trips.
_OWNERS: dict[str, set[int]] = {}
for _i in range(1000):
    for _name in (LABELS.names[_i], *LABELS.synonyms[_i]):
        _OWNERS.setdefault(_norm(_name), set()).add(_i)


def _lookup_error(query) -> str:
    with pytest.raises(UnknownClassError) as info:
        LABELS.lookup(query)
    return str(info.value)


def _check_round_trip(query: str, index: int, original: str) -> None:
    """``query`` is a spelling of ``original``, a name of class ``index``."""
    key = _norm(original)
    owners = sorted(_OWNERS[key])
    displayed = [j for j in owners if _norm(LABELS.names[j]) == key]
    if len(owners) == 1:
        assert LABELS.lookup(query) == index
    elif len(displayed) == 1:
        # A display name beats another class's synonym of the same spelling.
        assert LABELS.lookup(query) == displayed[0]
    else:
        try:
            found = LABELS.lookup(query)
        except UnknownClassError as error:
            assert f"{index} ({LABELS.names[index]})" in str(error)
            assert "ambiguous" in str(error)
        else:
            # Only display names equal up to case ("Cardigan", "cardigan") get here.
            assert LABELS.names[found] == " ".join(query.split())


def test_imagenet_has_1000_classes_with_unique_names_and_wnids():
    assert len(LABELS) == len(LABELS.names) == len(LABELS.synonyms) == len(LABELS.wnids) == 1000
    assert len(set(LABELS.names)) == 1000
    assert len(set(LABELS.wnids)) == 1000
    assert all(re.fullmatch(r"n\d{8}", w) for w in LABELS.wnids)
    assert all(isinstance(s, tuple) for s in LABELS.synonyms)
    assert imagenet() is LABELS  # Loaded once.


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("ostrich", 9),
        ("robin", 15),
        ("American robin", 15),
        ("AMERICAN ROBIN", 15),
        ("  american   robin ", 15),
        ("american_robin", 15),
        ("Turdus migratorius", 15),
        ("great-white-shark", 2),
        ("man eater", 2),
        ("9", 9),
        (" 15 ", 15),
        ("0", 0),
        ("999", 999),
        (9, 9),
        (np.int64(15), 15),
        ("tabby", 281),
        ("tabby cat", 281),
        ("tiger cat", 282),
        ("Egyptian cat", 285),
        ("espresso", 967),
        ("n01558993", 15),
        ("N01558993", 15),
        ("crane bird", 134),
        ("construction crane", 517),
        ("tank suit", 639),
        ("partridge", 86),  # Display name of 86, synonym of 82.
        ("Cardigan", 264),  # The corgi; "cardigan" is the sweater.
        ("cardigan", 474),
        # Lines of ImageNet's synset_words.txt: a class's names, joined by commas.
        ("tench, Tinca tinca", 0),
        ("great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias", 2),
        ("maillot, tank suit", 639),  # "maillot" alone is ambiguous
        ("Tights for gymnastics, a one-piece leotard, or a sport jersey", 638),
    ],
)
def test_lookup(query, index):
    assert LABELS.lookup(query) == index


def test_name():
    assert LABELS.name(9) == "ostrich"
    assert LABELS.name(15) == "robin"
    with pytest.raises(UnknownClassError, match=r"0\.\.999"):
        LABELS.name(1000)


@pytest.mark.parametrize("query", [1000, -1, "1000", "-1", "+1000", "1" * 5000])
def test_index_out_of_range(query):
    message = _lookup_error(query)
    assert "out of range" in message
    assert "0..999" in message


@pytest.mark.parametrize("query", [True, 9.0, None])
def test_lookup_rejects_non_indices(query):
    with pytest.raises(TypeError):
        LABELS.lookup(query)


def test_ambiguous_synonym_lists_candidates():
    assert _lookup_error("crane") == (
        '"crane" is ambiguous: 134 (crane bird), 517 (construction crane); '
        "use the index or a more specific name"
    )
    message = _lookup_error(" MAILLOT ")
    assert message.startswith('"MAILLOT" is ambiguous: 638 (')
    assert "639 (one-piece bathing suit)" in message
    assert "264 (Cardigan), 474 (cardigan)" in _lookup_error("CARDIGAN")


def test_names_of_different_classes_listed_together_are_unknown():
    assert _lookup_error("tench, robin").startswith('unknown class "tench, robin"; did you mean')
    assert _lookup_error("crane, tench").startswith('unknown class "crane, tench"')
    assert _lookup_error("crane, crane").startswith('unknown class "crane, crane"')  # 134 or 517


def test_unknown_class_suggests_close_names():
    message = _lookup_error("ostrch")
    assert message.startswith('unknown class "ostrch"; did you mean: ostrich (9), ')
    assert message.endswith("?")
    assert "robin (15)" in _lookup_error("robn")
    assert "espresso (967)" in _lookup_error("espreso")
    assert _lookup_error("tige").startswith('unknown class "tige"; did you mean: tiger (292)')


def test_unknown_class_suggests_names_containing_the_word():
    for query in ["cat", "cats", " Cat "]:
        message = _lookup_error(query)
        for name in ["tabby (281)", "tiger cat (282)", "Persian cat (283)", "Egyptian cat (285)"]:
            assert name in message
    assert "great white shark (2)" in _lookup_error("shark")


def test_unknown_class_without_suggestions():
    assert _lookup_error("zzzz") == (
        'unknown class "zzzz"; give a class name, a WordNet id or an index 0..999'
    )


@pytest.mark.parametrize("query", ["", "   ", "_-_"])
def test_empty_query(query):
    assert _lookup_error(query).startswith("empty class name")


def test_errors_are_user_errors():
    assert issubclass(UnknownClassError, FoolError)


def test_every_name_of_every_class_round_trips():
    for index in range(1000):
        assert LABELS.lookup(LABELS.names[index]) == index
        assert LABELS.lookup(LABELS.wnids[index]) == index
        assert LABELS.lookup(str(index)) == index
        for synonym in LABELS.synonyms[index]:
            _check_round_trip(synonym, index, synonym)


@st.composite
def _respelt_name(draw):
    """A class index, one of its names, and that name in random case, spacing and separators."""
    index = draw(st.integers(0, 999))
    original = draw(st.sampled_from((LABELS.names[index], *LABELS.synonyms[index])))
    chars = [draw(st.sampled_from([c.lower(), c.upper()])) for c in original]
    respelt = "".join(
        draw(st.sampled_from([" ", "  ", "_", "-", "\t"])) if c in " -" else c for c in chars
    )
    pad = st.sampled_from(["", " ", "  ", "\n"])
    return index, original, draw(pad) + respelt + draw(pad)


@settings(max_examples=300, deadline=None)
@given(_respelt_name())
def test_case_and_spacing_variants_round_trip(case):
    index, original, query = case
    _check_round_trip(query, index, original)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_text_gives_a_class_or_a_one_line_error(query):
    try:
        index = LABELS.lookup(query)
    except UnknownClassError as error:
        assert len(str(error).splitlines()) == 1
    else:
        assert 0 <= index < 1000


def test_search():
    assert LABELS.search("cat") == [
        (281, "tabby"),
        (282, "tiger cat"),
        (283, "Persian cat"),
        (284, "Siamese cat"),
        (285, "Egyptian cat"),
    ]
    assert LABELS.search("ostrich")[0] == (9, "ostrich")
    assert LABELS.search("ostrch", n=1) == [(9, "ostrich")]
    assert [i for i, _ in LABELS.search("crane")[:2]] == [134, 517]
    assert LABELS.search(9) == [(9, "ostrich")]
    assert LABELS.search("robin", n=0) == []
    assert len(LABELS.search("dog", n=3)) == 3
    assert LABELS.search("zzzz") == []


def test_custom_label_set():
    labels = LabelSet(
        names=("cat", "dog", "hot dog"),
        synonyms=(("kitty",), ("hound",), ("frankfurter", "hound")),
        wnids=("n1", "n2", "n3"),
    )
    assert len(labels) == 3
    assert labels.lookup("Kitty") == 0
    assert labels.lookup("hot_dog") == 2
    with pytest.raises(UnknownClassError, match=r"valid indices are 0\.\.2"):
        labels.lookup(3)
    with pytest.raises(UnknownClassError, match=r"ambiguous: 1 \(dog\), 2 \(hot dog\)"):
        labels.lookup("hound")
    with pytest.raises(dataclasses.FrozenInstanceError):
        labels.names = ()  # type: ignore[misc]
    assert labels == LabelSet(labels.names, labels.synonyms, labels.wnids)
    assert hash(labels) == hash(LabelSet(labels.names, labels.synonyms, labels.wnids))


def test_label_set_rejects_inconsistent_data():
    with pytest.raises(ValueError, match="one entry per class"):
        LabelSet(names=("a", "b"), synonyms=((),), wnids=("n1", "n2"))
    with pytest.raises(ValueError, match="unique"):
        LabelSet(names=("a", "a"), synonyms=((), ()), wnids=("n1", "n2"))
