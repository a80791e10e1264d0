"""Put a trained model to work on a collection: label, partition, re-rank.

* ``label_collection``: each image's most probable classes under the model.
* Class-partitioned index driven by the model instead of ImageNet top-1:
  ``model_classes`` / ``partition_kwargs`` give each image's predicted class, ``query_probs``
  the query's class probabilities, ``partitioned_index_from_model`` builds the whole index.
  ``use_model`` records the collection's choice (catalog meta ``partition_model``). Importing
  this module installs ``PARTITION_PROVIDER`` into :mod:`cbir.collection` (which sits below the
  training code and cannot import it): ``Collection._add_kwargs`` then calls
  ``partition_kwargs(col, load_used_model(col), ids)`` when a model is in use, and ``search``
  passes ``query_probs(model, query)`` to a class-partitioned index.
* Re-ranking: the top ``depth`` candidates by cosine are re-scored as
  ``score = cosine + beta * p_model(class_q | hit)``, where ``class_q`` is the query's most
  probable class under the model and ``p_model(. | hit)`` the hit's predicted probabilities.
  ``beta = 0`` keeps the cosine order; ``beta`` of 0.5 to 1 lets the class agreement
  outweigh small cosine differences (the cosines of near neighbours differ by < 0.2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import PARTITION_MODEL_KEY, Collection, PartitionProvider, set_partition_provider
from cbir.errors import CollectionError, IndexMismatch, InvalidRequest
from cbir.extract.base import is_finetuned_name
from cbir.search import Hit, Query, distance_from_cosine
from cbir.train.model import ClassifierModel
from cbir.train.registry import ModelRegistry, check_name

_CHUNK = 20_000


def check_model(col: Collection, model: ClassifierModel) -> None:
    """Refuse a model trained on another extractor's features than the collection's.

    A fine-tuned model also needs the collection indexed with its backbone as it is now (the
    manifest records the backbone's sha256): a model retrained under the same name is refused.
    """
    model.check_features(col.manifest.extractor, col.manifest.dim)
    if is_finetuned_name(model.extractor):
        # the fine-tuned model itself, or a head trained on a fine-tuned model's features
        record = model.meta.get("backbone") if model.finetuned else model.meta.get("features_backbone")
        want = (record or {}).get("onnx_sha256")
        have = (col.manifest.preprocessing.get("backbone") or {}).get("onnx_sha256")
        if want != have:
            owner = model.extractor.split(":", 1)[1]
            raise IndexMismatch(
                f"this collection was indexed with another backbone of model {owner!r} than model "
                f"{model.name!r} was trained on ({owner!r} was trained again since); index the images "
                f"into a new collection with --extractor {model.extractor}"
                + ("" if model.finetuned else f" and train {model.name!r} again"))


def model_classes(col: Collection, model: ClassifierModel, ids: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int64 (n,), classes int64 (n,), probs float32 (n, C)) for the 'ok' images (all or ``ids``)."""
    check_model(col, model)
    want = col.catalog.ok_ids() if ids is None else np.asarray(ids, dtype=np.int64)
    out_ids, out_probs = [], []
    for start in range(0, len(want), _CHUNK):
        got, feats = col.catalog.features(want[start:start + _CHUNK])
        out_ids.append(got)
        out_probs.append(model.predict(feats) if len(got) else
                         np.zeros((0, len(model.classes)), dtype=np.float32))
    all_ids = np.concatenate(out_ids) if out_ids else np.zeros(0, dtype=np.int64)
    probs = np.concatenate(out_probs) if out_probs else np.zeros((0, len(model.classes)), np.float32)
    return all_ids, probs.argmax(axis=1).astype(np.int64), probs


def partition_kwargs(col: Collection, model: ClassifierModel, ids: np.ndarray) -> dict[str, Any]:
    """``{"classes": (n,) int64}`` for ``index.add(ids, ...)``: the drop-in for Collection._add_kwargs."""
    got, classes, _ = model_classes(col, model, ids)
    pos = {int(i): c for i, c in zip(got, classes, strict=True)}
    return {"classes": np.array([pos.get(int(i), -1) for i in ids], dtype=np.int64)}


def query_probs(model: ClassifierModel, query: Query) -> np.ndarray:
    """(1, C) class probabilities of the query vector under the model (for ``query_probs=``)."""
    return model.predict(query.vector[None, :])


def partitioned_index_from_model(col: Collection, model: ClassifierModel, n_partitions: int = 1) -> Any:
    """A class-partitioned index of the collection, one table per class the model predicts."""
    from cbir.index import create_index

    idx = create_index("class-partitioned", col.manifest.dim, n_partitions=n_partitions)
    want = col.catalog.ok_ids()
    for start in range(0, len(want), _CHUNK):
        ids, feats = col.catalog.features(want[start:start + _CHUNK])
        if len(ids):
            idx.add(ids, feats, classes=model.predict(feats).argmax(axis=1).astype(np.int64))
    return idx


# -- labelling -------------------------------------------------------------------------------
def label_collection(col: Collection, model: ClassifierModel, *, top: int = 3) -> list[dict[str, Any]]:
    """Per image: path, the most probable class and its probability, and the ``top`` classes."""
    if top < 1:
        raise InvalidRequest(f"top must be >= 1; got {top}")
    ids, classes, probs = model_classes(col, model)
    recs = col.catalog.records(ids)
    names = model.classes
    top = min(top, len(names))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    rows = []
    for i, c, p, o in zip(ids, classes, probs, order, strict=True):
        rec = recs.get(int(i))
        if rec is None:
            continue
        rows.append({"id": int(i), "path": rec.path, "label": names[int(c)],
                     "prob": round(float(p[c]), 6),
                     "top": [{"label": names[int(j)], "prob": round(float(p[j]), 6)} for j in o]})
    return rows


# -- re-ranking ------------------------------------------------------------------------------
def rerank_scores(cosines: np.ndarray, q_probs: np.ndarray, hit_probs: np.ndarray,
                  beta: float) -> np.ndarray:
    """``cosine + beta * hit_probs[:, argmax(q_probs)]``: (n,) cosines, (C,) query, (n, C) hits."""
    if beta < 0:
        raise InvalidRequest(f"beta must be >= 0; got {beta}")
    cq = int(np.argmax(q_probs))
    return np.asarray(cosines, dtype=np.float32) + np.float32(beta) * hit_probs[:, cq]


@dataclass
class RankedHit:
    """A hit re-ranked by a model: the plain hit, its re-ranking score and predicted class."""

    hit: Hit
    score: float
    label: str
    prob: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.hit.as_dict(), "score": self.score, "model_label": self.label,
                "model_prob": self.prob}


def search_with_model(col: Collection, model: ClassifierModel, query: Query, *, k: int = 10,
                      beta: float = 0.5, depth: int = 100, partitioned: bool = False,
                      n_partitions: int = 1, min_similarity: float = 0.0,
                      index: Any = None) -> list[RankedHit]:
    """Top-k hits re-ranked by the model (see the module docstring).

    Candidates: the ``max(depth, k)`` nearest by cosine from the collection's index, or with
    ``partitioned`` from a class-partitioned index built from the model's predicted classes
    (scanning the query's ``n_partitions`` most probable classes). ``index``: with
    ``partitioned``, that class-partitioned index of the model's classes instead of a new one
    (the collection's own while the model is in use, :func:`use_model`; the service's snapshot).
    """
    check_model(col, model)
    if k < 1 or depth < 1:
        raise InvalidRequest(f"k and depth must be >= 1; got {k} and {depth}")
    qp = query_probs(model, query)
    want = max(depth, k) + len(query.exclude)
    q = query.vector[None, :].astype(np.float32)
    if partitioned:
        idx = index if index is not None else partitioned_index_from_model(col, model, n_partitions)
        if len(idx) == 0:
            return []
        scores, ids = idx.search(q, min(want, len(idx)), query_probs=qp, n_partitions=n_partitions)
    else:
        idx = col.index()
        if len(idx) == 0:
            return []
        scores, ids = idx.search(q, min(want, len(idx)))  # never more than it holds
    pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True)
             if i >= 0 and int(i) not in query.exclude]
    recs = col.catalog.records([i for _, i in pairs])
    pairs = [(s, i) for s, i in pairs if i in recs and recs[i].status == "ok"]
    if not pairs:
        return []
    got, feats = col.catalog.features([i for _, i in pairs])
    hp = dict(zip(got.tolist(), model.predict(feats), strict=True))
    pairs = [(s, i) for s, i in pairs if i in hp]
    cos = np.clip(np.array([s for s, _ in pairs], dtype=np.float32), -1.0, 1.0)
    probs = np.stack([hp[i] for _, i in pairs])
    final = rerank_scores(cos, qp[0], probs, beta)
    out: list[RankedHit] = []
    for j in np.argsort(-final, kind="stable"):
        c, i = float(cos[j]), pairs[j][1]
        d = distance_from_cosine(c)
        sim = 1.0 / (1.0 + d)
        if sim < min_similarity:
            continue
        rec = recs[i]
        top = int(np.argmax(probs[j]))
        hit = Hit(rank=len(out) + 1, id=i, path=rec.path, distance=round(d, 6),
                  similarity=round(sim, 6), cosine=round(c, 6), labels=rec.labels, tags=rec.tags)
        out.append(RankedHit(hit, round(float(final[j]), 6), model.classes[top],
                             round(float(probs[j, top]), 6)))
        if len(out) == k:
            break
    return out


# -- the collection's partitioning model -------------------------------------------------------
def use_model(col: Collection, registry: ModelRegistry, name: str) -> None:
    """Make ``name`` the model whose classes partition the collection (caller holds the writer lock).

    The index cache is dropped, so the next ``col.index()`` rebuilds it with the new classes;
    the catalog generation moves on in the same transaction as the setting, so every process
    holding an index of the old classes (a running ``cbir serve``) sees it out of date.
    """
    model = registry.load(name)
    check_model(col, model)
    value = json.dumps({"name": name, "models_dir": str(registry.directory.resolve())})
    with col.catalog.transaction():
        col.catalog.set_meta(PARTITION_MODEL_KEY, value)
        col.catalog.bump_generation()
    col.drop_index()


def used_model(col: Collection) -> tuple[str, Path] | None:
    """(name, models directory) of the collection's partitioning model, or None (ImageNet top-1)."""
    raw = col.catalog.get_meta(PARTITION_MODEL_KEY)
    if not raw:
        return None
    try:
        d = json.loads(raw)
        return check_name(d["name"]), Path(d["models_dir"])
    except (ValueError, KeyError, TypeError, InvalidRequest):
        raise CollectionError(f"the collection's {PARTITION_MODEL_KEY} setting is damaged; "
                              "run `cbir models use --none`") from None


def load_used_model(col: Collection) -> ClassifierModel | None:
    """The collection's partitioning model, loaded and checked, or None if none is in use."""
    used = used_model(col)
    if used is None:
        return None
    name, directory = used
    model = ModelRegistry(directory).load(name)
    check_model(col, model)
    return model


def stop_using(col: Collection) -> bool:
    """Go back to ImageNet top-1 partitioning; returns whether a model was in use (the
    generation moves on with the setting, as in :func:`use_model`)."""
    if col.catalog.get_meta(PARTITION_MODEL_KEY) in (None, ""):
        return False
    with col.catalog.transaction():
        col.catalog.set_meta(PARTITION_MODEL_KEY, "")
        col.catalog.bump_generation()
    col.drop_index()
    return True


def delete_model(registry: ModelRegistry, name: str, col: Collection | None = None) -> dict[str, Any]:
    """Delete a model and what depends on it: the collection's use of it (and its index cache)."""
    check_name(name)
    if not registry.exists(name) and not registry.weights_path(name).exists():
        raise InvalidRequest(f"no model named {name!r} in {registry.directory} "
                             f"(trained: {', '.join(registry.names()) or 'none yet'})")
    unused = False
    if col is not None:
        used = used_model(col)
        if used and used[0] == name and used[1] == registry.directory.resolve():
            unused = stop_using(col)
    registry.delete(name)
    return {"deleted": name, "collection_stopped_using_it": unused}


# Importing this module makes trained models partition collections (cbir.collection cannot
# import the training code; the CLI, cbir.open and the service import this module instead).
PARTITION_PROVIDER = PartitionProvider(load_model=load_used_model, partition_kwargs=partition_kwargs)
set_partition_provider(PARTITION_PROVIDER)
