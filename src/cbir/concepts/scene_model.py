"""The SSIR scene model: vocabulary, co-occurrence context, visual + text classifiers, fusion.

One object ties the parts of the paper together:

* V and V* (:class:`~cbir.concepts.vocabulary.ConceptVocabulary`, eqs. 1-2) from the
  training images' concepts;
* the visual concept classifier on stored backbone features and, when images carry free
  tags, the text classifier (SentenceCNN over tag word vectors), each with a
  single-concept head over V and a multi-concept head over V* (eqs. 3-4);
* the query context R_rc(Q) from co-occurrence counts on the training images (eqs. 5-6);
* the fusion weights a1..a4 (eqs. 7-9), learned on a validation split held out from the
  classifiers' training (eqs. 14-18).

Training (:func:`train_scene_model`) splits the labelled images into a fit part (the
classifiers, V, V* and the context) and a validation part (the fusion weights, from the
validation images' single concepts and random 2-4 concept scenes). Images without free
tags have no text evidence: their score falls back to the visual terms (see
:func:`cbir.concepts.relevance.fuse`), so a collection with no tags at all gets a
visual-only model.

Saved as one safetensors file (the classifiers' tensors and the packed training concept
matrix) and one JSON record that carries the vocabulary, the weights, the settings and the
safetensors' sha256 (the record is the commit point, as for the model registry).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.concepts.context import K_RC, ConceptContext
from cbir.concepts.fusion import fit_fusion_weights
from cbir.concepts.relevance import COMPONENTS, SceneScorer, check_weights, fuse
from cbir.concepts.vocabulary import ConceptVocabulary
from cbir.errors import CollectionError, InvalidRequest

FORMAT = "cbir-scene-model"
FORMAT_VERSION = 1
#: fewest labelled images a scene model is trained from
MIN_IMAGES = 20
#: fewest tagged training images for the text branch to be trained at all
MIN_TAGGED = 20
Log = Callable[[str], None]

__all__ = [
    "FORMAT_VERSION",
    "ScenePosteriors",
    "SceneModel",
    "fit_fusion",
    "sample_queries",
    "scene_components",
    "train_scene_model",
]


def _quiet(_: str) -> None:
    pass


@dataclass
class ScenePosteriors:
    """Classifier outputs for n images.

    visual_single ``(n, C)``, visual_multi ``(n, M)``; text_single / text_multi the same
    shapes or None (no text branch); has_text ``(n,)`` bool, False where an image has no
    tag the text branch knows (its text rows are then meaningless).
    """

    visual_single: np.ndarray
    visual_multi: np.ndarray
    text_single: np.ndarray | None = None
    text_multi: np.ndarray | None = None
    has_text: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: ``(n, C)`` bool, the vocabulary's concepts found verbatim in each image's tags (None:
    #: not known); the tagged images' fusion counts the query concepts missing from them
    tag_concepts: np.ndarray | None = None
    #: the text rows are already zero where has_text is False (posteriors read back from a
    #: store, possibly memory-mapped: not copied)
    clean: bool = False

    def __post_init__(self) -> None:
        n = self.visual_single.shape[0]
        if self.has_text.shape != (n,):
            self.has_text = np.zeros(n, dtype=bool) if self.text_single is None else self.has_text
        if self.text_single is not None and not self.clean:
            # untagged rows may be NaN: make them harmless zeros once, here
            self.text_single = np.where(self.has_text[:, None], np.nan_to_num(self.text_single), 0.0)
            self.text_multi = np.where(self.has_text[:, None], np.nan_to_num(self.text_multi), 0.0)

    def __len__(self) -> int:
        return int(self.visual_single.shape[0])

    def take(self, rows: np.ndarray) -> ScenePosteriors:
        """The posteriors of a subset of the images."""
        t = self.text_single is not None
        return ScenePosteriors(self.visual_single[rows], self.visual_multi[rows],
                               self.text_single[rows] if t else None,
                               self.text_multi[rows] if t else None, self.has_text[rows],
                               None if self.tag_concepts is None else self.tag_concepts[rows])

    def missing_tags(self, query: Sequence[int]) -> np.ndarray | None:
        """``(n,)`` float64: how many of the query's concepts an image's tags lack (0 for
        images without text evidence); None when the tags are not known."""
        if self.tag_concepts is None or self.text_single is None:
            return None
        miss = (~self.tag_concepts[:, list(query)]).sum(axis=1).astype(np.float64)
        return np.where(self.has_text, miss, 0.0)


def scene_components(scorer: SceneScorer, query: Sequence[int], post: ScenePosteriors) -> np.ndarray:
    """``(n, 4)`` terms of eqs. 8-9 (visual single, visual multi, text single, text multi)."""
    return scorer.components(query, post.visual_single, post.visual_multi, post.text_single,
                             post.text_multi, post.has_text if post.text_single is not None else None)


def sample_queries(concept_matrix: np.ndarray, sizes: Sequence[int], per_size: int,
                   rng: np.random.Generator, *, min_relevant: int = 1) -> dict[int, list[tuple[int, ...]]]:
    """Random scene queries that have at least ``min_relevant`` relevant images.

    concept_matrix: ``(n, C)`` bool, the images the queries are judged on. Size 1: every
    concept with enough relevant images (all of them, not a sample). Sizes > 1: up to
    ``per_size`` distinct concept sets, each drawn as a random subset of a random image's
    concepts (so it has at least one relevant image), then kept when it has
    ``min_relevant``. Returns ``{size: [sorted concept-index tuples]}``.
    """
    m = np.asarray(concept_matrix, dtype=bool)
    out: dict[int, list[tuple[int, ...]]] = {}
    for k in sizes:
        if k == 1:
            out[1] = [(int(c),) for c in np.flatnonzero(m.sum(axis=0) >= min_relevant)]
            continue
        rows = np.flatnonzero(m.sum(axis=1) >= k)
        found: dict[tuple[int, ...], None] = {}
        tries = 0
        while rows.size and len(found) < per_size and tries < per_size * 50:
            tries += 1
            concepts = np.flatnonzero(m[rng.choice(rows)])
            q = tuple(sorted(int(c) for c in rng.choice(concepts, size=k, replace=False)))
            if q in found:
                continue
            if min_relevant > 1 and int(m[:, list(q)].all(axis=1).sum()) < min_relevant:
                continue
            found[q] = None
        out[k] = list(found)
    return out


def fit_fusion(scorer: SceneScorer, post: ScenePosteriors, concept_matrix: np.ndarray,
               queries: Sequence[tuple[int, ...]], *, active: Sequence[bool] | None = None,
               calibrate: bool = True, logodds: bool = True) -> dict[str, Any]:
    """Learn a1..a4 (eqs. 14-18) on validation images; returns weights, calibration, curve, sizes.

    For each query every validation image is one example, labelled 1 when it holds every
    concept of the query; the query is the group of eq. 17's 1/N+ and 1/N- weights.
    Without a text branch only the visual weights are active. ``calibrate``: first map
    each active term to a probability (:mod:`cbir.concepts.calibration`), else fuse the
    raw terms as eq. 7 prints them. ``logodds`` (with ``calibrate``): also fit the
    per-branch log-odds fusion (:class:`~cbir.concepts.fusion.LogOddsFusion`), returned as
    ``"logodds"`` (a dict; None otherwise), which the model then scores with.
    """
    from cbir.concepts.calibration import apply_calibration, fit_calibration
    from cbir.concepts.fusion import sample_weights

    if not queries:
        raise InvalidRequest("no validation query to fit the fusion weights on; add labelled images")
    m = np.asarray(concept_matrix, dtype=bool)
    act = np.array([True, True, post.text_single is not None, post.text_single is not None])
    if active is not None:
        act &= np.asarray(active, dtype=bool)
    comps, labels, groups, lengths = [], [], [], []
    for g, q in enumerate(queries):
        comps.append(scene_components(scorer, q, post))
        labels.append(m[:, list(q)].all(axis=1))
        groups.append(np.full(len(post), g, dtype=np.int64))
        lengths.append(np.full(len(post), len(q), dtype=np.int64))
    comp = np.concatenate(comps)
    qlen = np.concatenate(lengths)
    y = np.concatenate(labels).astype(np.int64)
    missing = None
    if post.tag_concepts is not None and post.text_single is not None:
        missing = np.concatenate([post.missing_tags(q) for q in queries])
    has_text = np.tile(post.has_text, len(queries)) if post.text_single is not None else None
    # only queries with both positives and negatives carry information (eq. 17 is 1/N+, 1/N-)
    gid = np.concatenate(groups)
    pos = np.bincount(gid, weights=y, minlength=len(queries))
    keep_g = (pos > 0) & (pos < len(post))
    keep = keep_g[gid]
    if not keep.any():
        raise InvalidRequest("no validation query has both relevant and irrelevant images")
    comp, y, gid, qlen = comp[keep], y[keep], gid[keep], qlen[keep]
    missing = None if missing is None else missing[keep]
    has_text = None if has_text is None else has_text[keep]
    calibration = None
    if calibrate:
        usable = np.ones(comp.shape, dtype=bool)
        usable[:, ~act] = False
        if has_text is not None:
            usable[:, 2:] &= has_text[:, None]
        calibration = fit_calibration(comp, y, sample_weights(y, gid), usable, lengths=qlen)
        comp = apply_calibration(comp, calibration, qlen)
    res = fit_fusion_weights(comp, y, gid, has_text, active=act)
    lo = None
    if calibrate and logodds:
        from cbir.concepts.fusion import fit_logodds_fusion

        lo = fit_logodds_fusion(comp, y, gid, has_text, active=act, missing=missing).to_dict()
    return {"weights": res.weights, "calibration": calibration, "logodds": lo, "curve": res.curve.tolist(),
            "iterations": res.n_iter, "converged": res.converged, "queries": int(keep_g.sum()),
            "examples": int(keep.sum())}


class SceneModel:
    """A trained SSIR model (see the module docstring). Inference is numpy only."""

    def __init__(self, vocabulary: ConceptVocabulary, train_concepts: np.ndarray, visual: Any,
                 text: Any | None, weights: Sequence[float], meta: dict[str, Any]):
        self.vocabulary = vocabulary
        self.train_concepts = np.asarray(train_concepts, dtype=bool)
        self._priors: dict[tuple[int, ...], float] = {}
        if self.train_concepts.shape[1:] != (vocabulary.n_concepts,):
            raise InvalidRequest(f"training concepts {self.train_concepts.shape} do not match the "
                                 f"{vocabulary.n_concepts} concepts of the vocabulary")
        self.visual = visual
        self.text = text
        self.meta = dict(meta)
        self.context = ConceptContext(vocabulary, self.train_concepts)
        self.scorer = SceneScorer(self.context, check_weights(weights), int(meta.get("k_rc", K_RC)))
        #: per-term [alpha, beta] of the calibration before fusion (None: raw terms)
        self.calibration: list[list[float] | None] | None = meta.get("calibration")
        #: the per-branch log-odds fusion (issue 11); None: the linear fusion of eq. 7
        from cbir.concepts.fusion import LogOddsFusion

        lo = meta.get("logodds")
        self.logodds: LogOddsFusion | None = None if lo is None else LogOddsFusion.from_dict(lo)

    # -- description ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def weights(self) -> np.ndarray:
        return self.scorer.weights

    @property
    def k_rc(self) -> int:
        return self.scorer.k_rc

    @property
    def concepts(self) -> list[str]:
        return list(self.vocabulary.concepts)

    @property
    def tag_vectors(self) -> str | None:
        """Name of the tag-vector backend the text branch reads (None: no text branch)."""
        return self.meta.get("tag_vectors")

    def with_settings(self, *, weights: Sequence[float] | None = None, k_rc: int | None = None,
                      calibration: Any = "keep", logodds: Any = "keep") -> SceneModel:
        """A copy with other fusion weights, K_rc, calibration or log-odds fusion (dict or None);
        classifiers shared (for ablations)."""
        meta = dict(self.meta)
        if logodds != "keep":
            meta["logodds"] = logodds
        if k_rc is not None:
            meta["k_rc"] = int(k_rc)
        if calibration != "keep":
            meta["calibration"] = calibration
        return SceneModel(self.vocabulary, self.train_concepts, self.visual, self.text,
                          self.weights if weights is None else weights, meta)

    # -- inference --------------------------------------------------------------------------
    def posteriors(self, features: np.ndarray, tags: Sequence[Sequence[str]] | None = None,
                   vectors: Any | None = None) -> ScenePosteriors:
        """Visual (and, given tags and the text branch, text) posteriors of n images."""
        vs, vm = self.visual.predict(np.asarray(features, dtype=np.float32))
        if self.text is None or tags is None:
            return ScenePosteriors(vs, vm)
        if len(tags) != vs.shape[0]:
            raise InvalidRequest(f"{len(tags)} tag lists for {vs.shape[0]} images")
        if vectors is None:
            raise InvalidRequest("the text branch needs the tag vectors it was trained with")
        ts, tm, has = self.text.predict([list(t) for t in tags], vectors)
        return ScenePosteriors(vs, vm, ts, tm, np.asarray(has, dtype=bool),
                               self.vocabulary.encode([list(t) for t in tags]))

    def query(self, concepts: Sequence[str | int]) -> tuple[int, ...]:
        return self.vocabulary.query(concepts)

    def components(self, query: Sequence[str | int], post: ScenePosteriors) -> np.ndarray:
        """``(n, 4)`` relevance terms, columns :data:`~cbir.concepts.relevance.COMPONENTS`."""
        return scene_components(self.scorer, self.query(query), post)

    def score(self, query: Sequence[str | int], post: ScenePosteriors) -> np.ndarray:
        """``(n,)`` fused relevance r(Q, (I, T)) of eqs. 7-9."""
        q = self.query(query)
        return self.fuse(scene_components(self.scorer, q, post), post, q)

    def fuse(self, components: np.ndarray, post: ScenePosteriors,
             query: Sequence[int] | None = None) -> np.ndarray:
        """Calibrate the ``(n, 4)`` raw terms, then fuse -> ``(n,)``.

        With a log-odds fusion (models trained since issue 11): P(Q | I) for untagged
        images, P(Q | I, T) for tagged ones (:class:`~cbir.concepts.fusion.LogOddsFusion`),
        which also counts the query concepts (indices, ``query``) a tagged image's tags lack;
        else eqs. 7-9 on the calibrated terms.
        """
        from cbir.concepts.calibration import apply_calibration

        mask = post.has_text if post.text_single is not None else np.zeros(len(post), dtype=bool)
        cal = apply_calibration(components, self.calibration, None if query is None else len(query))
        if self.logodds is not None and self.calibration is not None:
            missing = None if query is None else post.missing_tags(query)
            prior = 0.0 if query is None else self.prior_logodds(query)
            return self.logodds.score(cal, mask, missing, offset=prior)
        return fuse(cal, self.weights, mask)

    def prior_logodds(self, query: Sequence[int]) -> float:
        """logit of P(an image holds every concept of ``query``) on the training images (at
        least half an image's worth).

        The log-odds fusion is fitted with eq. 17's weights, positives counting as much as
        negatives for every query: what it outputs are the odds of a world where half the
        images hold the query. Adding this prior's log-odds (King and Zeng's prior
        correction) turns them into the odds in this library, so a probability means the
        same across words and models: without it an image with no sign of "beach" read
        0.79 and outranked real beaches in a query that mixed a trained word with a
        built-in one (geometric mean of per-word probabilities). Ranking within one
        trained query is unchanged (the same constant for every image).
        """
        key = tuple(sorted(int(c) for c in query))
        cached = self._priors.get(key)
        if cached is None:
            m = self.train_concepts
            n = m.shape[0]
            k = int(np.all(m[:, list(key)], axis=1).sum()) if n and key else 0
            p = min(max(k, 0.5), max(n - 0.5, 0.5)) / max(n, 1)
            cached = self._priors[key] = float(np.log(p) - np.log1p(-p))
        return cached

    def concept_probabilities(self, post: ScenePosteriors) -> np.ndarray:
        """``(n, C)`` per-concept probability P(c | the image's evidence).

        With a log-odds fusion: the fused single-concept estimate (visual for untagged images,
        visual + text + absent tags for tagged ones; one scale, the one scene queries rank by).
        Older models: visual, mixed with text where an image has tags by the weights a1, a3.
        """
        if self.logodds is not None and self.calibration is not None:
            out = np.empty((len(post), len(self.concepts)), dtype=np.float64)
            for c in range(len(self.concepts)):
                out[:, c] = self.score((c,), post)
            return out
        p = post.visual_single.astype(np.float64)
        if post.text_single is None or not post.has_text.any():
            return p
        a1, a3 = float(self.weights[0]), float(self.weights[2])
        if a1 + a3 <= 0:
            return p
        mixed = (a1 * p + a3 * post.text_single) / (a1 + a3)
        return np.where(post.has_text[:, None], mixed, p)

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: Path, *, overwrite: bool = False) -> Path:
        """``<dir>/<name>.safetensors`` then ``<dir>/<name>.json``, each written atomically."""
        from safetensors.numpy import save

        from cbir.atomic import atomic_write_bytes
        from cbir.store.manifest import write_json_atomic
        from cbir.train.registry import check_name

        name = check_name(self.name)
        directory = Path(directory)
        json_path = directory / f"{name}.json"
        if json_path.exists() and not overwrite:
            raise InvalidRequest(f"a concept model named {name!r} already exists in {directory}; choose "
                                 f"another --name or delete it first (`cbir concepts delete {name}`)")
        tensors = {f"visual.{k}": v for k, v in self.visual.weights.items()}
        if self.text is not None:
            tensors.update({f"text.{k}": v for k, v in self.text.weights.items()})
        tensors["context.train_concepts"] = np.packbits(self.train_concepts, axis=1)
        data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                    metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        record = {
            "format": FORMAT, "format_version": FORMAT_VERSION, **self.meta,
            "weights": [float(w) for w in self.weights], "k_rc": self.k_rc,
            "vocabulary": self.vocabulary.to_dict(),
            "n_train_concepts": int(self.train_concepts.shape[0]),
            "visual_meta": self.visual.meta,
            "text_meta": None if self.text is None else self.text.meta,
            "tensors_file": f"{name}.safetensors",
            "tensors_sha256": hashlib.sha256(data).hexdigest(),
        }
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / f"{name}.safetensors", data)
        write_json_atomic(json_path, record)
        return json_path

    @classmethod
    def load(cls, directory: Path, name: str) -> SceneModel:
        """Read what :meth:`save` wrote; a damaged or newer file gets a clear error."""
        from safetensors.numpy import load

        from cbir.concepts.classifiers import ConceptHeads
        from cbir.train.registry import check_name

        name = check_name(name)
        record = read_record(Path(directory) / f"{name}.json")
        path = Path(directory) / f"{name}.safetensors"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CollectionError(f"concept model {name!r} has a record but no {path.name}; "
                                  f"delete it (`cbir concepts delete {name}`) and train again") from None
        if hashlib.sha256(data).hexdigest() != record.get("tensors_sha256"):
            raise CollectionError(f"the tensors of concept model {name!r} do not match its record "
                                  "(damaged or half-written); delete it and train again")
        tensors = load(data)
        vocab = ConceptVocabulary.from_dict(record["vocabulary"])
        packed = tensors.pop("context.train_concepts")
        train = np.unpackbits(packed, axis=1, count=vocab.n_concepts).astype(bool)
        visual = ConceptHeads({k[7:]: v for k, v in tensors.items() if k.startswith("visual.")},
                              record["visual_meta"])
        text = None
        if record.get("text_meta") is not None:
            from cbir.concepts.sentence_cnn import TextConceptHeads

            text = TextConceptHeads({k[5:]: v for k, v in tensors.items() if k.startswith("text.")},
                                    record["text_meta"])
        meta = {k: v for k, v in record.items()
                if k not in {"vocabulary", "visual_meta", "text_meta", "weights", "format",
                             "format_version", "tensors_file", "tensors_sha256"}}
        return cls(vocab, train, visual, text, record["weights"], meta)


def read_record(path: Path) -> dict[str, Any]:
    """The JSON record of a saved scene model, checked for format and version."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"no concept model {Path(path).stem!r} in {Path(path).parent}; "
                             "train one with `cbir concepts train`") from None
    except (OSError, ValueError) as e:
        raise CollectionError(f"concept model record {path} is unreadable ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CollectionError(f"{path} is not a cbir concept model")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CollectionError(f"concept model {path.stem!r} has format version {version!r}, newer than "
                              f"this cbir understands ({FORMAT_VERSION}); upgrade cbir")
    return raw


def train_scene_model(
    features: np.ndarray,
    concepts: Sequence[Sequence[str]],
    tags: Sequence[Sequence[str]] | None = None,
    *,
    name: str = "scenes",
    vectors: Any | None = None,
    min_count: int = 2,
    max_size: int = 4,
    min_support: int = 3,
    k_rc: int = K_RC,
    val_fraction: float = 0.15,
    fusion_queries: int = 200,
    hidden: int = 512,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    log: Log = _quiet,
    classifier_kw: dict[str, Any] | None = None,
) -> tuple[SceneModel, ScenePosteriors, np.ndarray]:
    """Train V, V*, the classifiers and the fusion weights from labelled images.

    features: ``(n, d)`` stored backbone features; concepts: n lists of concept names (the
    images' labels or cleaned keywords; images with none are left out); tags: n lists of
    free tags for the text branch, or None (visual only; also when fewer than
    :data:`MIN_TAGGED` fit images have a tag ``vectors`` knows). Returns the model and, for
    reports, the validation posteriors and validation concept matrix.
    """
    from cbir.concepts.classifiers import split_rows, train_visual_concepts

    t0 = time.perf_counter()
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != len(concepts):
        raise InvalidRequest(f"{len(concepts)} concept lists for features of shape {x.shape}")
    if tags is not None and len(tags) != len(concepts):
        raise InvalidRequest(f"{len(tags)} tag lists for {len(concepts)} images")
    labelled = np.array([len(c) > 0 for c in concepts])
    if labelled.sum() < MIN_IMAGES:
        raise InvalidRequest(f"only {int(labelled.sum())} images carry a concept; a scene model needs at "
                             f"least {MIN_IMAGES} (tag the images, or use --vocab folders)")
    rows = np.flatnonzero(labelled)
    if not 0 < val_fraction <= 0.5:
        raise InvalidRequest(f"val_fraction must be in (0, 0.5]; the fusion weights need validation images, "
                             f"got {val_fraction}")
    fit, val = split_rows(rows.size, val_fraction, seed)
    fit, val = rows[fit], rows[val]
    vocab = ConceptVocabulary.from_labels([concepts[i] for i in fit], min_count=min_count,
                                          max_size=max_size, min_support=min_support)
    if vocab.n_concepts < 2:
        raise InvalidRequest(f"fewer than 2 concepts occur in at least {min_count} training images; "
                             "add labelled images or lower --min-count")
    fit_m = vocab.encode([concepts[i] for i in fit])
    val_m = vocab.encode([concepts[i] for i in val])
    log(f"vocabulary: {vocab.n_concepts} concepts, {vocab.n_itemsets} concept sets in V* "
        f"(size <= {max_size}, support >= {min_support}); {fit.size} images to fit, {val.size} to "
        "validate the fusion")
    single_t = fit_m.astype(np.float32)
    multi_t = vocab.itemset_targets(fit_m).astype(np.float32)
    kw = {"hidden": hidden, "seed": seed, **(classifier_kw or {})}
    visual = train_visual_concepts(x[fit], single_t, multi_t, **kw)
    log(f"visual classifier trained ({time.perf_counter() - t0:.1f} s)")
    text = None
    vec_name = None
    if tags is not None and vectors is not None:
        known = np.array([any(vectors.known(t) for t in tags[i]) for i in fit])
        if known.sum() >= MIN_TAGGED:
            from cbir.concepts.sentence_cnn import train_text_concepts

            tr = fit[known]
            # sigmoid single-concept head: a tag list "desert, mountains" says both (issue 11)
            text = train_text_concepts([list(tags[i]) for i in tr], vectors, single_t[known],
                                       multi_t[known], seed=seed, single_loss="sigmoid")
            vec_name = getattr(vectors, "name", None)
            log(f"text classifier trained on {tr.size} tagged images ({time.perf_counter() - t0:.1f} s)")
        else:
            log(f"text branch skipped: only {int(known.sum())} training images have a known tag "
                f"(need {MIN_TAGGED})")
    info = {"name": name, "k_rc": int(k_rc), "min_count": min_count, "max_size": max_size,
            "min_support": min_support, "val_fraction": val_fraction, "seed": seed,
            "tag_vectors": vec_name, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_fit": int(fit.size), "n_val": int(val.size), "dim": int(x.shape[1]), **(meta or {})}
    uniform = [0.5, 0.5, 0.0, 0.0] if text is None else [0.25] * 4
    model = SceneModel(vocab, fit_m, visual, text, uniform, info)
    vpost = model.posteriors(x[val], None if text is None else [tags[i] for i in val], vectors)
    rng = np.random.default_rng(seed)
    qs = sample_queries(val_m, (1, 2, 3, 4), fusion_queries, rng)
    queries = [q for k in sorted(qs) for q in qs[k]]
    fitted = fit_fusion(model.scorer, vpost, val_m, queries)
    model = model.with_settings(weights=fitted["weights"], calibration=fitted["calibration"],
                                logodds=fitted["logodds"])
    model.meta["fusion"] = {k: v for k, v in fitted.items() if k not in ("weights", "calibration", "logodds")}
    model.meta["components"] = list(COMPONENTS)
    model.meta["train_seconds"] = round(time.perf_counter() - t0, 2)
    log("eq. 7 linear fusion weights " + ", ".join(f"{c} {w:.3f}" for c, w in
                                                   zip(COMPONENTS, model.weights, strict=True))
        + f" (from {fitted['queries']} validation queries; kept for the ablation"
        + (", searches use the log-odds fusion)" if model.logodds is not None else ")"))
    if model.logodds is not None:
        lo = model.logodds
        log("log-odds fusion: visual b {:.2f} w1 {:.2f} w2 {:.2f}".format(*lo.visual) + (
            "" if lo.joint is None
            else "; tagged b {:.2f} u_v {:.2f} u3 {:.2f} u4 {:.2f} missing-tag {:.2f}".format(*lo.joint)))
    return model, vpost, val_m
