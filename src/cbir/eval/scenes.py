"""``cbir eval scenes``: the SSIR paper's MAP table by query length, on Corel-5K.

Protocol (as in the paper, on the data we have): the keywords are the concepts; the
scene model is trained on the 4,500 training images (15 % of them held out to learn the
fusion weights), and the 499 test images are ranked for every single-concept query with
a relevant test image and for up to 500 random 2-, 3- and 4-concept queries with at least
one relevant test image (relevant = holds every concept of the query). MAP is the mean
over queries of the average precision over the whole ranked test set.

Corel-5K has no free tags apart from its keywords, so two settings are run, named plainly:

* ``visual``: visual only, the real data as it is (the text branch has nothing to read);
* ``noisy-tags``: a text modality of simulated user tags (:func:`simulate_noisy_tags`:
  each keyword kept with probability 0.5, plus random vocabulary words and non-visual
  words, seeded), which exercises the text branch and the fusion.

Baselines and ablations in the same run, on the same trained classifiers: the product of
single-concept visual posteriors (eq. 10 alone), visual only (a1, a2 learned), text only
(a3, a4 learned), SSIR without the multi-concept heads (a1, a3), and SSIR with
K_rc = 2, 4, 8, 16 (weights relearned for each).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest

SETTINGS = ("visual", "noisy-tags")
#: ``--protocol mixed``: a library of tagged and untagged photos (issue 11)
ALL_SETTINGS = (*SETTINGS, "mixed")
SIZES = (1, 2, 3, 4)
#: words a photo-sharing user adds that say nothing about what is in the picture
NON_VISUAL_WORDS = (
    "nikon", "canon", "2007", "2008", "2009", "favorite", "explore", "vacation", "holiday", "trip",
    "photo", "picture", "me", "family", "friends", "birthday", "weekend", "summer", "august",
    "iphone", "hdr", "digital", "camera", "amazing", "beautiful", "awesome", "interesting", "best",
)
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def simulate_noisy_tags(keywords: Sequence[Sequence[str]], vocabulary: Sequence[str], *, seed: int = 0,
                        keep: float = 0.5, n_random: int = 2, n_non_visual: int = 2) -> list[list[str]]:
    """Noisy user tags from clean keywords, seeded.

    Each keyword is kept with probability ``keep``; then ``n_random`` words drawn from the
    keyword ``vocabulary`` (right words on the wrong image) and ``n_non_visual`` words from
    :data:`NON_VISUAL_WORDS` are added; the result is shuffled (users do not sort tags).
    """
    if not 0 <= keep <= 1:
        raise InvalidRequest(f"keep must be a probability, got {keep}")
    rng = np.random.default_rng(seed)
    vocab = list(vocabulary)
    out = []
    for kws in keywords:
        tags = [k for k in kws if rng.random() < keep]
        tags += [vocab[i] for i in rng.integers(0, len(vocab), size=n_random)] if vocab else []
        tags += [NON_VISUAL_WORDS[i] for i in rng.integers(0, len(NON_VISUAL_WORDS), size=n_non_visual)]
        tags = list(dict.fromkeys(tags))
        rng.shuffle(tags)
        out.append(tags)
    return out


def map_by_size(scores: dict[tuple[int, ...], np.ndarray],
                relevant: np.ndarray) -> dict[int, dict[str, float]]:
    """``{size: {"MAP": ..., "queries": n}}`` from per-query scores ``(n,)`` over the test images.

    relevant: ``(n, C)`` bool concept matrix of the test images; ties in the scores are
    broken by image order.
    """
    from cbir.eval.metrics import average_precision, rank_by_score

    by: dict[int, list[float]] = {}
    for q, s in scores.items():
        rel = relevant[:, list(q)].all(axis=1)
        order = rank_by_score(np.asarray(s, dtype=np.float64)[None, :])[0]
        by.setdefault(len(q), []).append(float(average_precision(rel[order][None, :])[0]))
    return {k: {"MAP": float(np.mean(v)), "queries": len(v)} for k, v in sorted(by.items())}


def _methods(setting: str, k_rcs: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
    """(row name, how to score) for one setting; ``active`` = fusion weights that may be > 0.

    Rows fuse with the per-branch log-odds model (issue 11) unless ``logodds`` is False.
    """
    rows: list[tuple[str, dict[str, Any]]] = [
        ("product of single-concept posteriors (eq. 10, visual)", {"product": True}),
        ("visual only (r_s, r_m of the image)", {"active": (1, 1, 0, 0)}),
    ]
    if setting != "visual":
        rows.append(("tags only (r_s, r_m of the tags)", {"active": (0, 0, 1, 1)}))
    if setting == "mixed":
        rows.append(("SSIR, linear fusion of calibrated terms (eq. 7, before issue 11)", {"logodds": False}))
        rows.append(("SSIR (per-branch log-odds fusion)", {}))
        return rows
    rows.append(("SSIR without multi-concept heads", {"active": (1, 0, 1, 0)}))
    rows.append(("SSIR, raw terms fused as eq. 7 prints them (no calibration)", {"calibrate": False}))
    rows.append(("SSIR, linear fusion of calibrated terms (eq. 7, before issue 11)", {"logodds": False}))
    for k in k_rcs:
        rows.append((f"SSIR, K_rc = {k}", {"k_rc": k}))
    return rows


def mixed_library(n: int, fraction: float, seed: int) -> np.ndarray:
    """``(n,)`` bool, the images that keep their keywords as tags (seeded, exactly round(f n))."""
    if not 0 < fraction <= 1:
        raise InvalidRequest(f"--tagged-fraction must be in (0, 1], got {fraction}")
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))]] = True
    return out


def untagged_map_by_size(scores: dict[tuple[int, ...], np.ndarray], relevant: np.ndarray,
                         tagged: np.ndarray) -> dict[int, dict[str, float]]:
    """MAP of the untagged relevant images: per query, the tagged relevant images are taken
    out of the ranking and AP is computed for the untagged relevant ones among everything
    else (queries without an untagged relevant image are skipped). A ranking that lets
    tagged irrelevant images bury untagged relevant ones scores low here."""
    keep_q = {}
    for q, s in scores.items():
        rel = relevant[:, list(q)].all(axis=1)
        if (rel & ~tagged).any():
            keep_q[q] = (np.asarray(s), ~(rel & tagged))
    by: dict[tuple[int, ...], np.ndarray] = {}
    sub_rel: dict[tuple[int, ...], np.ndarray] = {}
    for q, (s, rows) in keep_q.items():
        by[q] = s[rows]
        sub_rel[q] = relevant[rows]
    from cbir.eval.metrics import average_precision, rank_by_score

    out: dict[int, list[float]] = {}
    for q, s in by.items():
        rel = sub_rel[q][:, list(q)].all(axis=1)
        order = rank_by_score(np.asarray(s, dtype=np.float64)[None, :])[0]
        out.setdefault(len(q), []).append(float(average_precision(rel[order][None, :])[0]))
    return {k: {"MAP": float(np.mean(v)), "queries": len(v)} for k, v in sorted(out.items())}


def evaluate_setting(setting: str, features: np.ndarray, keywords: Sequence[Sequence[str]],
                     words: Sequence[str], train: np.ndarray, test: np.ndarray, *, vectors: Any,
                     k_rcs: Sequence[int] = (2, 4, 8, 16), per_size: int = 500, seed: int = 0,
                     log: Log = _quiet, model_kw: dict[str, Any] | None = None,
                     tagged_fraction: float = 0.3) -> dict[str, Any]:
    """Train on ``train``, rank ``test``; returns the MAP table rows and the model's facts.

    ``mixed``: a library where only ``tagged_fraction`` of the images (train and test,
    seeded) keep their keywords, as tags and as the concepts the model learns from; the
    others are untagged photos. Relevance is still judged on every image's keywords.
    """
    from cbir.concepts.scene_model import fit_fusion, sample_queries, scene_components, train_scene_model

    if setting not in ALL_SETTINGS:
        raise InvalidRequest(f"unknown setting {setting!r}; choose from {', '.join(ALL_SETTINGS)}")
    tags = None
    concepts = list(keywords)
    tagged = None
    if setting == "noisy-tags":
        tags = simulate_noisy_tags(keywords, words, seed=seed + 1)
    elif setting == "mixed":
        tagged = mixed_library(len(keywords), tagged_fraction, seed + 11)
        tags = [list(k) if t else [] for k, t in zip(keywords, tagged, strict=True)]
        concepts = tags
    t0 = time.perf_counter()
    model, vpost, val_m = train_scene_model(
        features[train], [concepts[i] for i in train], None if tags is None else [tags[i] for i in train],
        vectors=vectors, seed=seed, log=log, **(model_kw or {}))
    train_s = time.perf_counter() - t0
    post = model.posteriors(features[test], None if tags is None else [tags[i] for i in test], vectors)
    test_m = model.vocabulary.encode([keywords[i] for i in test])
    rng = np.random.default_rng(seed)
    queries = sample_queries(test_m, SIZES, per_size, rng)
    all_q = [q for k in SIZES for q in queries.get(k, [])]
    vq = sample_queries(val_m, SIZES, 200, np.random.default_rng(seed + 7))
    val_queries = [q for k in SIZES for q in vq.get(k, [])]
    rows: dict[str, Any] = {}
    untagged_rows: dict[str, Any] = {}
    weights_used: dict[str, list[float]] = {}
    logodds_used: dict[str, Any] = {}
    test_tagged = None if tagged is None else tagged[test]
    for row, how in _methods(setting, k_rcs):
        m = model.with_settings(k_rc=how.get("k_rc", model.k_rc))
        if "product" not in how:
            fitted = fit_fusion(m.scorer, vpost, val_m, val_queries, active=how.get("active"),
                                calibrate=how.get("calibrate", True), logodds=how.get("logodds", True))
            m = m.with_settings(weights=fitted["weights"], calibration=fitted["calibration"],
                                logodds=fitted["logodds"])
            weights_used[row] = [round(float(w), 4) for w in fitted["weights"]]
            if fitted["logodds"] is not None:
                logodds_used[row] = fitted["logodds"]
        scores = {}
        for q in all_q:
            if "product" in how:
                scores[q] = scene_components(m.scorer, q, post)[:, 0]
            else:
                scores[q] = m.score(q, post)
        rows[row] = map_by_size(scores, test_m)
        cells = "  ".join(f"{k}: {v['MAP']:.3f}" for k, v in rows[row].items())
        if test_tagged is not None:
            untagged_rows[row] = untagged_map_by_size(scores, test_m, test_tagged)
            cells += "  | untagged " + "  ".join(f"{k}: {v['MAP']:.3f}"
                                                 for k, v in untagged_rows[row].items())
        log(f"[{setting}] {row}: {cells}")
    return {
        "setting": setting, "rows": rows, "fusion_weights": weights_used, "logodds_fusion": logodds_used,
        **({"untagged_rows": untagged_rows, "tagged_fraction": tagged_fraction,
            "tagged_train_images": int(tagged[train].sum())} if tagged is not None else {}),
        "queries": {k: len(v) for k, v in queries.items()},
        "vocabulary": {"concepts": model.vocabulary.n_concepts, "itemsets": model.vocabulary.n_itemsets},
        "text_branch": model.text is not None,
        "tagged_test_images": int(post.has_text.sum()) if post.text_single is not None else 0,
        "train_seconds": round(train_s, 1),
    }


def format_table(result: dict[str, Any], key: str = "rows") -> str:
    """Markdown table: one row per method, MAP by query length (``key``: rows or untagged_rows)."""
    sizes = [int(k) for k, n in result["queries"].items() if n]  # a small library may lack 4-concept sets
    if key != "rows":
        result = {"queries": {k: next(iter(result[key].values()))[k]["queries"] for k in sizes
                              if k in next(iter(result[key].values()))}, "rows": result[key]}
        sizes = [int(k) for k in result["queries"]]
    head = "| method | " + " | ".join(f"{k} concept{'s' if k > 1 else ''} ({result['queries'][k]} q)"
                                      for k in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    best = {k: max(r[k]["MAP"] for r in result["rows"].values() if k in r) for k in sizes}
    for name, r in result["rows"].items():
        cells = []
        for k in sizes:
            v = r[k]["MAP"] if k in r else float("nan")
            cells.append(f"**{v:.3f}**" if abs(v - best[k]) < 5e-4 else f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_everything(seed: int) -> None:
    """Seed the global generators too (python, numpy, torch), deterministic torch kernels.

    Every step of the protocol already draws from its own seeded generator (the splits,
    the queries, the simulated tags, torch training in a forked, seeded, single-thread
    RNG); this also pins anything that would fall back on the global state.
    """
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # pragma: no cover - required by run()
        return
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def run(name: str, root: Path, *, settings: Sequence[str] = SETTINGS, k_rcs: Sequence[int] = (2, 4, 8, 16),
        per_size: int = 500, seed: int = 0, vectors: str = "glove", log: Log = _quiet,
        progress: bool = True, collection_dir: Path | None = None,
        tagged_fraction: float = 0.3) -> dict[str, Any]:
    """The paper's table on a benchmark with keywords (Corel-5K); see the module docstring."""
    from cbir.concepts.tag_vectors import create_tag_vectors
    from cbir.eval.hashing_benchmark import prepare

    if name != "corel5k":
        raise InvalidRequest(f"scene evaluation needs images with concept keywords; {name!r} has none "
                             "(use corel5k)")
    from cbir import extras

    extras.require("training concept classifiers", "train", ["torch"])  # before the dataset is indexed
    if "noisy-tags" in settings or "mixed" in settings:
        extras.require_vectors("the text branch", vectors)
    ds, feats = prepare(name, root, regions=False, log=log, collection_dir=collection_dir,
                        progress=progress)
    _, words = ds.extra_labels["keywords"]
    seed_everything(seed)
    vec = create_tag_vectors(vectors) if ("noisy-tags" in settings or "mixed" in settings) else None
    out: dict[str, Any] = {"dataset": name, "sizes": ds.split.sizes(), "seed": seed, "vectors": vectors,
                           "per_size": per_size, "settings": {}, "tables": {}}
    for setting in settings:
        res = evaluate_setting(setting, feats.features, ds.tags, words, ds.split.train, ds.split.query,
                               vectors=vec, k_rcs=k_rcs, per_size=per_size, seed=seed, log=log,
                               tagged_fraction=tagged_fraction)
        out["tables"][setting] = format_table(res)
        if "untagged_rows" in res:
            out["tables"][f"{setting} (untagged relevant images)"] = format_table(res, "untagged_rows")
        out["settings"][setting] = res  # int keys become strings when written as JSON
    return out


def read_labels_csv(path: Path) -> dict[str, list[str]]:
    """``path,label1;label2`` lines (a header line ``path,...`` is skipped) -> {real path: labels}.

    Relative paths are taken relative to the CSV's folder; labels are cleaned like tags."""
    import csv

    from cbir.concepts.tags import clean_tags

    out: dict[str, list[str]] = {}
    base = Path(path).resolve().parent
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or (n == 1 and row[0].strip().lower() == "path"):
                    continue
                if len(row) < 2:
                    raise InvalidRequest(f"{path} line {n}: expected 'path,label1;label2'")
                p = Path(row[0].strip())
                p = p if p.is_absolute() else base / p
                labels = clean_tags(x for cell in row[1:] for x in cell.split(";"))
                out[os.path.realpath(p)] = labels
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"cannot read the labels file {path}: {e}") from None
    return out


def run_collection(collection_dir: Path, labels: str | Path, *, settings: Sequence[str] = ("visual",),
                   k_rcs: Sequence[int] = (8,), per_size: int = 200, seed: int = 0,
                   vectors: str = "glove", test_fraction: float = 0.2, log: Log = _quiet,
                   tagged_fraction: float = 0.3) -> dict[str, Any]:
    """The paper's table on any collection: ``labels`` is a CSV (``path,label1;label2``) or
    ``"tags"`` (the images' own tags are the truth). Only labelled images take part; a seeded
    ``test_fraction`` of them are the test images, the rest train the model."""
    from cbir import extras
    from cbir.collection import Collection
    from cbir.concepts.tag_vectors import create_tag_vectors
    from cbir.concepts.tags import clean_tags
    from cbir.scenes import _records_and_features

    extras.require("training concept classifiers", "train", ["torch"])
    if "noisy-tags" in settings or "mixed" in settings:
        extras.require_vectors("the text branch", vectors)
    with Collection.open(Path(collection_dir)) as col:
        recs, feats = _records_and_features(col)
    if str(labels) == "tags":
        truth = [clean_tags(r.tags) for r in recs]
    else:
        table = read_labels_csv(Path(labels))
        truth = [table.get(os.path.realpath(r.path), []) for r in recs]
    keep = np.array([bool(t) for t in truth])
    if keep.sum() < 20:
        raise InvalidRequest(f"only {int(keep.sum())} indexed images have labels; the protocol needs at "
                             "least 20 (check the paths in the labels file)")
    feats = feats[keep]
    keywords = [t for t in truth if t]
    words = sorted({w for t in keywords for w in t})
    order = np.random.default_rng(seed).permutation(len(keywords))
    n_test = max(1, int(round(test_fraction * len(keywords))))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    seed_everything(seed)
    vec = create_tag_vectors(vectors) if ("noisy-tags" in settings or "mixed" in settings) else None
    out: dict[str, Any] = {"dataset": str(collection_dir), "labels": str(labels),
                           "sizes": {"train": int(len(train)), "query": int(len(test)),
                                     "unlabelled_skipped": int((~keep).sum())},
                           "seed": seed, "vectors": vectors, "per_size": per_size, "settings": {},
                           "tables": {}}
    for setting in settings:
        res = evaluate_setting(setting, feats, keywords, words, train, test, vectors=vec, k_rcs=k_rcs,
                               per_size=per_size, seed=seed, log=log, tagged_fraction=tagged_fraction)
        out["tables"][setting] = format_table(res)
        if "untagged_rows" in res:
            out["tables"][f"{setting} (untagged relevant images)"] = format_table(res, "untagged_rows")
        out["settings"][setting] = res
    return out
