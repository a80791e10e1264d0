"""Concept queries typed by a user: ``"sky water boats"`` -> concepts of the vocabulary.

Each term is normalised like a tag (case, plural) and looked up in the vocabulary. A term
the vocabulary lacks is mapped to its nearest concept by tag-vector cosine similarity
(a synonym: "seaside" -> "beach"; the MiniLM sentence model finds these far better than
GloVe-50d, which puts "seaside" nearest to "hillside") when that similarity reaches
``min_similarity``, else to a close spelling ("montains" -> "mountain") unless the term is
itself a real word (``is_word``: "horse" is not a misspelling of "shore"); otherwise the
query is refused with the closest concepts as suggestions. Terms are separated by commas
or "+" when the query has any (so multi-word concepts can be typed), else by white space.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbir.concepts.tags import normalize_tag
from cbir.errors import InvalidRequest

#: cosine similarity of tag vectors above which an unknown term is read as a synonym
MIN_SIMILARITY = 0.7
#: difflib ratio above which an unknown term is read as a misspelling
MIN_SPELLING = 0.8

__all__ = ["MIN_SIMILARITY", "ParsedQuery", "parse_concept_query", "split_terms"]


@dataclass
class ParsedQuery:
    """The concepts of a query, in the order typed, and how each term was read."""

    concepts: list[str]
    #: one entry per term: {"term", "concept", "how": exact|synonym|spelling, "similarity"}
    terms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Human-readable lines for every term that was not taken literally."""
        return [f"{t['term']!r} read as {t['concept']!r} ({t['how']}, {t['similarity']:.2f})"
                for t in self.terms if t["how"] != "exact"]


def split_terms(query: str | Sequence[str]) -> list[str]:
    """The raw terms of a query string (or the items of a list, each stripped)."""
    if isinstance(query, str):
        parts = re.split(r"[,+]", query) if re.search(r"[,+]", query) else query.split()
    else:
        parts = [str(q) for q in query]
    terms = [p.strip() for p in parts if p and p.strip()]
    if not terms:
        raise InvalidRequest("the query is empty; name at least one concept, e.g. \"sky water\"")
    return terms


def _canonical(term: str, concepts: set[str], normalized: dict[str, str]) -> str | None:
    for cand in (term, term.lower(), normalize_tag(term)):
        if cand and cand in concepts:
            return cand
    norm = normalize_tag(term)
    return normalized.get(norm) if norm else None  # "car" finds a vocabulary's "cars"


def _nearest(term: str, concepts: Sequence[str], vectors: Any) -> tuple[str | None, float]:
    if vectors is None:
        return None, 0.0
    words = [normalize_tag(term) or term.lower(), term.lower()]
    v = next((vectors.vector(w) for w in words if vectors.known(w)), None)
    if v is None:
        return None, 0.0
    known = [c for c in concepts if vectors.known(c)]
    if not known:
        return None, 0.0
    m = vectors.encode(known).astype(np.float64)
    sims = m @ v / np.maximum(np.linalg.norm(m, axis=1) * np.linalg.norm(v), 1e-12)
    best = int(np.argmax(sims))
    return known[best], float(sims[best])


def parse_concept_query(query: str | Sequence[str], concepts: Sequence[str], vectors: Any | None = None,
                        *, min_similarity: float = MIN_SIMILARITY,
                        is_word: Callable[[str], bool] | None = None) -> ParsedQuery:
    """Map a query's terms to ``concepts``; see the module docstring.

    vectors: a :class:`~cbir.concepts.tag_vectors.TagVectors` for synonyms (None: exact
    names and spellings only). is_word(term): True for a real word, which is then never
    read as a misspelling of a concept (None: every term may be). Duplicate concepts are
    kept once.
    """
    vocab = set(concepts)
    normalized: dict[str, str] = {}
    for c in concepts:
        normalized.setdefault(normalize_tag(c) or c, c)
    out: list[str] = []
    terms: list[dict[str, Any]] = []
    for term in split_terms(query):
        hit = _canonical(term, vocab, normalized)
        how, sim = "exact", 1.0
        if hit is None:
            cand, sim = _nearest(term, list(concepts), vectors)
            if cand is not None and sim >= min_similarity:
                hit, how = cand, "synonym"
        if hit is None and not (is_word is not None and is_word(term)):
            key = normalize_tag(term) or term.lower()
            close = difflib.get_close_matches(key, list(concepts), n=1, cutoff=MIN_SPELLING)
            if close:
                hit, how = close[0], "spelling"
                sim = difflib.SequenceMatcher(None, key, close[0]).ratio()
        if hit is None:
            key = normalize_tag(term) or term.lower()
            near = difflib.get_close_matches(key, list(concepts), n=3, cutoff=0.5)
            cand, csim = _nearest(term, list(concepts), vectors)
            if cand is not None and cand not in near:
                near.append(cand)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise InvalidRequest(f"the model does not know the concept {term!r} (it knows {len(concepts)} "
                                 f"concepts; `cbir concepts show` lists them){hint}")
        if hit not in out:
            out.append(hit)
        terms.append({"term": term, "concept": hit, "how": how, "similarity": round(float(sim), 4)})
    return ParsedQuery(out, terms)
