"""``cbir eval words``: a folder-per-class dataset searched by its class names, no training.

Each class folder's name is typed as the user would ("elephants", "sea_lions" -> "sea lions")
and the whole dataset is ranked by the built-in concepts (cbir.words); relevant = the images
of that folder. Reports P@K and AP per class and their means. A class whose name cannot be
read as a concept counts as AP 0 (it is listed with the reason): the mean is over every
class. The baseline beside it is float-feature nearest-class-mean retrieval, which needs
one labelled example per class and so is an upper reference, not a competitor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.errors import InvalidRequest
from cbir.eval.folder import eval_collection_dir
from cbir.eval.metrics import average_precision, precision_at_k
from cbir.eval.protocols import format_table
from cbir.extract import DEFAULT_EXTRACTOR
from cbir.indexing import index_paths
from cbir.io.datasets import read_class_folders


def class_query(folder_name: str) -> str:
    """What a user would type for a class folder: separators as spaces."""
    return folder_name.replace("_", " ").replace("-", " ").strip()


def evaluate_words(dataset: Path, *, extractor: str = DEFAULT_EXTRACTOR, collection_dir: Path | None = None,
                   ks: Sequence[int] = (10, 20), queries: dict[str, str] | None = None,
                   progress: bool = True, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Index ``dataset`` (cached) and query each class by its name; see the module docstring."""
    from cbir.words import class_prob_matrix, evidence, rank, resolve_words

    paths, labels, classes = read_class_folders(dataset)
    cdir = collection_dir or eval_collection_dir(dataset, extractor)
    with Collection.create_or_open(cdir, extractor) as col:
        with col.writer_lock(wait=True):
            index_paths(col, [dataset], progress=progress)
        ids, matrix = class_prob_matrix(col.catalog)
        path_of = {int(r.id): os.path.abspath(r.path) for r in col.catalog.iter_records("ok")}
        _, feats = col.catalog.features(ids)
    if matrix.nnz == 0:
        raise InvalidRequest(f"extractor {extractor!r} gives no ImageNet class probabilities; "
                             "eval words needs efficientnet-lite0")
    label_of = {os.path.abspath(p): int(y) for p, y in zip(paths, labels, strict=True)}
    keep = np.array([path_of.get(int(i)) in label_of for i in ids])
    ids, matrix, feats = ids[keep], matrix[keep], feats[keep]
    y = np.array([label_of[path_of[int(i)]] for i in ids], dtype=np.int64)
    rows: list[dict[str, Any]] = []
    for c, name in enumerate(classes):
        q = (queries or {}).get(name, class_query(name))
        row: dict[str, Any] = {"class": name, "query": q, "images": int((y == c).sum())}
        # the reference: rank by cosine to the class's mean feature (uses the labels)
        centroid = feats[y == c].mean(0)
        ref = _metrics(feats @ centroid, y == c, ks)
        row["centroid_ap"] = ref["ap"]
        try:
            resolved, notes = resolve_words(q)
        except InvalidRequest as e:
            row.update({"concepts": None, "note": str(e), "ap": 0.0, **{f"p@{k}": 0.0 for k in ks}})
            if warn:
                warn(f"warning: class {name!r}: {e}")
            rows.append(row)
            continue
        scores = rank(evidence(matrix, resolved))
        row.update({"concepts": [r.name for r in resolved], "note": "; ".join(notes),
                    **_metrics(scores, y == c, ks)})
        rows.append(row)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ("ap", "centroid_ap",
                                                                      *(f"p@{k}" for k in ks))}
    columns = ["class", "query", "read as", *(f"P@{k}" for k in ks), "AP", "centroid AP"]
    table_rows = [{"class": r["class"], "query": r["query"],
                   "read as": ", ".join(r["concepts"]) if r["concepts"] else "(unknown)",
                   **{f"P@{k}": r[f"p@{k}"] for k in ks}, "AP": r["ap"], "centroid AP": r["centroid_ap"]}
                  for r in rows]
    table_rows.append({"class": "mean", **{f"P@{k}": mean[f"p@{k}"] for k in ks}, "AP": mean["ap"],
                       "centroid AP": mean["centroid_ap"]})
    return {"dataset": str(dataset), "extractor": extractor, "images": int(len(ids)), "classes": rows,
            "mean": mean, "table": format_table(table_rows, columns, floatfmt=".3f")}


def _metrics(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """P@K and AP over the whole ranking of one query.

    Ties (many images have exactly 0 mass on a concept's classes) are broken by a seeded
    random order, not by position: a dataset sorted by class would otherwise favour the
    first classes."""
    s = np.asarray(scores, dtype=np.float64)
    tiebreak = np.random.default_rng(0).permutation(len(s))
    order = np.lexsort((tiebreak, -s))
    rel = np.asarray(relevant)[order][None, :]
    out = {f"p@{k}": float(precision_at_k(rel, k)[0]) for k in ks}
    out["ap"] = float(average_precision(rel, n_relevant=int(relevant.sum()))[0])
    return out
