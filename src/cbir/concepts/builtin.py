"""Built-in concepts: search photos by words with no training, through the ImageNet-1k classifier.

Each of the backbone's 1000 classes is a WordNet 3.0 noun synset. The built-in concepts are those
synsets and all their WordNet hypernyms (dog, bird, vehicle, flower, food, building, ...); a
concept's classes are the ImageNet classes at or below it, and an image's probability for a
concept is the sum of its class probabilities over those classes::

    bc = load_builtin()
    words = parse_query("sea lion, beach")            # ["sea lion", "beach"]
    hits = [bc.resolve(w) for w in words]              # Resolved(concept_id, name, note, ...)
    scores = concept_scores(probs, [h.concept_id for h in hits])   # (n, 2) float32

The data (``data/builtin_concepts.json.gz``) is built by ``tools/build_builtin_concepts.py`` from
WordNet 3.0 (licence: ``data/WORDNET-LICENSE``); docs/builtin-concepts.md gives the rules.

Numpy and the standard library at import time; scipy.sparse is imported on first use.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest

__all__ = [
    "BuiltinConcepts",
    "Neighbours",
    "Resolved",
    "concept_scores",
    "load_builtin",
    "parse_query",
    "resolve",
]

DATA_FILE = "builtin_concepts.json.gz"
N_CLASSES = 1000
SPELL_CUTOFF = 0.8  # difflib ratio to read a word as a misspelt lemma (the build script uses the same)
SUGGEST_CUTOFF = 0.6  # difflib ratio for "did you mean" suggestions
NEIGHBOUR_MIN = 0.5  # the hook's score from which its best neighbour is taken as the meaning

# Function words dropped by parse_query when they stand alone (not inside a multi-word lemma).
STOPWORDS = frozenset(
    {"a", "an", "the", "and", "or", "with", "without", "on", "in", "at", "of", "by", "near", "for", "to"}
    | {"from", "under", "over", "some", "my", "our", "their"}
)
EXAMPLES = ("dog", "cat", "bird", "car", "flower", "food", "building", "boat", "fruit", "musical instrument")

# (suffix, replacement) of the last word: WordNet's morphy detachment rules for nouns, and -oes/-es.
_SINGULAR_RULES = (
    ("ies", "y"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("xes", "x"),
    ("zes", "z"),
    ("ses", "s"),
    ("oes", "o"),
    ("men", "man"),
    ("es", ""),
    ("s", ""),
)

#: ``neighbours(word, vocabulary) -> [(lemma, score), ...]`` best first, e.g. sentence-vector
#: cosine similarities of ``word`` to the vocabulary's lemmas; scores in [0, 1].
Neighbours = Callable[[str, list[str]], list[tuple[str, float]]]


@dataclass(frozen=True)
class Resolved:
    """A query word read as a built-in concept, and how."""

    word: str  # as given
    concept_id: int
    name: str  # the concept's display name
    lemma: str  # the lemma (index key) that matched
    how: str  # "exact" | "plural" | "multi-word" | "neighbour" | "spelling"
    note: str  # one sentence for the user
    alternatives: tuple[int, ...] = field(default=())  # other concepts the same lemma names


def _norm(text: str) -> str:
    """Query text -> index key form: NFKC, lower case, underscores to spaces, single spaces."""
    text = unicodedata.normalize("NFKC", str(text)).replace("\u2019", "'").replace("_", " ")
    return " ".join(text.lower().split())


def _squash(key: str) -> str:
    """Without spaces, hyphens, apostrophes, dots: 'sea-lion', 'sealion' and 'sea lion' agree."""
    return re.sub(r"[\s\-_'.]+", "", key)


class BuiltinConcepts:
    """The built-in concept vocabulary; see the module docstring. Use :func:`load_builtin`."""

    def __init__(self, data: dict[str, Any]):
        if data.get("format") != 1:
            raise InvalidRequest(f"built-in concepts: unknown data format {data.get('format')!r}")
        concepts = data["concepts"]
        self.n_classes: int = int(data["n_classes"])
        self.wnids: list[str] = [c["wnid"] for c in concepts]
        self.names: list[str] = [c["name"] for c in concepts]
        self.lemmas: list[tuple[str, ...]] = [tuple(c["lemmas"]) for c in concepts]
        self.depths = np.array([c["depth"] for c in concepts], dtype=np.int16)
        self.glosses: list[str] = [c.get("gloss", "") for c in concepts]
        self.parents: list[tuple[int, ...]] = [tuple(c["parents"]) for c in concepts]
        self.class_wnids: list[str] = list(data["wnids"])
        lengths = np.array([len(c["classes"]) for c in concepts], dtype=np.int64)
        self._indptr = np.concatenate([[0], np.cumsum(lengths)])
        self._indices = np.fromiter(
            (i for c in concepts for i in c["classes"]), dtype=np.int32, count=int(lengths.sum())
        )
        self._indices.setflags(write=False)
        self.n_concept_classes = lengths
        self.lemma_index: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in data["lemmas"].items()}
        self.too_broad: frozenset[str] = frozenset(data.get("too_broad", ()))
        self.plural_exceptions: dict[str, str] = dict(data.get("plural_exceptions", {}))
        self.other_words: dict[str, int] = dict(data.get("other_words", {}))
        self.max_share: float = float(data.get("rule", {}).get("max_share", 0.4))
        self.vocabulary: list[str] = sorted(self.lemma_index)
        self.max_phrase_words = max(len(k.split()) for k in self.vocabulary)
        name_counts: dict[str, int] = {}
        for n in self.names:
            name_counts[n.lower()] = name_counts.get(n.lower(), 0) + 1
        self._ambiguous_names = {n for n, c in name_counts.items() if c > 1}

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"BuiltinConcepts({len(self)} concepts, {len(self.lemma_index)} lemmas)"

    # ---------------------------------------------------------------- concepts

    def _check_id(self, concept_id: int) -> int:
        cid = int(concept_id)
        if not 0 <= cid < len(self.names):
            raise InvalidRequest(f"concept id {concept_id!r} out of range (0..{len(self.names) - 1})")
        return cid

    def classes(self, concept_id: int) -> np.ndarray:
        """The sorted ImageNet class indices at or below the concept (read-only int32 array)."""
        cid = self._check_id(concept_id)
        return self._indices[self._indptr[cid] : self._indptr[cid + 1]]

    def label(self, concept_id: int) -> str:
        """The display name, with a parent's name when another concept has the same name."""
        cid = self._check_id(concept_id)
        name = self.names[cid]
        if name.lower() in self._ambiguous_names and self.parents[cid]:
            return f"{name} ({self.names[self.parents[cid][0]]})"
        return name

    def describe(self, concept_id: int) -> str:
        cid = self._check_id(concept_id)
        n = len(self.classes(cid))
        return f"{self.label(cid)}: {n} class{'es' if n != 1 else ''}; {self.glosses[cid]}"

    @functools.cached_property
    def membership(self):
        """(n_concepts x 1000) scipy.sparse CSR float32 matrix of 0/1: concept -> its classes."""
        import scipy.sparse as sp

        data = np.ones(len(self._indices), dtype=np.float32)
        return sp.csr_matrix(
            (data, self._indices, self._indptr), shape=(len(self.names), self.n_classes), dtype=np.float32
        )

    # ---------------------------------------------------------------- words

    @functools.cached_property
    def _squashed(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key in self.vocabulary:
            out.setdefault(_squash(key), key)
        return out

    def _singulars(self, key: str) -> list[str]:
        """Singular readings of a (possibly multi-word) key, most likely first; not checked."""
        out: list[str] = []
        if key in self.plural_exceptions:
            out.append(self.plural_exceptions[key])
        head, _, last = key.rpartition(" ")
        prefix = head + " " if head else ""
        if last in self.plural_exceptions:
            out.append(prefix + self.plural_exceptions[last])
        for suffix, repl in _SINGULAR_RULES:
            if last.endswith(suffix) and len(last) > len(suffix) + 1 and not last.endswith("ss"):
                out.append(prefix + last[: -len(suffix)] + repl)
        return list(dict.fromkeys(out))

    def _plurals(self, key: str) -> list[str]:
        """Plural readings, for lemmas that WordNet lists in the plural."""
        return [key + "s", key + "es"]

    def _lookup(self, key: str) -> tuple[str, str] | None:
        """(lemma key, how) for exact, plural/singular and separator-insensitive matches."""
        if key in self.lemma_index:
            return key, "exact"
        for cand in self._singulars(key) + self._plurals(key):
            if cand in self.lemma_index:
                return cand, "plural"
        sq = self._squashed
        if _squash(key) in sq:
            return sq[_squash(key)], "multi-word"
        for cand in self._singulars(key):
            if _squash(cand) in sq:
                return sq[_squash(cand)], "multi-word"
        return None

    def _is_other_word(self, key: str) -> int | None:
        """A real (WordNet) word that is not a concept: its broader concept id or -1; else None."""
        for cand in [key, *self._singulars(key)]:
            if cand in self.other_words:
                return self.other_words[cand]
        return None

    def _count(self, concept_id: int) -> str:
        n = len(self.classes(concept_id))
        return f"{n} class" if n == 1 else f"{n} classes"

    def _result(self, word: str, lemma: str, how: str, note: str) -> Resolved:
        ids = self.lemma_index[lemma]
        cid = ids[0]
        if len(ids) > 1:
            others = ", ".join(f"{self.label(i)} ({self._count(i)})" for i in ids[1:])
            tied = len(self.classes(ids[1])) == len(self.classes(cid))
            why = "the more frequent WordNet sense" if tied else "the most"
            note += (
                f"; '{lemma}' names {len(ids)} concepts: chose {self.label(cid)} "
                f"({self._count(cid)}, {why}); others: {others}"
            )
        return Resolved(word, cid, self.names[cid], lemma, how, note, tuple(ids[1:]))

    def resolve(
        self,
        word: str,
        neighbours: Neighbours | None = None,
        *,
        min_similarity: float = NEIGHBOUR_MIN,
    ) -> Resolved:
        """Read a query word or phrase as a concept; raise InvalidRequest with suggestions if none.

        In order: an exact lemma; a plural or singular form (WordNet's noun exceptions, then
        -s/-es/-ies/-men rules); the lemma with spaces, hyphens and underscores ignored ("sea-lion",
        "sealion", "golden_retriever"); the ``neighbours`` hook's best neighbour with a score of at
        least ``min_similarity``; a close spelling (difflib ratio >= 0.8), unless the word is itself
        a WordNet word. A lemma naming several concepts gives the one with most classes (ties: the
        more frequent WordNet sense); the note says so and ``alternatives`` lists the others.
        """
        key = _norm(word)
        if not key:
            raise InvalidRequest("empty concept word: give a word such as " + ", ".join(EXAMPLES[:4]))
        found = self._lookup(key)
        if found:
            lemma, how = found
            if how == "exact":
                note = f"'{key}' is a WordNet lemma"
            elif how == "plural":
                note = f"'{key}' read as '{lemma}'"
            else:
                note = f"'{key}' read as the lemma '{lemma}' (spaces, hyphens, underscores ignored)"
            return self._result(str(word), lemma, how, note)
        if key in self.too_broad:
            raise InvalidRequest(
                f"'{key}' is too broad to search with: it covers more than {self.max_share:.0%} of the "
                f"ImageNet classes; try a narrower word such as {', '.join(EXAMPLES[:6])}"
            )

        near_meaning: list[tuple[str, float]] = []
        if neighbours is not None:
            for lemma, score in neighbours(key, self.vocabulary) or ():
                found = self._lookup(_norm(lemma))
                if found and found[0] not in (m for m, _ in near_meaning):
                    near_meaning.append((found[0], float(score)))
            if near_meaning and near_meaning[0][1] >= min_similarity:
                lemma, score = near_meaning[0]
                note = f"'{key}' is not a built-in concept; nearest in meaning: '{lemma}' ({score:.2f})"
                return self._result(str(word), lemma, "neighbour", note)

        broader = self._is_other_word(key)
        if broader is None:
            close = difflib.get_close_matches(key, self.vocabulary, 1, SPELL_CUTOFF)
            if close:
                note = f"'{key}' read as '{close[0]}' (spelling)"
                return self._result(str(word), close[0], "spelling", note)

        suggestions = [m for m, _ in near_meaning[:5]]
        parts = [f"'{key}' is not a built-in concept (a WordNet noun with ImageNet classes below it)"]
        if broader is not None:
            parts[0] = f"'{key}' is a word, but no ImageNet class lies below it in WordNet"
            if broader >= 0:
                parts.append(f"a broader concept: {self.label(broader)} ({self._count(broader)})")
                suggestions.append(self.vocabulary_key(broader))
        suggestions += difflib.get_close_matches(key, self.vocabulary, 5, SUGGEST_CUTOFF)
        suggestions = list(dict.fromkeys(suggestions))
        if suggestions:
            parts.append("did you mean: " + ", ".join(suggestions) + "?")
        else:
            parts.append("try a common noun such as " + ", ".join(EXAMPLES))
        err = InvalidRequest("; ".join(parts))
        err.suggestions = suggestions  # type: ignore[attr-defined]
        raise err

    def vocabulary_key(self, concept_id: int) -> str:
        """The index key of the concept's display name (its first lemma)."""
        return _norm(self.names[self._check_id(concept_id)])

    def parse_query(self, text: str) -> list[str]:
        """Split a query into words and multi-word lemmas ("sea lion beach" -> ["sea lion", "beach"]).

        Commas, semicolons, slashes, '+', '&' and '|' separate parts; "quoted phrases" stay whole;
        within a part the longest run of words that reads as a lemma (plurals and hyphens allowed)
        is taken first. Stand-alone function words (a, the, on, with, ...) are dropped.
        """
        text = unicodedata.normalize("NFKC", str(text)).replace("\u201c", '"').replace("\u201d", '"')
        out: list[str] = []
        for i, chunk in enumerate(text.split('"')):
            if i % 2 == 1:  # inside quotes
                phrase = _norm(chunk)
                if phrase:
                    out.append(phrase)
                continue
            for part in re.split(r"[,;/+&|]", chunk):
                tokens = [t.strip(".!?:()[]{}'") for t in _norm(part).split()]
                tokens = [t for t in tokens if t]
                j = 0
                while j < len(tokens):
                    for n in range(min(self.max_phrase_words, len(tokens) - j), 1, -1):
                        phrase = " ".join(tokens[j : j + n])
                        if self._lookup(phrase):
                            out.append(phrase)
                            j += n
                            break
                    else:
                        if tokens[j] not in STOPWORDS:
                            out.append(tokens[j])
                        j += 1
        return out

    # ---------------------------------------------------------------- scores

    def concept_scores(self, probs, concept_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, len(concept_ids)) float32 = probs @ membership[concept_ids].T, clipped to [0, 1].

        ``probs``: (n, 1000) class probabilities, a dense array or a scipy.sparse matrix (e.g. only
        each image's top classes kept); one image may be given as a (1000,) vector.
        """
        ids = np.asarray(concept_ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.names)):
            raise InvalidRequest(f"concept ids out of range (0..{len(self.names) - 1}): {ids.tolist()}")
        weights = np.zeros((self.n_classes, len(ids)), dtype=np.float32)
        for j, cid in enumerate(ids):
            weights[self.classes(cid), j] = 1.0
        if hasattr(probs, "tocsr"):  # scipy.sparse
            if probs.ndim != 2 or probs.shape[1] != self.n_classes:
                raise InvalidRequest(f"probs must be (n, {self.n_classes}); got {probs.shape}")
            m = probs.tocsr()
            if m.dtype != np.float32:
                m = m.astype(np.float32)
            out = np.asarray(m @ weights)
        else:
            arr = np.asarray(probs, dtype=np.float32)
            if arr.ndim == 1:
                arr = arr[None, :]
            if arr.ndim != 2 or arr.shape[1] != self.n_classes:
                raise InvalidRequest(f"probs must be (n, {self.n_classes}); got {arr.shape}")
            out = arr @ weights
        out = np.asarray(out, dtype=np.float32)
        np.clip(out, 0.0, 1.0, out=out)
        return out


@functools.cache
def load_builtin() -> BuiltinConcepts:
    """The packaged built-in concepts (loaded once)."""
    path = resources.files("cbir.concepts").joinpath("data").joinpath(DATA_FILE)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise InvalidRequest(
            f"built-in concepts data missing ({DATA_FILE}); rebuild with tools/build_builtin_concepts.py"
        ) from e
    return BuiltinConcepts(json.loads(gzip.decompress(raw)))


def resolve(
    word: str, neighbours: Neighbours | None = None, *, min_similarity: float = NEIGHBOUR_MIN
) -> Resolved:
    """:meth:`BuiltinConcepts.resolve` on the packaged concepts."""
    return load_builtin().resolve(word, neighbours, min_similarity=min_similarity)


def parse_query(text: str) -> list[str]:
    """:meth:`BuiltinConcepts.parse_query` on the packaged concepts."""
    return load_builtin().parse_query(text)


def concept_scores(probs, concept_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """:meth:`BuiltinConcepts.concept_scores` on the packaged concepts."""
    return load_builtin().concept_scores(probs, concept_ids)
