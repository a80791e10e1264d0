"""Concept models of a collection: train them, query scenes ("sky water boats"), tag images.

```
<collection>/concepts/<name>.safetensors   classifiers + training concept matrix
<collection>/concepts/<name>.json          vocabulary, fusion weights, settings (commit point)
```

Concepts come from the images' own tags (``vocab="keywords"``, cleaned as for hashing) or
from their folder names (``vocab="folders"``). The text branch reads the images' free tags;
images without tags are scored on their visual evidence alone. Posteriors are computed
from the stored features (no image is decoded again), in chunks, so a query over a large
collection needs memory for one chunk only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.errors import InvalidRequest

CONCEPTS_DIRNAME = "concepts"
VOCABS = ("keywords", "folders")
DEFAULT_MODEL = "scenes"
CHUNK = 8192
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def concepts_dir(col: Collection) -> Path:
    return col.directory / CONCEPTS_DIRNAME


def list_concept_models(col: Collection) -> list[dict[str, Any]]:
    """One summary per saved concept model (an unreadable one gets an ``error`` field)."""
    from cbir.concepts.scene_model import read_record

    out = []
    d = concepts_dir(col)
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            r = read_record(p)
        except Exception as e:  # noqa: BLE001 — list what can be read, flag the rest
            out.append({"name": p.stem, "error": str(e)})
            continue
        out.append({"name": p.stem, "vocab": r.get("vocab"), "concepts": len(r["vocabulary"]["concepts"]),
                    "concept_sets": len(r["vocabulary"]["itemsets"]),
                    "text_branch": r.get("text_meta") is not None,
                    "weights": r.get("weights"), "k_rc": r.get("k_rc"), "trained_at": r.get("trained_at")})
    return out


def load_concept_model(col: Collection, name: str | None = None) -> Any:
    """The named model; with no name, the only one (or the default name)."""

    if name is None:
        names = [m["name"] for m in list_concept_models(col)]
        if not names:
            raise InvalidRequest("this collection has no concept model yet; train one with "
                                 "`cbir concepts train` (the images need tags, or use --vocab folders)")
        name = DEFAULT_MODEL if DEFAULT_MODEL in names or len(names) != 1 else names[0]
    model = _cached_load(concepts_dir(col), name)
    if model.meta.get("extractor") not in (None, col.manifest.extractor):
        raise InvalidRequest(f"concept model {name!r} was trained on {model.meta.get('extractor')!r} "
                             f"features, this collection uses {col.manifest.extractor!r}")
    return model


_LOADED: dict[Path, tuple[tuple[int, int], Any]] = {}


def _cached_load(directory: Path, name: str) -> Any:
    """Load a saved model once per version of its record (the service queries it per request)."""
    from cbir.concepts.scene_model import SceneModel
    from cbir.train.registry import check_name

    record = directory / f"{check_name(name)}.json"
    try:
        st = record.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    hit = _LOADED.get(record)
    if stamp is not None and hit is not None and hit[0] == stamp:
        return hit[1]
    model = SceneModel.load(directory, name)  # a missing record raises the usual clear error
    if stamp is not None:
        _LOADED[record] = (stamp, model)
    return model


def delete_concept_model(col: Collection, name: str) -> bool:
    from cbir.train.registry import check_name

    check_name(name)
    d = concepts_dir(col)
    existed = (d / f"{name}.json").exists()
    (d / f"{name}.json").unlink(missing_ok=True)  # the record goes first: the model is gone at once
    (d / f"{name}.safetensors").unlink(missing_ok=True)
    shutil.rmtree(_word2vec_dir(col, name), ignore_errors=True)
    return existed


def image_concepts(records: Sequence[Any], vocab: str) -> list[list[str]]:
    """Each record's concepts: cleaned tags (``keywords``) or its folder name (``folders``)."""
    from cbir.concepts.tags import clean_tags, normalize_tag

    if vocab == "keywords":
        return [clean_tags(r.tags) for r in records]
    if vocab == "folders":
        out = []
        for r in records:
            c = normalize_tag(os.path.basename(os.path.dirname(r.path)))
            out.append([c] if c else [])
        return out
    raise InvalidRequest(f"unknown --vocab {vocab!r}; choose from {', '.join(VOCABS)}")


_PRETRAINED: dict[str, Any] = {}


def _vectors(name: str | None) -> Any:
    """A pretrained tag-vector backend (glove, minilm), loaded once per process."""
    if not name or name == "none":
        return None
    if name not in _PRETRAINED:
        from cbir.concepts.tag_vectors import create_tag_vectors

        _PRETRAINED[name] = create_tag_vectors(name)
    return _PRETRAINED[name]


def _word2vec_dir(col: Collection, name: str) -> Path:
    return concepts_dir(col) / f"{name}.word2vec"


def model_vectors(col: Collection, model: Any) -> Any:
    """The tag vectors the model's text branch was trained with (None without a text branch).

    word2vec is trained on the collection's own tags and saved beside the model; the
    pretrained backends are shared by every model.
    """
    if model.text is None:
        return None
    if model.tag_vectors == "word2vec":
        from cbir.concepts.tag_vectors import create_tag_vectors

        return create_tag_vectors("word2vec", path=_word2vec_dir(col, model.name))
    return _vectors(model.tag_vectors)


def _records_and_features(col: Collection) -> tuple[list[Any], np.ndarray]:
    recs = list(col.catalog.iter_records("ok"))
    if not recs:
        raise InvalidRequest("the collection has no indexed image; run `cbir index FOLDER` first")
    ids = np.array([r.id for r in recs], dtype=np.int64)
    got, feats = col.catalog.features(ids)
    pos = {int(i): n for n, i in enumerate(got)}
    recs = [r for r in recs if int(r.id) in pos]  # rows with a damaged feature are skipped
    return recs, np.asarray(feats[[pos[int(r.id)] for r in recs]], dtype=np.float32)


def train_concepts(col: Collection, *, name: str = DEFAULT_MODEL, vocab: str = "keywords",
                   vectors: str | None = "glove", overwrite: bool = False, log: Log = _quiet,
                   **kw: Any) -> Any:
    """Train and save a scene model on the collection's stored features and tags."""
    from cbir import extras
    from cbir.concepts.scene_model import train_scene_model
    from cbir.train.registry import check_name

    check_name(name)
    extras.require("training concept classifiers", "train", ["torch"])
    if (concepts_dir(col) / f"{name}.json").exists() and not overwrite:
        raise InvalidRequest(f"a concept model named {name!r} exists; choose another --name, pass "
                             f"--overwrite, or delete it (`cbir concepts delete {name}`)")
    recs, feats = _records_and_features(col)
    concepts = image_concepts(recs, vocab)
    tags = [list(r.tags) for r in recs] if any(r.tags for r in recs) else None
    if tags is not None:  # the text branch: its tag vectors load lazily, so check them before training
        extras.require_vectors("the concepts' text branch", vectors)
    vec = None
    if tags is not None and vectors == "word2vec":  # skip-gram on the collection's own tags
        from cbir.concepts.tag_vectors import create_tag_vectors

        vec = create_tag_vectors("word2vec", corpus=[t for t in tags if t])
    elif tags is not None:
        vec = _vectors(vectors)
    meta = {"vocab": vocab, "extractor": col.manifest.extractor}
    model, _, _ = train_scene_model(feats, concepts, tags, name=name, vectors=vec, meta=meta, log=log, **kw)
    if model.text is not None and model.tag_vectors == "word2vec":
        vec.save(_word2vec_dir(col, name))  # before the record: the record is the commit point
    model.save(concepts_dir(col), overwrite=overwrite)
    return model


@dataclass
class SceneHit:
    rank: int
    id: int
    path: str
    score: float
    #: per query concept: {"visual": p(c|I), "text": p(c|T) or None}
    evidence: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: the four relevance terms of eqs. 8-9
    components: dict[str, float] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "path": self.path, "score": self.score,
                "evidence": self.evidence, "components": self.components, "tags": self.tags}

    def to_dict(self) -> dict[str, Any]:
        return self.as_dict()


@dataclass
class SceneResult:
    query: list[str]
    notes: list[str]
    model: str
    hits: list[SceneHit]
    terms: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "notes": self.notes, "terms": self.terms, "model": self.model,
                "hits": [h.as_dict() for h in self.hits]}

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data (the same as ``cbir scene --json`` prints)."""
        return self.as_dict()


def parse_query(model: Any, query: str | Sequence[str], vectors: Any | None = None) -> Any:
    from cbir.concepts.query import parse_concept_query

    if vectors is None:
        vectors = synonym_vectors()
    return parse_concept_query(query, model.concepts, vectors)


def synonym_vectors() -> Any | None:
    """Word vectors for reading synonyms in queries: MiniLM, else GloVe, else none."""
    for name in ("minilm", "glove"):
        try:
            return _vectors(name)
        except Exception:  # noqa: BLE001 — synonyms are a convenience; exact names still work
            continue
    return None


#: a trained concept with fewer training images than this defers to a built-in one (issue 11)
MIN_TRAINING_IMAGES = 10


def weak_concepts(model: Any, concepts: Sequence[int] | None = None) -> list[str]:
    """Names of the model's concepts (or of ``concepts``) learnt from too few images."""
    counts = model.vocabulary.concept_counts
    ids = range(len(model.concepts)) if concepts is None else concepts
    return [model.concepts[c] for c in ids if int(counts[c]) < MIN_TRAINING_IMAGES]


def scene_search(col: Collection, query: str | Sequence[str], *, k: int = 20, model_name: str | None = None,
                 vectors: Any | None = None, min_score: float = 0.0, model: Any | None = None) -> SceneResult:
    """Images that show every concept of ``query``, best first (SSIR, eqs. 7-13).

    model: an already loaded concept model (else ``model_name`` is loaded). With no trained
    model, or ``model_name="builtin"``, or words a trained model does not know (and no model
    named), the built-in concepts answer (cbir.words: no training needed).
    """
    from cbir.concepts.relevance import COMPONENTS
    from cbir.words import BUILTIN_MODEL, word_search

    if k < 1:
        raise InvalidRequest(f"k must be >= 1, got {k}")
    if model is None and (model_name == BUILTIN_MODEL or (
            model_name is None and not list_concept_models(col))):
        return word_search(col, query, k=k, min_score=min_score)
    model = model if model is not None else load_concept_model(col, model_name)
    try:
        parsed = parse_query(model, query, vectors)
    except InvalidRequest as e:
        if model_name is not None:
            raise
        try:  # the built-in concepts answer only if they can read every word
            return word_search(col, query, k=k, min_score=min_score, notes=[
                f"model {model.name!r} does not know the query ({e}); searched with the built-in concepts"])
        except InvalidRequest:
            raise e from None
    few = weak_concepts(model, model.query(parsed.concepts))
    if few and model_name is None:  # a concept learnt from a handful of images: lean on the built-in ones
        try:
            return word_search(col, query, k=k, min_score=min_score, notes=[
                f"model {model.name!r} learnt {', '.join(few)} from fewer than {MIN_TRAINING_IMAGES} "
                "images; searched with the built-in concepts (--model NAME to use it anyway)"])
        except InvalidRequest:
            pass  # the built-in concepts cannot read the query: the trained model answers
    text_vec = model_vectors(col, model)
    recs, feats = _records_and_features(col)
    q = model.query(parsed.concepts)
    scores = np.empty(len(recs))
    comps = np.empty((len(recs), 4))
    for lo in range(0, len(recs), CHUNK):
        part = slice(lo, lo + CHUNK)
        tags = [r.tags for r in recs[part]] if model.text is not None else None
        post = model.posteriors(feats[part], tags, text_vec)
        comps[part] = model.components(q, post)
        scores[part] = model.fuse(comps[part], post, q)
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[scores[order] >= min_score]
    top = [recs[i] for i in order]
    post = model.posteriors(feats[order], [r.tags for r in top] if model.text is not None else None, text_vec)
    hits = []
    for n, i in enumerate(order):
        ev = {}
        for c in q:
            name = model.concepts[c]
            has_t = post.text_single is not None and bool(post.has_text[n])
            ev[name] = {"visual": round(float(post.visual_single[n, c]), 6),
                        "text": round(float(post.text_single[n, c]), 6) if has_t else None}
        hits.append(SceneHit(rank=n + 1, id=int(recs[i].id), path=recs[i].path,
                             score=round(float(scores[i]), 8),
                             evidence=ev, components={c: round(float(v), 8) for c, v in
                                                      zip(COMPONENTS, comps[i], strict=True)},
                             tags=list(recs[i].tags)))
    return SceneResult(query=[model.concepts[c] for c in q], notes=parsed.notes, model=model.name,
                       hits=hits, terms=parsed.terms)


def predict_image_concepts(col: Collection, images: Sequence[Any], tags: Sequence[Sequence[str]], *,
                           model: Any, top: int = 10,
                           min_probability: float = 0.0) -> list[list[dict[str, Any]]]:
    """Top concepts with probabilities for decoded images (``load_image`` output) and their tags."""
    from cbir.extract.base import l2_normalize
    from cbir.extract.pipeline import embed_images

    if not images:
        return []
    feats = l2_normalize(embed_images(list(images), col.extractor).features)
    use_text = model.text is not None and any(tags)
    post = model.posteriors(feats, [list(t) for t in tags] if use_text else None,
                            model_vectors(col, model) if use_text else None)
    prob = model.concept_probabilities(post)
    out = []
    for row in prob:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([{"concept": model.concepts[c], "probability": round(float(row[c]), 6)}
                    for c in order if row[c] >= min_probability])
    return out


def predict_concepts(col: Collection, paths: Sequence[Path], *, model_name: str | None = None,
                     top: int = 10, min_probability: float = 0.0) -> list[dict[str, Any]]:
    """Predicted concepts with probabilities for image files (inside the collection or not).

    The image's own tags (sidecar or embedded, as indexing reads them) feed the text branch
    when the model has one.
    """
    from cbir.io.images import load_image
    from cbir.io.tags import read_tags

    model = load_concept_model(col, model_name)
    size = col.extractor.input_size
    out = []
    for p in paths:
        p = Path(p)
        tags = read_tags(p) if model.text is not None else []
        concepts = predict_image_concepts(col, [load_image(p, target_size=size)], [tags], model=model,
                                          top=top, min_probability=min_probability)[0]
        out.append({"path": str(p), "tags_read": tags, "concepts": concepts})
    return out
