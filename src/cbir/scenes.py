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

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
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


def _model_names(col: Collection) -> list[str]:
    """Names of the saved concept models (readable or not), as :func:`list_concept_models`
    lists them, without reading their records (a query asks this every time)."""
    d = concepts_dir(col)
    return [p.stem for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def load_concept_model(col: Collection, name: str | None = None) -> Any:
    """The named model; with no name, the only one (or the default name)."""

    if name is None:
        names = _model_names(col)
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
    (d / f"{name}.posteriors").unlink(missing_ok=True)
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
    if not col.readonly:  # the posteriors of every image, stored now: the first query is fast
        t0 = time.perf_counter()
        loaded = load_concept_model(col, name)
        collection_posteriors(col, loaded)
        log(f"concept posteriors of {len(recs)} images stored ({time.perf_counter() - t0:.1f} s)")
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
    from cbir.concepts.builtin import load_builtin
    from cbir.concepts.query import parse_concept_query

    if vectors is None:
        vectors = synonym_vectors()
    # a real word the model lacks ("horse" when it learnt "shore") is not a misspelling
    return parse_concept_query(query, model.concepts, vectors, is_word=load_builtin().is_word)


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
#: how the built-in concepts read a word that names one of them (not a guess)
LITERAL = ("exact", "plural", "multi-word")


def weak_concepts(model: Any, concepts: Sequence[int] | None = None) -> list[str]:
    """Names of the model's concepts (or of ``concepts``) learnt from too few images."""
    counts = model.vocabulary.concept_counts
    ids = range(len(model.concepts)) if concepts is None else concepts
    return [model.concepts[c] for c in ids if int(counts[c]) < MIN_TRAINING_IMAGES]


def scene_search(col: Collection, query: str | Sequence[str], *, k: int = 20, model_name: str | None = None,
                 vectors: Any | None = None, min_score: float = 0.0, model: Any | None = None,
                 filters: Any | None = None) -> SceneResult:
    """Images that show every concept of ``query``, best first (SSIR, eqs. 7-13).

    model: an already loaded concept model (else ``model_name`` is loaded). With no trained
    model, or ``model_name="builtin"``, the built-in concepts answer (cbir.words: no training
    needed). With a trained model and no model named, the two form one vocabulary: a word
    the trained model knows (and learnt from enough images) is scored by it, any other word
    by the built-in concepts, and the image's score is the geometric mean of its per-word
    probabilities (:func:`_merged_search`). filters (:class:`~cbir.store.photometa.Filters`):
    only images that pass are ranked.
    """
    from cbir.words import BUILTIN_MODEL, word_search

    if k < 1:
        raise InvalidRequest(f"k must be >= 1, got {k}")
    allowed = None
    if filters is not None and filters.active:
        from cbir.store.photometa import matching_ids

        allowed = matching_ids(col.catalog, filters)
    if model is None and (model_name == BUILTIN_MODEL or (
            model_name is None and not _model_names(col))):
        return word_search(col, query, k=k, min_score=min_score, allowed=allowed)
    named = model_name is not None or model is not None
    model = model if model is not None else load_concept_model(col, model_name)
    try:
        parsed = parse_query(model, query, vectors)
    except InvalidRequest:
        if named:
            raise
        return _merged_search(col, model, query, k=k, min_score=min_score, vectors=vectors,
                              allowed=allowed)
    q = model.query(parsed.concepts)
    inexact = any(t["how"] != "exact" for t in parsed.terms)
    if (weak_concepts(model, q) or inexact) and not named:
        # a concept learnt from a handful of images, or a word the model only reads as a
        # synonym: the built-in concepts may know the word itself (one vocabulary, part 2)
        return _merged_search(col, model, query, k=k, min_score=min_score, vectors=vectors,
                              allowed=allowed)
    return _ssir_search(col, model, q, k=k, min_score=min_score, notes=parsed.notes, terms=parsed.terms,
                        allowed=allowed)


#: posteriors of a whole collection kept per (catalog, generation, model) for repeated
#: queries in one process (the service), with arrays derived from them (:func:`_derived`)
_POSTERIORS: dict[str, tuple[tuple[Any, ...], Any, dict[str, Any]]] = {}
_POST_MAGIC = b"CBIRPOST"
_POST_FORMAT = 1
_POST_FIELDS = ("visual_single", "visual_multi", "text_single", "text_multi", "tag_concepts")


def _tags_hash(tags: Sequence[str]) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b("\x1f".join(tags).encode(), digest_size=8).digest(), "little")


def _model_stamp(col: Collection, model: Any) -> str:
    """What the stored posteriors were computed by: the model's record (sha256) and name."""
    import hashlib

    from cbir.train.registry import check_name

    try:
        data = (concepts_dir(col) / f"{check_name(model.name)}.json").read_bytes()
    except (OSError, InvalidRequest):
        return ""
    return hashlib.sha256(data).hexdigest()


def _read_post_store(path: Path, stamp: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(ids, tag hashes, {field: (n, width) column-major memmap view}) or None if absent/stale."""
    import json

    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != _POST_MAGIC:
                return None
            hlen = int.from_bytes(head[8:16], "little")
            meta = json.loads(f.read(hlen))
        if meta.get("format") != _POST_FORMAT or meta.get("model") != stamp or not stamp:
            return None
        arrays = {}
        for name, a in meta["arrays"].items():
            mm = np.memmap(path, dtype=a["dtype"], mode="r", offset=a["offset"], shape=tuple(a["shape"]))
            arrays[name] = mm
    except (OSError, ValueError, KeyError, TypeError):
        return None  # damaged or foreign: recomputed and rewritten
    out = {k: (arrays[k].T if k in arrays else None) for k in _POST_FIELDS}  # stored (width, n)
    out["has_text"] = arrays.get("has_text")
    return arrays["ids"], arrays["tags"], out


def _write_post_store(path: Path, stamp: str, ids: np.ndarray, tags: np.ndarray, post: Any) -> None:
    import json

    from cbir.atomic import atomic_open

    arrays: dict[str, np.ndarray] = {"ids": np.asarray(ids, dtype="<i8"),
                                     "tags": np.asarray(tags, dtype="<u8")}
    for k in _POST_FIELDS:
        v = getattr(post, k)
        if v is not None:  # column-major: a query reads a few concept rows, not every image's row
            arrays[k] = np.ascontiguousarray(np.asarray(v).T.astype(bool if k == "tag_concepts" else "<f4"))
    if post.text_single is not None:
        arrays["has_text"] = np.asarray(post.has_text, dtype=bool)
    meta: dict[str, Any] = {"format": _POST_FORMAT, "model": stamp, "arrays": {}}
    off = 0
    for k, a in arrays.items():
        meta["arrays"][k] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": 0}
    head = json.dumps(meta).encode()
    base = ((16 + len(head) + 4096 + 63) // 64) * 64  # room for the offsets written below
    off = base
    for k, a in arrays.items():
        meta["arrays"][k]["offset"] = off
        off = ((off + a.nbytes + 63) // 64) * 64
    head = json.dumps(meta).encode()
    with atomic_open(path, "wb") as f:
        f.write(_POST_MAGIC + len(head).to_bytes(8, "little") + head)
        for k, a in arrays.items():
            f.seek(meta["arrays"][k]["offset"])
            f.write(a.tobytes())
        f.truncate(off)


def collection_posteriors(col: Collection, model: Any) -> tuple[list[Any], Any]:
    """(records, :class:`~cbir.concepts.scene_model.ScenePosteriors`) of every indexed image.

    Stored per model next to it (``concepts/<name>.posteriors``, column-major float32,
    memory-mapped) and kept in memory for the next query in the same process; only images
    added or re-tagged since are computed (from the stored features), so a query does not
    run the classifiers over the whole collection again (issue 11, part 4).
    """
    from cbir.concepts.scene_model import ScenePosteriors

    try:
        st = os.stat(col.catalog.path)
        where = f"{col.catalog.path}:{st.st_dev}:{st.st_ino}"
    except OSError:
        where = str(col.catalog.path)
    stamp_mem = (int(col.catalog.generation()), id(model), model.name)
    hit = _POSTERIORS.get(where)
    if hit is not None and hit[0] == stamp_mem:
        return hit[1]
    recs = list(col.catalog.iter_records("ok"))
    if not recs:
        raise InvalidRequest("the collection has no indexed image; run `cbir index FOLDER` first")
    text = model.text is not None
    ids = np.array([r.id for r in recs], dtype=np.int64)
    thash = np.array([_tags_hash(r.tags) if text else 0 for r in recs], dtype=np.uint64)
    stamp = _model_stamp(col, model)
    path = concepts_dir(col) / f"{model.name}.posteriors"
    stored = _read_post_store(path, stamp) if stamp else None
    have = np.full(len(recs), -1, dtype=np.int64)
    if stored is not None:
        s_ids, s_tags, _ = stored
        pos = {int(i): n for n, i in enumerate(s_ids)}
        have = np.array([pos.get(int(i), -1) for i in ids], dtype=np.int64)
        ok = have >= 0
        have[ok & (np.asarray(s_tags)[np.maximum(have, 0)] != thash)] = -1  # re-tagged: recompute
    todo = np.flatnonzero(have < 0)
    new_post = None
    if todo.size:
        got, feats = col.catalog.features(ids[todo])
        fpos = {int(i): n for n, i in enumerate(got)}
        todo = np.array([t for t in todo if int(ids[t]) in fpos], dtype=np.int64)  # damaged rows skipped
        feats = np.asarray(feats[[fpos[int(ids[t])] for t in todo]], dtype=np.float32) if todo.size else None
        if todo.size:
            text_vec = model_vectors(col, model)
            parts = []
            for lo in range(0, len(todo), CHUNK):
                part = todo[lo: lo + CHUNK]
                tags = [recs[t].tags for t in part] if text else None
                parts.append(model.posteriors(feats[lo: lo + CHUNK], tags, text_vec))

            def cat(name: str) -> Any:
                first = getattr(parts[0], name)
                return None if first is None else np.concatenate([getattr(x, name) for x in parts])

            new_post = ScenePosteriors(cat("visual_single"), cat("visual_multi"), cat("text_single"),
                                       cat("text_multi"), cat("has_text"), cat("tag_concepts"))
    keep = np.flatnonzero((have >= 0) | np.isin(np.arange(len(recs)), todo))
    if todo.size == 0 and stored is not None and len(keep) == len(stored[0]) \
            and np.array_equal(np.asarray(stored[0]), ids[keep]):
        arr = stored[2]  # the store is current: the memory map as it is
        post = ScenePosteriors(arr["visual_single"], arr["visual_multi"], arr["text_single"],
                               arr["text_multi"], np.asarray(arr["has_text"]) if text else np.zeros(0, bool),
                               arr["tag_concepts"], clean=True)
    else:
        is_new = np.isin(keep, todo)
        j_new = np.searchsorted(todo, keep[is_new])  # todo is sorted: its row in new_post

        def merged(name: str) -> Any:
            new = None if new_post is None else getattr(new_post, name)
            old = None if stored is None else stored[2][name]
            ref = new if new is not None else old
            if ref is None:
                return None
            out = np.empty((len(keep),) + ref.shape[1:], dtype=np.asarray(ref[:0]).dtype)
            if is_new.any():
                out[is_new] = new[j_new]
            if (~is_new).any():
                out[~is_new] = np.asarray(old)[have[keep[~is_new]]]
            return out

        post = ScenePosteriors(merged("visual_single"), merged("visual_multi"), merged("text_single"),
                               merged("text_multi"),
                               merged("has_text") if text else np.zeros(0, bool), merged("tag_concepts"))
        if stamp and not col.readonly:
            with contextlib.suppress(OSError):  # a store not written costs speed, not results
                _write_post_store(path, stamp, ids[keep], thash[keep], post)
    recs = [recs[i] for i in keep]
    _POSTERIORS[where] = (stamp_mem, (recs, post), {"ids": ids[keep]})
    return recs, post


def _derived(recs: Sequence[Any]) -> dict[str, Any] | None:
    """The cache entry of arrays derived from ``recs`` when it came from
    :func:`collection_posteriors` (dropped with it), else None."""
    for _, (r, _post), derived in list(_POSTERIORS.values()):
        if r is recs:
            return derived
    return None


def _record_ids(recs: Sequence[Any]) -> np.ndarray:
    """``(n,)`` int64 ids of ``recs`` (kept with the cached posteriors: no loop per query)."""
    derived = _derived(recs)
    if derived is not None and "ids" in derived:
        return derived["ids"]
    return np.fromiter((r.id for r in recs), dtype=np.int64, count=len(recs))


def _rows_in(recs: Sequence[Any], ids: np.ndarray) -> np.ndarray:
    """``(n,)`` int64: each record's row in ``ids`` (the class-probability matrix's ids), -1 where
    it has none; vectorised, and kept with the cached posteriors for the same ``ids``."""
    derived = _derived(recs)
    hit = None if derived is None else derived.get("rows")
    if hit is not None and hit[0] is ids:
        return hit[1]
    rec_ids = _record_ids(recs)
    ids = np.asarray(ids)
    rows = np.full(len(rec_ids), -1, dtype=np.int64)
    if len(ids):
        order = np.argsort(ids, kind="stable")
        at = np.minimum(np.searchsorted(ids, rec_ids, side="right", sorter=order) - 1, len(ids) - 1)
        at = np.maximum(at, 0)
        found = ids[order[at]] == rec_ids
        rows[found] = order[at[found]]  # a repeated id: its last row, as a dict of them kept
    if derived is not None:
        derived["rows"] = (ids, rows)
    return rows


_BLAS: list[Any] = []


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Score with one BLAS thread: a query's products are thin (n images x K_rc concept sets)
    and memory-bound, and on a busy machine several BLAS threads wait on each other for
    milliseconds per call (8 ms instead of 0.1 ms for 100k images on 2 shared cores). Same
    results (a row's sum does not depend on the threads). A controller made once: a limit
    then costs microseconds, not a scan of the loaded libraries."""
    try:
        if not _BLAS:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        limit = _BLAS[0].limit(limits=1, user_api="blas")
    except Exception:  # noqa: BLE001 — only speed depends on it
        yield
        return
    with limit:
        yield


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(-scores, kind="stable")[:k]`` without sorting every image: the k best
    (ties in index order, NaN last), by a partition then a sort of the candidates only."""
    scores = np.asarray(scores)
    n = len(scores)
    neg = -scores
    if k >= n or n <= 4 * k or np.isnan(neg).any():
        return np.argsort(neg, kind="stable")[:k]
    kth = np.partition(neg, k - 1)[k - 1]
    cand = np.flatnonzero(neg <= kth)  # every tie of the k-th too, in index order
    return cand[np.argsort(neg[cand], kind="stable")][:k]


def _allowed_mask(recs: Sequence[Any], allowed: np.ndarray | None) -> np.ndarray | None:
    if allowed is None:
        return None
    return np.isin(_record_ids(recs), allowed)


def _ssir_search(col: Collection, model: Any, q: tuple[int, ...], *, k: int, min_score: float,
                 notes: list[str], terms: list[dict[str, Any]],
                 allowed: np.ndarray | None = None) -> SceneResult:
    from cbir.concepts.relevance import COMPONENTS
    from cbir.concepts.scene_model import scene_components

    recs, post = collection_posteriors(col, model)
    with _one_blas_thread():
        comps = scene_components(model.scorer, q, post)
        scores = model.fuse(comps, post, q)
    mask = _allowed_mask(recs, allowed)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    order = _top_k(scores, k)
    order = order[scores[order] >= min_score]
    hits = []
    for n, i in enumerate(order):
        has_t = post.text_single is not None and bool(post.has_text[i])
        ev = {model.concepts[c]: {"visual": round(float(post.visual_single[i, c]), 6),
                                  "text": round(float(post.text_single[i, c]), 6) if has_t else None}
              for c in q}
        hits.append(SceneHit(rank=n + 1, id=int(recs[i].id), path=recs[i].path,
                             score=round(float(scores[i]), 8),
                             evidence=ev, components={c: round(float(v), 8) for c, v in
                                                      zip(COMPONENTS, comps[i], strict=True)},
                             tags=list(recs[i].tags)))
    return SceneResult(query=[model.concepts[c] for c in q], notes=notes, model=model.name,
                       hits=hits, terms=terms)


def _merged_search(col: Collection, model: Any, query: str | Sequence[str], *, k: int, min_score: float,
                   vectors: Any | None, allowed: np.ndarray | None = None) -> SceneResult:
    """One vocabulary of the trained and the built-in concepts (issue 11, part 2).

    Each word goes to the trained model when it knows it by name and learnt it from at least
    MIN_TRAINING_IMAGES images; else to the built-in concepts when the word is one of theirs
    (a lemma, a plural, a multi-word name: "horse" is never a misspelling of a trained
    "shore"); else to the trained model's synonym or spelling match; else to the built-in
    concepts' own guess (meaning neighbours, spelling). A weak trained concept is still used,
    with a note, when nothing else knows the word. A trained word's probability is the model's
    fused single-concept estimate P(c | the image's pixels and tags); a built-in word's is the
    image's probability mass on the concept's ImageNet classes. Images are ranked by the
    geometric mean over the words: every word must be shown.
    """
    from cbir.concepts.builtin import load_builtin
    from cbir.words import BUILTIN_MODEL, class_prob_matrix, evidence, rank, resolve_words, word_search

    ids, matrix = class_prob_matrix(col.catalog)
    if matrix.nnz == 0:  # no ImageNet class probabilities (another extractor): the model alone
        parsed = parse_query(model, query, vectors)  # raises its own clear error for unknown words
        return _ssir_search(col, model, model.query(parsed.concepts), k=k, min_score=min_score,
                            notes=parsed.notes, terms=parsed.terms, allowed=allowed)
    bc = load_builtin()
    words = bc.parse_query(query) if isinstance(query, str) else [w for x in query for w in bc.parse_query(x)]
    if not words:
        raise InvalidRequest("give at least one word to search for, e.g. \"dog\" or \"dog beach\"")
    plan: list[tuple[str, Any]] = []  # ("trained", (concept index, term)) | ("builtin", word)
    notes: list[str] = []
    for w in words:
        try:
            t = parse_query(model, [w], vectors)
        except InvalidRequest:
            t = None
        c = model.query(t.concepts)[0] if t is not None else None
        weak = c is not None and bool(weak_concepts(model, [c]))
        if t is not None and t.terms[0]["how"] == "exact" and not weak:
            plan.append(("trained", (c, t.terms[0])))
            continue
        try:
            (r,), _ = resolve_words([w])
        except InvalidRequest as be:
            if t is None:
                raise InvalidRequest(f"neither model {model.name!r} nor the built-in concepts know "
                                     f"{w!r}: {be}") from None
            r = None
        # when both only guess (a synonym or spelling of the library's own concept vs a
        # built-in neighbour), the library's own concept
        if r is not None and (t is None or weak or r.how in LITERAL):
            plan.append(("builtin", w))
            if weak:
                notes.append(f"model {model.name!r} learnt {model.concepts[c]!r} from fewer than "
                             f"{MIN_TRAINING_IMAGES} images; {w!r} read by the built-in concepts "
                             "(--model NAME to use the model anyway)")
            elif t is None:
                notes.append(f"model {model.name!r} does not know {w!r}; read by the built-in concepts")
            continue
        plan.append(("trained", (c, t.terms[0])))
        notes.extend(t.notes)
        if weak:
            notes.append(f"model {model.name!r} learnt {model.concepts[c]!r} from fewer than "
                         f"{MIN_TRAINING_IMAGES} images and the built-in concepts do not know {w!r}")
    trained = [x for kind, x in plan if kind == "trained"]
    builtin_words = [x for kind, x in plan if kind == "builtin"]
    if not trained:
        return word_search(col, builtin_words, k=k, min_score=min_score, notes=notes, allowed=allowed)
    if not builtin_words:
        q = tuple(dict.fromkeys(c for c, _ in trained))
        return _ssir_search(col, model, q, k=k, min_score=min_score, notes=notes,
                            terms=[term for _, term in trained], allowed=allowed)
    recs, post = collection_posteriors(col, model)
    resolved, found = resolve_words(builtin_words)
    notes.extend(found)
    ev_b = evidence(matrix, resolved)
    rows = _rows_in(recs, ids)
    ev_builtin = np.where(rows[:, None] >= 0, ev_b[np.maximum(rows, 0)], 0.0)
    q_trained = list(dict.fromkeys(c for c, _ in trained))
    with _one_blas_thread():
        ev_trained = np.column_stack([model.score((c,), post) for c in q_trained])
    ev = np.column_stack([ev_trained, ev_builtin]).astype(np.float32)
    scores = rank(ev)
    mask = _allowed_mask(recs, allowed)
    if mask is not None:
        scores = np.where(mask, scores, 0.0)  # 0 is never a hit (scores must be > min_score >= 0)
    order = _top_k(scores, k)
    order = order[scores[order] > max(min_score, 0.0)]
    labels_b = [bc.label(r.concept_id) if len(r.concept_ids) == 1 else r.name for r in resolved]
    hits = []
    for i in order:
        has_t = post.text_single is not None and bool(post.has_text[i])
        e: dict[str, dict[str, float | None]] = {}
        for j, c in enumerate(q_trained):
            e[model.concepts[c]] = {"visual": round(float(post.visual_single[i, c]), 6),
                                    "text": round(float(post.text_single[i, c]), 6) if has_t else None,
                                    "probability": round(float(ev[i, j]), 6)}
        for j, lab in enumerate(labels_b):
            e[lab] = {"visual": round(float(ev[i, len(q_trained) + j]), 6), "text": None}
        hits.append(SceneHit(rank=len(hits) + 1, id=int(recs[i].id), path=recs[i].path,
                             score=round(float(scores[i]), 8), evidence=e, tags=list(recs[i].tags)))
    terms = [term for _, term in trained] + [{"word": r.word, "concept": lab, "how": r.how}
                                             for r, lab in zip(resolved, labels_b, strict=True)]
    return SceneResult(query=[model.concepts[c] for c in q_trained] + labels_b, notes=notes,
                       model=f"{model.name}+{BUILTIN_MODEL}", hits=hits, terms=terms)


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
