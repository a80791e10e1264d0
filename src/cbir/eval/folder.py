"""``cbir eval folder``: a folder-per-class dataset, every image querying all the others.

The dataset is indexed into its own collection (cached, so a second run only re-reads
the stored features), then P@K and mAP are computed on the stored vectors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.eval.protocols import format_table, leave_one_out_retrieval
from cbir.extract import DEFAULT_EXTRACTOR
from cbir.indexing import index_paths
from cbir.io.datasets import read_class_folders


def eval_collection_dir(dataset: Path, extractor: str) -> Path:
    """Where the dataset's own collection is cached (per dataset path and extractor)."""
    import platformdirs

    base = Path(os.environ.get("CBIR_CACHE_DIR") or platformdirs.user_cache_dir("cbir"))
    key = hashlib.sha1(f"{dataset.resolve()}|{extractor}".encode()).hexdigest()[:16]
    return base / "eval" / f"{dataset.resolve().name}-{extractor}-{key}"


def load_labelled_features(dataset: Path, *, extractor: str = DEFAULT_EXTRACTOR,
                           collection_dir: Path | None = None, progress: bool = True
                           ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Index ``dataset`` (incrementally) and return (features (n,d), labels (n,), classes, failed)."""
    paths, labels, classes = read_class_folders(dataset)
    cdir = collection_dir or eval_collection_dir(dataset, extractor)
    with Collection.create_or_open(cdir, extractor) as col:
        with col.writer_lock(wait=True):
            index_paths(col, [dataset], progress=progress)
        ids, feats = col.catalog.features()
        by_path = {r.path: r.id for r in col.catalog.iter_records("ok")}
    row_of = {int(i): n for n, i in enumerate(ids)}
    keep, keep_labels = [], []
    for p, lab in zip(paths, labels, strict=True):
        rid = by_path.get(os.path.abspath(p))
        if rid is not None:
            keep.append(row_of[rid])
            keep_labels.append(lab)
    failed = len(paths) - len(keep)
    return feats[keep], np.asarray(keep_labels, dtype=np.int64), classes, failed


def evaluate_folder(dataset: Path, *, extractor: str = DEFAULT_EXTRACTOR,
                    collection_dir: Path | None = None, ks: Sequence[int] = (1, 5, 10, 20),
                    progress: bool = True) -> dict[str, Any]:
    feats, labels, classes, failed = load_labelled_features(
        dataset, extractor=extractor, collection_dir=collection_dir, progress=progress)
    metrics = leave_one_out_retrieval(feats, labels, ks=tuple(ks))
    name = dataset.resolve().name
    if name == "dataset":  # Wang's tar wraps its classes in dataset/: name it by its parent
        name = dataset.resolve().parent.name + "/" + name
    row = {"dataset": name, "extractor": extractor, "images": len(labels),
           "classes": len(classes), **{k: v if isinstance(v, int) else round(float(v), 4)
              for k, v in metrics.items()}}
    columns = list(row)
    return {**row, "failed": failed, "table": format_table([row], columns)}
