"""``cbir eval hashing``: the papers' hashing tables on a benchmark dataset.

For each method and code length: fit on the protocol's training split (stored CNN
features, the weak supervision of the dataset, region features for IDEA), encode the
queries and the database, and rank by Hamming distance. The float features ranked by
cosine give the no-hashing ceiling. What a method learns from is kept apart from what it
is judged on: on Corel-5K the keywords are the weak supervision and the category the
relevance; on CIFAR-10, Wang and any folder-per-class dataset (``"folder"``, held out like
Wang; no tags) the backbone's own ImageNet top-5 labels are the weak supervision ("machine
tags") and the class the relevance. Only the supervised fine-tuned variants (ws-dsh,
ws-hashnet) see class labels, and only on the training split. ``"auto"`` decides as
``cbir hash train --method auto`` does, without labels (see :func:`run`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.errors import InvalidRequest
from cbir.eval.folder import eval_collection_dir
from cbir.indexing import index_paths

#: methods that learn from tags / need region features / need class labels
TAG_METHODS = {"wdht", "ws-dsh", "ws-hashnet", "idea", "idea-l", "idea-a"}
REGION_METHODS = {"idea", "idea-l", "idea-a"}
LABEL_METHODS = {"ws-dsh", "ws-hashnet"}
DEFAULT_METHODS = ("lsh", "pcah", "itq", "sh", "wdht", "idea", "idea-l", "idea-a")
DEFAULT_BITS = (12, 16, 24, 32, 48, 64)
EXTRACTOR = "efficientnet-lite0"
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _index_roots(name: str, root: Path) -> list[Path]:
    return [root / "db"] if name == "corel5k" else [root]


class StoredFeatures:
    """Features, labels and regions of a dataset's images, from its (cached) eval collection."""

    def __init__(self, col: Collection, paths: Sequence[Path]):
        self.col = col
        by_path = {r.path: r for r in col.catalog.iter_records("ok")}
        recs = []
        missing = []
        for p in paths:
            rec = by_path.get(os.path.abspath(p))
            if rec is None:
                missing.append(str(p))
            recs.append(rec)
        if missing:
            raise InvalidRequest(f"{len(missing)} dataset images could not be indexed "
                                 f"(first: {missing[0]}); see `cbir info`")
        self.ids = np.array([r.id for r in recs], dtype=np.int64)
        self.labels = [r.labels for r in recs]
        got_ids, feats = col.catalog.features(self.ids)
        pos = {int(i): n for n, i in enumerate(got_ids)}
        self.features = feats[[pos[int(i)] for i in self.ids]]

    def regions(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), 49, c) float32 region features of dataset rows ``idx``."""
        found = self.col.catalog.regions(self.ids[idx])
        missing = [int(i) for i in self.ids[idx] if int(i) not in found]
        if missing:
            raise InvalidRequest(f"{len(missing)} images have no stored region features")
        return np.stack([found[int(i)] for i in self.ids[idx]]).astype(np.float32)


def prepare(name: str, root: Path, *, regions: bool, log: Log = _quiet,
            collection_dir: Path | None = None, progress: bool = True,
            extractor: str = EXTRACTOR) -> tuple[Any, StoredFeatures]:
    """Load the dataset's protocol and its stored features (indexing what is missing)."""
    from cbir.io.benchmarks import load_benchmark, with_machine_tags

    root = Path(root)
    if not root.is_dir():
        if name == "folder":
            raise InvalidRequest(f"dataset folder {root} not found (expected {root}/<class>/<image>)")
        raise InvalidRequest(
            f"dataset folder {root} not found; extract it first, e.g. "
            f"`mkdir -p {root} && tar xf ../shared/datasets/{name}.tar -C {root}`")
    ds = load_benchmark(name, root)
    cdir = collection_dir or eval_collection_dir(root, extractor)
    with Collection.create_or_open(cdir, extractor) as col:
        with col.writer_lock(wait=True):
            rep = index_paths(col, _index_roots(name, root), regions=regions, progress=progress)
        log(f"{name}: {len(ds.paths)} images; features from {cdir} "
            f"(added {rep.added}, unchanged {rep.unchanged})")
    col = Collection.open(cdir)
    feats = StoredFeatures(col, ds.paths)
    if not any(ds.tags):  # CIFAR-10, Wang: the backbone's ImageNet labels are the weak tags
        from cbir.codes import machine_tags

        ds = with_machine_tags(ds, [machine_tags(lab) for lab in feats.labels])
    return ds, feats


def _fit(method: str, bits: int, ds: Any, feats: StoredFeatures, *, vectors: Any,
         seed: int, params: dict[str, Any]) -> Any:
    from cbir.concepts.tags import clean_tags
    from cbir.hashing import create_hasher

    train = ds.split.train
    sup: dict[str, Any] = {}
    if method in TAG_METHODS:
        sup["tags"] = [clean_tags(t) for t in ds.tags_of("train")]
        sup["tag_vectors"] = vectors
    if method in REGION_METHODS:
        sup["regions"] = feats.regions(train)
    if method in LABEL_METHODS:
        sup["labels"] = ds.labels_of("train")
    return create_hasher(method, bits, seed=seed, **params.get(method, {})).fit(
        feats.features[train], **sup)


class ReducedRegions:
    """The region-based hashers' reduced regions of a set of rows, computed once per reduction.

    IDEA models fitted on the same training images with the same seed share their fixed
    input transform (:meth:`cbir.hashing.idea.IDEA.reduction_key`), so the 49 x 1280
    regions of a large database (59,000 CIFAR-10 images: 7.4 GB as float16) are read and
    reduced to 49 x 256 float16 once, not once per model. Only the latest key is kept.
    """

    def __init__(self, feats: StoredFeatures, chunk: int = 2000):
        self.feats, self.chunk = feats, chunk
        self._key: str | None = None
        self._sets: dict[bytes, np.ndarray] = {}

    def get(self, hasher: Any, idx: np.ndarray) -> np.ndarray:
        key = hasher.reduction_key()
        if key != self._key:
            self._key, self._sets = key, {}
        tag = np.ascontiguousarray(idx, dtype=np.int64).tobytes()
        if tag not in self._sets:
            parts = [hasher.reduce(self.feats.regions(idx[s:s + self.chunk]))
                     for s in range(0, len(idx), self.chunk)]
            self._sets[tag] = np.concatenate(parts)
        return self._sets[tag]


def _encode(hasher: Any, method: str, feats: StoredFeatures, idx: np.ndarray,
            reduced: ReducedRegions) -> np.ndarray:
    if method in REGION_METHODS:
        return hasher.encode(feats.features[idx], reduced=reduced.get(hasher, idx))
    return hasher.encode(feats.features[idx])


def run(name: str, root: Path, *, methods: Sequence[str] = DEFAULT_METHODS,
        bits: Sequence[int] = DEFAULT_BITS, vectors: str = "glove", seed: int = 0,
        relevance: Sequence[str] = ("labels",), params: dict[str, Any] | None = None,
        plot: Path | None = None, log: Log = _quiet, progress: bool = True,
        collection_dir: Path | None = None, extractor: str = EXTRACTOR,
        auto_weak: str = "wdht") -> dict[str, Any]:
    """Fit, encode and evaluate every (method, bits); returns tables and raw metrics.

    Method ``"auto"`` is what ``cbir hash train --method auto`` does: measure the training
    split's weak supervision against its features without the labels
    (:func:`cbir.hashing.supervision.measure_supervision`) and fit ITQ or ``auto_weak``;
    ``result["auto"]`` says which and why. Whenever a weak method or auto runs,
    ``result["supervision"]`` holds the measurement (with the label-based numbers), and
    ``result["codes"][method][bits]`` the distinct codes and bit balance of every method's
    database codes.
    """
    from cbir.concepts.tag_vectors import create_tag_vectors
    from cbir.concepts.tags import clean_tags
    from cbir.eval.hashing import evaluate_codes, evaluate_float, format_results_table
    from cbir.hashing import HASHERS
    from cbir.hashing.supervision import choose_method, code_stats, measure_supervision

    unknown = [m for m in methods if m not in HASHERS and m != "auto"]
    if auto_weak not in TAG_METHODS:
        unknown.append(auto_weak)
    if unknown:
        raise InvalidRequest(f"unknown hashing method(s) {', '.join(unknown)}; choose from: auto, "
                             + ", ".join(HASHERS.names()))
    weak = sorted({m for m in methods if m in TAG_METHODS} | ({auto_weak} if "auto" in methods else set()))
    if weak or plot is not None:  # before the dataset is indexed: the packages each step needs
        from cbir import extras

        if weak:
            extras.require(f"training {', '.join(weak)}", "train", ["torch"])
            extras.require_vectors("weakly supervised hashing", vectors)
        if plot is not None:
            extras.require("the PR-curve plot", "plots")
    params = params or {}
    needs_regions = any(m in REGION_METHODS for m in methods) or (
        "auto" in methods and auto_weak in REGION_METHODS)
    ds, feats = prepare(name, root, regions=needs_regions, log=log,
                        collection_dir=collection_dir, progress=progress, extractor=extractor)
    q, db = ds.split.query, ds.split.database
    vec = None
    supervision = None
    auto = None
    corpus = [clean_tags(t) for t in ds.tags_of("train")]
    if any(m in TAG_METHODS for m in methods) or ("auto" in methods and any(corpus)):
        vec = create_tag_vectors(vectors, corpus=corpus)
    if vec is not None and any(corpus):
        labels = np.asarray(ds.labels_of("train"))
        report = measure_supervision(
            feats.features[ds.split.train], corpus, vec, seed=seed,
            machine=np.full(len(corpus), ds.info.get("tags") == "machine"),
            labels=labels if labels.ndim == 1 else None)
        supervision = report.as_dict()
        log(f"weak supervision: {report.summary()}")
        if report.tags_carry_less:
            log(f"weak supervision: the tags carry less than the features: {report.reason}")
        if "auto" in methods:
            chosen, why = choose_method(report, auto_weak)
            auto = {"method": chosen, "reason": why}
    elif "auto" in methods:
        auto = {"method": "itq", "reason": "itq, because no training image has tags"}
    if auto is not None:
        log(f"auto: {auto['reason']}")
    relevances = {}
    for kind in relevance:
        d = ds if kind == "labels" else ds.relabel(kind)
        relevances[kind] = (d.labels[q], d.labels[db])
    results: dict[str, dict[str, dict[Any, dict[str, Any]]]] = {k: {} for k in relevances}
    timings: dict[str, dict[int, float]] = {}
    for kind, (ql, dl) in relevances.items():
        results[kind]["float (no hashing)"] = {
            "float": evaluate_float(feats.features[q], feats.features[db], ql, dl)}
    tuned: dict[str, Any] = {}
    code_info: dict[str, dict[int, dict[str, Any]]] = {}
    reduced = ReducedRegions(feats)
    for method in methods:
        fit_method = auto["method"] if method == "auto" and auto is not None else method
        timings[method] = {}
        order = list(bits)
        if fit_method in REGION_METHODS and "lambdas" not in params.get(fit_method, {}):
            # IDEA chooses its loss weights on a validation split (by tag overlap, never by
            # class); do that once, at the middle code length, and keep them for the others
            tune_at = 32 if 32 in order else order[len(order) // 2]
            order.remove(tune_at)
            order.insert(0, tune_at)
        for b in order:
            t0 = time.perf_counter()
            hasher = _fit(fit_method, b, ds, feats, vectors=vec, seed=seed, params=params)
            fit_s = time.perf_counter() - t0
            if fit_method in REGION_METHODS and "lambdas" not in params.get(fit_method, {}):
                lam = getattr(hasher, "info_", {}).get("lambdas")
                if lam is not None:
                    params = {**params, fit_method: {**params.get(fit_method, {}), "lambdas": lam}}
                    tuned[fit_method] = {"bits": b, "lambdas": lam,
                                         "grid": getattr(hasher, "info_", {}).get("grid")}
            t0 = time.perf_counter()
            qc = _encode(hasher, fit_method, feats, q, reduced)
            dc = _encode(hasher, fit_method, feats, db, reduced)
            encode_s = time.perf_counter() - t0
            timings[method][b] = round(fit_s, 2)
            stats = code_stats(dc, b)
            code_info.setdefault(method, {})[b] = stats.as_dict()
            if stats.warning:
                log(f"{method:>11} {b:>3} bits: {stats.warning}")
            for kind, (ql, dl) in relevances.items():
                results[kind].setdefault(method, {})[b] = evaluate_codes(qc, dc, ql, dl, bits=b)
            main = results[next(iter(relevances))][method][b]
            log(f"{method:>11} {b:>3} bits: mAP@5000 {main['mAP@5000']:.4f}  mAP {main['mAP']:.4f}"
                f"  (fit {fit_s:.1f} s, encode {encode_s:.1f} s)")
    tables = {}
    for kind, res in results.items():
        tables[kind] = "\n\n".join(format_results_table(res, metric) for metric in
                                   ("mAP@5000", "mAP", "P@1000", "P@H<=2"))
    if plot is not None:
        from cbir.eval.plots import plot_pr_curves

        top = max(bits)
        kind = next(iter(results))
        plot_pr_curves(results[kind], Path(plot), bits=top,
                       title=f"{name}: precision-recall at {top} bits ({kind} relevance)")
    return {"dataset": name, "protocol": ds.split.description, "sizes": ds.split.sizes(),
            "methods": list(methods), "bits": list(bits), "vectors": vectors, "seed": seed,
            "fit_seconds": timings, "tuned": tuned, "tables": tables,
            "supervision": _jsonable(supervision), "auto": auto, "codes": _jsonable(code_info),
            "results": _jsonable(results)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
