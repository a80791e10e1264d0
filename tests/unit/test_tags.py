"""Tag cleaning: table-driven normalisation, singular forms, stop words, camera junk, vocabularies."""

from __future__ import annotations

import pytest

from cbir.concepts.tags import (
    INVARIANT_WORDS,
    IRREGULAR_PLURALS,
    TagCleaner,
    build_vocabulary,
    clean_tags,
    normalize_tag,
    singularize,
)

# raw tag -> expected canonical form (None = dropped)
NORMALIZE_CASES: list[tuple[str, str | None]] = [
    # case, whitespace, punctuation
    ("Beach", "beach"),
    ("  SUNSET!! ", "sunset"),
    ("black-and-white", "black and white"),
    ("red_cars", "red car"),
    ("children's", "child"),
    ("café", "café"),
    ("東京", "東京"),
    # plurals
    ("cats", "cat"),
    ("boxes", "box"),
    ("berries", "berry"),
    ("leaves", "leaf"),
    ("churches", "church"),
    ("glasses", "glass"),
    ("horses", "horse"),
    ("heroes", "hero"),
    ("tomatoes", "tomato"),
    ("shoes", "shoe"),
    ("days", "day"),
    ("women", "woman"),
    ("ties", "tie"),
    # singular words ending in s stay
    ("glass", "glass"),
    ("bus", "bus"),
    ("buses", "bus"),
    ("news", "news"),
    ("paris", "paris"),
    ("texas", "texas"),
    ("lens", "lens"),
    ("cactus", "cactus"),
    ("series", "series"),
    # stop words, numbers, years, too short
    ("the", None),
    ("a", None),
    ("and", None),
    ("of", None),
    ("my", None),
    ("the beach", "beach"),
    ("2008", None),
    ("1999", None),
    ("12345", None),
    ("x", None),
    ("!!", None),
    ("", None),
    # camera, exposure, file-name and meta junk
    ("canon", None),
    ("Nikon", None),
    ("eos", None),
    ("d700", None),
    ("nikon d700", None),
    ("canoneos400d", None),
    ("400d", None),
    ("iso100", None),
    ("iso 400", None),
    ("ISO1600", None),
    ("f2.8", None),
    ("f/4", None),
    ("1/250", None),
    ("50mm", None),
    ("18-55mm", None),
    ("50mm18", None),
    ("img_1234", None),
    ("DSC01234", None),
    ("IMG_0001.JPG", None),
    ("2008-05-01", None),
    ("may2008", None),
    ("geotagged", None),
    ("geo:lat=52.3702", None),
    ("geo:lon=4.8952", None),
    ("uploaded:by=flickrmobile", None),
    ("explore", None),
    # real things that look like junk
    ("f1", "f1"),
    ("3d", "3d"),
    ("a380", "a380"),
    ("marathon2008", "marathon2008"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZE_CASES)
def test_normalize_tag(raw: str, expected: str | None) -> None:
    assert normalize_tag(raw) == expected


@pytest.mark.parametrize("raw", [r for r, _ in NORMALIZE_CASES])
def test_normalize_tag_is_idempotent(raw: str) -> None:
    once = normalize_tag(raw)
    assert once is None or normalize_tag(once) == once


@pytest.mark.parametrize(
    ("word", "expected"),
    [("cats", "cat"), ("foxes", "fox"), ("wishes", "wish"), ("cities", "city"), ("wolves", "wolf"),
     ("caves", "cave"), ("kiwis", "kiwi"), ("menus", "menu"), ("gas", "gas"), ("dress", "dress"),
     ("iris", "iris"), ("octopus", "octopus"), ("sheep", "sheep"), ("naïves", "naïves")],
)  # fmt: skip
def test_singularize(word: str, expected: str) -> None:
    assert singularize(word) == expected


def test_exception_lists_are_fixed_points() -> None:
    # every singular the rules produce or protect must survive a second pass unchanged
    for singular in list(IRREGULAR_PLURALS.values()) + sorted(INVARIANT_WORDS):
        assert singularize(singular) == singular, singular


def test_clean_tags_drops_junk_and_deduplicates_in_order() -> None:
    raw = ["Cats", "canon", "cat", "the", "Beach", "beaches", "2008", "iso 400", "sea", "cats"]
    assert clean_tags(raw) == ["cat", "beach", "sea"]


def test_cleaner_custom_stop_words_and_options() -> None:
    c = TagCleaner(stop_words=["beach"], extra_stop_words=["Nice"])
    assert c.clean(["beach", "nice", "the", "dogs"]) == ["the", "dog"]  # 'the' is no longer a stop word
    assert TagCleaner(singularize=False).clean(["dogs", "cats"]) == ["dogs", "cats"]
    assert TagCleaner(min_length=4).clean(["sea", "ocean", "sky"]) == ["ocean"]
    with pytest.raises(ValueError):
        TagCleaner(min_count=0)


def test_cleaner_fit_transform_keeps_frequent_tags() -> None:
    lists = [["Dogs", "park", "canon"], ["dog", "grass"], ["dog", "park", "img_0001"], ["cat"]]
    c = TagCleaner(min_count=2)
    assert c.transform(lists)[0] == ["dog", "park"]  # before fit: every clean tag
    out = c.fit_transform(lists)
    assert c.vocabulary == ["dog", "park"]  # dog: 3 images, park: 2; grass and cat: 1
    assert out == [["dog", "park"], ["dog"], ["dog", "park"], []]


def test_build_vocabulary_counts_images_not_occurrences() -> None:
    lists = [["b", "b", "a"], ["a", "c"], ["c"], ["d"]]
    # a: 2 images, b: 1 (twice in one list), c: 2, d: 1; ties alphabetical
    assert build_vocabulary(lists, min_count=2) == ["a", "c"]
    assert build_vocabulary(lists, min_count=1) == ["a", "c", "b", "d"]
    assert build_vocabulary(lists, min_count=1, max_size=3) == ["a", "c", "b"]
    with pytest.raises(ValueError):
        build_vocabulary(lists, min_count=0)
