"""Loaders for the benchmark datasets of the papers, with their evaluation protocols.

Every loader reads an *extracted* dataset (it never downloads, never reads pixels) and
returns a :class:`BenchmarkDataset`: one list of ``n`` image paths and, aligned with it,

* ``tags``: ``list[list[str]]`` — the weak supervision (user keywords / Flickr tags /
  machine tags); empty lists where a dataset has none;
* ``labels``: the relevance ground truth, ``(n,) int64`` class ids (single-label,
  relevant = same class) or ``(n, L) uint8`` 0/1 (multi-label, relevant = share at least
  one label), with ``label_names`` (``L`` or number-of-classes strings);
* ``split``: a :class:`BenchmarkSplit` of ``int64`` index arrays (sorted, into ``paths``)
  ``train`` / ``query`` / ``database`` following the protocol below;
* ``extra_labels``: other relevance conventions (e.g. Corel-5K keywords), selectable with
  :meth:`BenchmarkDataset.relabel`.

Protocols (``seed`` makes every random choice reproducible: ``numpy.random.default_rng``):

* **Corel-5K** (:func:`load_corel5k`, layout ``db/{train,test}/<id>.jpeg``,
  ``labels/{training_label,test_label,words}``): train = the 4,500 training images,
  query = the 499 test images, database = the 4,500 training images. Labels = Corel CD
  category ``id // 100`` (50 categories of 100 images, one of 99 since 4,999 images are
  published); tags = the 1-5 keywords; ``extra_labels["keywords"]`` = the (n, 374) keyword
  matrix for the second convention (relevant = share a keyword). No randomness.
* **CIFAR-10** (:func:`load_cifar10`, ``{train,test}/<class>/<n>.jpg``), the standard
  deep-hashing protocol: 1,000 queries (100 per class) drawn from the test set, 5,000
  training images (500 per class) drawn from the train set, database = every image that
  is not a query (59,000 images; the training images are in it, as in DPSH/DSDH). Pass
  ``database_excludes_train=True`` for the 54,000-image variant. Within each class
  (classes in name order, images in path order) the picks are
  ``rng.choice(..., replace=False)``: first the queries of every class, then the training
  images of every class. Tags are empty: add machine tags with :func:`with_machine_tags`.
* **Wang / Corel-1K** (:func:`load_wang`, ``dataset/<class>/<id>.jpg``): its standard
  protocol is leave-one-out over all 1,000 images
  (:func:`cbir.eval.protocols.leave_one_out_retrieval`). For methods that must be trained
  (hashing) this loader also gives a held-out split: 10 queries per class (100), seeded
  like CIFAR-10; database = train = the other 900. :func:`load_folder` does the same for
  any folder-per-class dataset (``<root>/<class>/<image>``).
* **MIRFLICKR-25K** (:func:`load_mirflickr25k`), published layout (``mirflickr25k.zip`` +
  ``mirflickr25k_annotations_v080.zip``)::

      <root>/mirflickr/im1.jpg ... im25000.jpg
      <root>/mirflickr/meta/tags/tags<N>.txt      one (cleaned, lower-case) tag a line
      <root>/mirflickr/doc/common_tags.txt        optional: "<tag> <count>" a line
      <root>/mirflickr25k_annotations_v080/<concept>.txt   1-based image numbers, one a line
                                                           (+ README.txt, ignored)

  The annotation folder holds 24 concepts plus 14 ``<concept>_r1`` "relevant" variants
  (38 files); ``concepts="all"`` (default, the 38 of the IDEA paper), ``"potential"``
  (the 24, the DCMH convention), ``"relevant"`` (the 14 ``_r1``) or a list. Tags are
  restricted to the vocabulary of tags carried by >= ``min_tag_count`` (20) images (the
  published 1,386 ``common_tags`` vocabulary; read from ``doc/common_tags.txt`` when
  present, else counted); images with no tag left or no label are dropped (IDEA: 20,015
  images). Split (IDEA): ``n_query`` 2,000 queries and ``n_train`` 16,000 training images
  drawn at random from the kept images; database = the training images
  (``database="train"``) or every kept non-query image (``database="rest"``).
* **NUS-WIDE** (:func:`load_nuswide`), published layout::

      <root>/ImageList/Imagelist.txt              one "C:\\ImageData\\Flickr\\<dir>\\<file>.jpg" a line
      <root>/NUS_WID_Tags/All_Tags.txt            "<photo id> tag tag ..." a line (same order)
        or <root>/NUS_WID_Tags/AllTags81.txt      81 0/1 columns a line (names: Concepts81.txt)
      <root>/Groundtruth/AllLabels/Labels_<concept>.txt   one 0/1 a line (same order)
      <root>/Flickr/<dir>/<file>.jpg              the images (``image_dir``)

  Relevance uses the ``top_concepts`` (21) most frequent concepts (ties by name; columns
  in name order) and keeps the images with at least one of them (about 195k). Split
  (IDEA): 20,000 queries and 100,000 training images at random from them; database = the
  training images (or ``database="rest"``). The weakly supervised hashing paper instead
  uses all 81 concepts, 5,000 random queries and the rest as database/training:
  ``top_concepts=None, require_labels=False, n_query=5000, n_train=None, database="rest"``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cbir.errors import InvalidRequest
from cbir.io.files import IMAGE_EXTENSIONS

__all__ = [
    "BENCHMARK_LOADERS",
    "BenchmarkDataset",
    "BenchmarkSplit",
    "load_benchmark",
    "load_cifar10",
    "load_corel5k",
    "load_folder",
    "load_mirflickr25k",
    "load_nuswide",
    "load_wang",
    "with_machine_tags",
]

Part = Literal["train", "query", "database"]
_PARTS = ("train", "query", "database")


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True, eq=False)
class BenchmarkSplit:
    """Index arrays of one protocol: each (m,) int64, sorted, into the dataset's paths.

    ``train`` and ``database`` may overlap (e.g. CIFAR-10, Corel-5K: the training images
    are part of the database); ``query`` never overlaps ``database``.
    """

    train: np.ndarray
    query: np.ndarray
    database: np.ndarray
    #: how the split was made (protocol, sizes, seed), for result logs
    description: str = ""

    def sizes(self) -> dict[str, int]:
        """{"train": m_train, "query": m_query, "database": m_database}."""
        return {p: int(len(getattr(self, p))) for p in _PARTS}


@dataclass(frozen=True, eq=False)
class BenchmarkDataset:
    """A benchmark's images with tags, relevance labels and protocol split.

    paths: n image Paths; tags: n lists of str (weak supervision, may be empty);
    labels: (n,) int64 class ids or (n, L) uint8 0/1 multi-label matrix (relevance ground
    truth); label_names: the class / label names (len = number of classes or L);
    extra_labels: other relevance conventions, name -> (labels, label_names);
    info: facts about the loaded data (counts, options, per-image id arrays) for logs.
    """

    name: str
    root: Path
    paths: list[Path]
    tags: list[list[str]]
    labels: np.ndarray
    label_names: list[str]
    split: BenchmarkSplit
    extra_labels: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multilabel(self) -> bool:
        """True when ``labels`` is an (n, L) 0/1 matrix (relevant = share >= 1 label)."""
        return self.labels.ndim == 2

    def indices(self, part: Part) -> np.ndarray:
        """(m,) int64 indices of ``part`` ("train", "query" or "database")."""
        if part not in _PARTS:
            raise InvalidRequest(f"unknown split part {part!r}; use one of {_PARTS}")
        return getattr(self.split, part)

    def paths_of(self, part: Part) -> list[Path]:
        """Image paths of ``part``, in index order."""
        return [self.paths[i] for i in self.indices(part)]

    def labels_of(self, part: Part) -> np.ndarray:
        """Labels of ``part``: (m,) int64 or (m, L) uint8."""
        return self.labels[self.indices(part)]

    def tags_of(self, part: Part) -> list[list[str]]:
        """Tags of ``part``, in index order."""
        return [self.tags[i] for i in self.indices(part)]

    def tag_vocabulary(self) -> list[str]:
        """Distinct tags, most frequent first (ties by name)."""
        counts = Counter(t for tags in self.tags for t in tags)
        return sorted(counts, key=lambda t: (-counts[t], t))

    def relabel(self, kind: str) -> BenchmarkDataset:
        """A copy whose ``labels`` / ``label_names`` are ``extra_labels[kind]``.

        The previous labels move to ``extra_labels[self.info["label_kind"]]`` so that the
        switch can be undone. E.g. ``corel.relabel("keywords")`` for the multi-label table.
        """
        if kind not in self.extra_labels:
            raise InvalidRequest(
                f"{self.name} has no {kind!r} labels; available: {sorted(self.extra_labels)}"
            )
        old_kind = str(self.info.get("label_kind", "labels"))
        extra = dict(self.extra_labels)
        labels, names = extra.pop(kind)
        extra[old_kind] = (self.labels, self.label_names)
        info = {**self.info, "label_kind": kind}
        return dataclasses.replace(
            self, labels=labels, label_names=list(names), extra_labels=extra, info=info
        )


def with_machine_tags(
    dataset: BenchmarkDataset,
    tags: Sequence[Sequence[str]] | Mapping[str, Sequence[str]],
    *,
    missing: Literal["error", "empty"] = "error",
) -> BenchmarkDataset:
    """A copy of ``dataset`` whose ``tags`` are ``tags`` (e.g. ImageNet top-5 machine tags).

    tags: n tag lists aligned with ``dataset.paths``, or a mapping keyed by the image path
    relative to ``dataset.root`` in POSIX form (``"train/cat/0001.jpg"``) or by the full
    path string. missing (mapping only): images absent from the mapping raise
    InvalidRequest (``"error"``) or get no tags (``"empty"``).
    ``info["tags"]`` becomes ``"machine"``.
    """
    n = len(dataset.paths)
    if isinstance(tags, Mapping):
        out: list[list[str]] = []
        absent: list[str] = []
        for p in dataset.paths:
            rel = _relative_key(p, dataset.root)
            found = tags.get(rel, tags.get(str(p)))
            if found is None:
                absent.append(rel)
                found = []
            out.append([str(t) for t in found])
        if absent and missing == "error":
            raise InvalidRequest(
                f"{len(absent)} of {n} images have no machine tags (first: {absent[0]!r}); "
                "keys must be paths relative to the dataset root, or pass missing='empty'"
            )
    else:
        if isinstance(tags, str | bytes) or len(tags) != n:
            raise InvalidRequest(f"tags must be {n} tag lists aligned with the dataset's paths")
        if any(isinstance(ts, str) for ts in tags):
            raise InvalidRequest("each image's tags must be a list of strings, not one string")
        out = [[str(t) for t in ts] for ts in tags]
    return dataclasses.replace(dataset, tags=out, info={**dataset.info, "tags": "machine"})


# --------------------------------------------------------------------------- helpers


def _relative_key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _natural_key(name: str) -> tuple[object, ...]:
    """Sort key ordering ``"2.jpg"`` before ``"10.jpg"``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _sorted_idx(a: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(a, dtype=np.int64).ravel())


def _read_lines(path: Path) -> list[str]:
    """Lines of a text file with CR/LF and surrounding spaces removed (blank lines kept)."""
    if not path.is_file():
        raise InvalidRequest(f"missing file {path}")
    with path.open("r", encoding="utf-8", errors="replace", newline=None) as f:
        return [line.strip() for line in f]


def _check_count(name: str, got: int, want: int) -> None:
    if got < want:
        raise InvalidRequest(f"{name}: need {want} images but only {got} are available")


def _per_class_pick(
    rng: np.random.Generator, labels: np.ndarray, pool: np.ndarray, per_class: int, what: str
) -> np.ndarray:
    """``per_class`` indices of each class (classes ascending) drawn from ``pool`` without replacement."""
    picked = []
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        _check_count(f"{what} of class {int(c)}", len(members), per_class)
        picked.append(rng.choice(members, size=per_class, replace=False))
    return _sorted_idx(np.concatenate(picked) if picked else [])


def _random_split(
    n: int, n_query: int, n_train: int | None, database: str, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, query, database): random queries, random training images among the rest."""
    if database not in ("train", "rest"):
        raise InvalidRequest(f"database must be 'train' or 'rest', got {database!r}")
    if n_query < 1:
        raise InvalidRequest(f"n_query must be >= 1, got {n_query}")
    rest_n = n - n_query
    _check_count(f"{name}: {n_query} queries", n, n_query + 1)
    nt = rest_n if n_train is None else int(n_train)
    if nt < 1:
        raise InvalidRequest(f"n_train must be >= 1 or None, got {n_train}")
    _check_count(f"{name}: {n_query} queries + {nt} training images", n, n_query + nt)
    perm = np.random.default_rng(seed).permutation(n)
    query = _sorted_idx(perm[:n_query])
    train = _sorted_idx(perm[n_query : n_query + nt])
    db = train if database == "train" else _sorted_idx(perm[n_query:])
    return train, query, db


def _vocabulary_filter(
    tags: list[list[str]], min_count: int | None, vocabulary: set[str] | None
) -> list[list[str]]:
    """Keep only tags in ``vocabulary`` (if given) or carried by >= min_count images."""
    if vocabulary is None:
        if min_count is None or min_count <= 1:
            return tags
        counts = Counter(t for ts in tags for t in set(ts))
        vocabulary = {t for t, c in counts.items() if c >= min_count}
    return [[t for t in ts if t in vocabulary] for ts in tags]


def _dedupe(tags: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(t for t in tags if t))


# --------------------------------------------------------------------------- Corel-5K


def _corel_label_file(path: Path, n_words: int) -> list[tuple[int, list[int]]]:
    rows = []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line:
            continue
        parts = line.split()
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise InvalidRequest(f"{path}:{lineno}: expected '<id> <word index> ...', got {line!r}") from None
        kw = ids[1:]
        if any(k < 1 or k > n_words for k in kw):
            raise InvalidRequest(f"{path}:{lineno}: keyword index out of 1..{n_words}: {line!r}")
        rows.append((ids[0], kw))
    return rows


def load_corel5k(root: Path, *, check_files: bool = True) -> BenchmarkDataset:
    """Corel-5K from its extracted tar (see the module docstring for layout and protocol).

    Images: the training images then the test images, each by ascending id.
    labels: (n,) int64 category index (categories = sorted distinct ``id // 100``; names
    are the ``id // 100`` numbers as strings); tags: the keywords (words, file order);
    extra_labels["keywords"]: (n, W) uint8 keyword matrix, W = 374 words.
    check_files: raise InvalidRequest when an image file is missing.
    """
    root = Path(root)
    if not (root / "labels").is_dir() and (root / "corel5k" / "labels").is_dir():
        root = root / "corel5k"
    words = [w for w in _read_lines(root / "labels" / "words") if w]
    if not words:
        raise InvalidRequest(f"{root / 'labels' / 'words'} is empty")
    parts: list[tuple[str, list[tuple[int, list[int]]]]] = [
        ("train", sorted(_corel_label_file(root / "labels" / "training_label", len(words)))),
        ("test", sorted(_corel_label_file(root / "labels" / "test_label", len(words)))),
    ]
    paths: list[Path] = []
    tags: list[list[str]] = []
    ids: list[int] = []
    rows: list[list[int]] = []
    for sub, entries in parts:
        for image_id, kw in entries:
            p = root / "db" / sub / f"{image_id}.jpeg"
            if check_files and not p.is_file():
                raise InvalidRequest(f"Corel-5K image {p} is listed in labels/ but missing")
            paths.append(p)
            ids.append(image_id)
            rows.append(kw)
            tags.append(_dedupe([words[k - 1] for k in kw]))
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"{root}: an image id appears twice in the label files")
    n_train = len(parts[0][1])
    cats = np.asarray(ids, dtype=np.int64) // 100
    cat_values, labels = np.unique(cats, return_inverse=True)
    keywords = np.zeros((len(ids), len(words)), dtype=np.uint8)
    for i, kw in enumerate(rows):
        keywords[i, np.asarray(kw, dtype=np.int64) - 1] = 1
    train = np.arange(n_train, dtype=np.int64)
    split = BenchmarkSplit(
        train=train,
        query=np.arange(n_train, len(ids), dtype=np.int64),
        database=train,
        description=f"Corel-5K: train = database = {n_train} training images, query = "
        f"{len(ids) - n_train} test images; relevant = same category (id // 100)",
    )
    return BenchmarkDataset(
        name="corel5k",
        root=root,
        paths=paths,
        tags=tags,
        labels=labels.astype(np.int64).ravel(),
        label_names=[str(int(c)) for c in cat_values],
        split=split,
        extra_labels={"keywords": (keywords, list(words))},
        info={
            "label_kind": "category",
            "tags": "keywords",
            "images": len(ids),
            "categories": len(cat_values),
            "words": len(words),
            "image_ids": np.asarray(ids, dtype=np.int64),
        },
    )


# --------------------------------------------------------------------------- CIFAR-10 / Wang


def _class_tree(base: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """``base/<class>/<image>`` (flat class folders): (paths, (n,) int64 labels, class names).

    Classes in name order, images in natural file-name order (``2.jpg`` before ``10.jpg``);
    hidden entries and non-image files skipped. One ``os.scandir`` per class (60,000 CIFAR
    files in well under a second).
    """
    if not base.is_dir():
        raise InvalidRequest(f"{base} is not a directory (expected <root>/<class>/<image>)")
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for d in sorted(
        (e for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name
    ):
        files = sorted(
            (
                e.name
                for e in os.scandir(d.path)
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                and e.is_file()
            ),
            key=_natural_key,
        )
        if not files:
            continue
        folder = base / d.name
        paths.extend(folder / f for f in files)
        labels.extend([len(names)] * len(files))
        names.append(d.name)
    if len(names) < 2:
        raise InvalidRequest(f"{base}: found {len(names)} class folder(s) with images; need at least 2")
    return paths, np.asarray(labels, dtype=np.int64), names


def load_cifar10(
    root: Path,
    *,
    queries_per_class: int = 100,
    train_per_class: int = 500,
    database_excludes_train: bool = False,
    seed: int = 0,
) -> BenchmarkDataset:
    """CIFAR-10 (JPEG tree ``{train,test}/<class>/<n>.jpg``), deep-hashing protocol.

    Images: the train set then the test set, classes in name order, files in natural name order.
    labels: (n,) int64 class index into label_names (class folder names). Split: see the
    module docstring (1,000 queries / 5,000 training / 59,000 database by default).
    Tags are empty: add them with :func:`with_machine_tags`.
    """
    root = Path(root)
    if not (root / "train").is_dir() and (root / "cifar10" / "train").is_dir():
        root = root / "cifar10"
    tr_paths, tr_labels, tr_names = _class_tree(root / "train")
    te_paths, te_labels, te_names = _class_tree(root / "test")
    if tr_names != te_names:
        raise InvalidRequest(f"{root}: train classes {tr_names} differ from test classes {te_names}")
    paths = list(tr_paths) + list(te_paths)
    labels = np.concatenate([tr_labels, te_labels]).astype(np.int64)
    n_tr = len(tr_paths)
    rng = np.random.default_rng(seed)
    query = _per_class_pick(rng, labels, np.arange(n_tr, len(paths)), queries_per_class, "test images")
    train = _per_class_pick(rng, labels, np.arange(n_tr), train_per_class, "train images")
    excluded = np.union1d(query, train) if database_excludes_train else query
    database = np.setdiff1d(np.arange(len(paths), dtype=np.int64), excluded)
    split = BenchmarkSplit(
        train=train,
        query=query,
        database=database,
        description=f"CIFAR-10 hashing protocol (seed {seed}): {len(query)} queries "
        f"({queries_per_class}/class) from test, {len(train)} training images "
        f"({train_per_class}/class) from train, database = {len(database)} other images"
        + (" (training images excluded)" if database_excludes_train else " (training images included)"),
    )
    return BenchmarkDataset(
        name="cifar10",
        root=root,
        paths=paths,
        tags=[[] for _ in paths],
        labels=labels,
        label_names=list(tr_names),
        split=split,
        info={"label_kind": "class", "tags": "none", "images": len(paths), "train_set": n_tr, "seed": seed},
    )


def load_wang(root: Path, *, queries_per_class: int = 10, seed: int = 0) -> BenchmarkDataset:
    """Wang / Corel-1K (``dataset/<class>/<id>.jpg``, 10 classes of 100).

    labels: (n,) int64 class index (class folder names, sorted). Split: ``queries_per_class``
    random queries per class (seeded, as for CIFAR-10), database = train = the rest. The
    standard Wang protocol (every image queries the other 999) needs no split: use all
    images with :func:`cbir.eval.protocols.leave_one_out_retrieval`.
    """
    root = Path(root)
    base = root / "dataset" if (root / "dataset").is_dir() else root
    paths, labels, names = _class_tree(base)
    rng = np.random.default_rng(seed)
    query = _per_class_pick(rng, labels, np.arange(len(paths)), queries_per_class, "images")
    rest = np.setdiff1d(np.arange(len(paths), dtype=np.int64), query)
    split = BenchmarkSplit(
        train=rest,
        query=query,
        database=rest,
        description=f"Wang held-out split (seed {seed}): {len(query)} queries ({queries_per_class}/class), "
        f"database = train = the other {len(rest)}",
    )
    return BenchmarkDataset(
        name="wang",
        root=base,
        paths=paths,
        tags=[[] for _ in paths],
        labels=labels,
        label_names=list(names),
        split=split,
        info={"label_kind": "class", "tags": "none", "images": len(paths), "seed": seed},
    )


def load_folder(root: Path, *, queries_per_class: int | None = None, seed: int = 0) -> BenchmarkDataset:
    """Any folder-per-class dataset (``root/<class>/<image>``), held out like Wang.

    labels: (n,) int64 class index (class folder names, sorted); at least 2 classes.
    Split: ``queries_per_class`` random queries per class (default: 10, or a fifth of the
    smallest class when that is fewer, at least 1), database = train = the rest. Tags are
    empty: add machine tags with :func:`with_machine_tags`. Wang's own layout
    (``dataset/<class>``) works too.
    """
    root = Path(root)
    base = root / "dataset" if (root / "dataset").is_dir() and not any(
        p.is_file() for p in (root / "dataset").iterdir()) else root
    paths, labels, names = _class_tree(base)
    smallest = int(np.bincount(labels).min())
    if queries_per_class is None:
        queries_per_class = max(1, min(10, smallest // 5))
    if smallest < queries_per_class + 1:
        raise InvalidRequest(f"{base}: every class needs more than {queries_per_class} image(s) "
                             f"(queries + the database); the smallest has {smallest}")
    ds = load_wang(base, queries_per_class=queries_per_class, seed=seed)
    what = ds.split.description.replace("Wang held-out split", f"{base}: held-out split")
    split = dataclasses.replace(ds.split, description=what)
    return dataclasses.replace(ds, name="folder", split=split,
                               info={**ds.info, "classes": len(names), "folder": str(base)})


# --------------------------------------------------------------------------- MIRFLICKR-25K

_MIR_IMAGE_RE = re.compile(r"^im(\d+)\.jpg$", re.IGNORECASE)


def _mir_concepts(files: list[Path], concepts: str | Sequence[str]) -> list[Path]:
    by_name = {f.stem: f for f in files}
    if isinstance(concepts, str):
        if concepts == "all":
            names = sorted(by_name)
        elif concepts == "potential":
            names = sorted(n for n in by_name if not n.endswith("_r1"))
        elif concepts == "relevant":
            names = sorted(n for n in by_name if n.endswith("_r1"))
        else:
            raise InvalidRequest(
                f"concepts must be 'all', 'potential', 'relevant' or a list, got {concepts!r}"
            )
    else:
        names = [str(c) for c in concepts]
        unknown = [c for c in names if c not in by_name]
        if unknown:
            raise InvalidRequest(f"unknown MIRFLICKR concepts {unknown}; available: {sorted(by_name)}")
    if not names:
        raise InvalidRequest(f"no annotation files selected by concepts={concepts!r}")
    return [by_name[c] for c in names]


def load_mirflickr25k(
    root: Path,
    *,
    annotations_dir: Path | None = None,
    concepts: str | Sequence[str] = "all",
    min_tag_count: int | None = 20,
    require_tags: bool = True,
    require_labels: bool = True,
    n_query: int = 2000,
    n_train: int | None = 16000,
    database: Literal["train", "rest"] = "train",
    seed: int = 0,
) -> BenchmarkDataset:
    """MIRFLICKR-25K in its published layout (see the module docstring).

    root: the folder holding ``mirflickr/`` (or ``mirflickr/`` itself).
    annotations_dir: default ``<root>/mirflickr25k_annotations_v080``, else
    ``<root>/mirflickr/annotations`` or ``<root>/annotations`` (the first that exists).
    min_tag_count: keep tags carried by >= this many images (None: keep every tag); the
    vocabulary comes from ``mirflickr/doc/common_tags.txt`` when that file exists.
    labels: (n, L) uint8 over the selected concepts (label_names, sorted); images in
    ascending image number; ``info["image_numbers"]`` the (n,) int64 1-based numbers.
    """
    root = Path(root)
    img_dir = root / "mirflickr" if (root / "mirflickr").is_dir() else root
    top = img_dir.parent if img_dir == root else root
    if annotations_dir is None:
        candidates = [top / "mirflickr25k_annotations_v080", img_dir / "annotations", top / "annotations"]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            raise InvalidRequest(f"MIRFLICKR annotations not found; tried {[str(c) for c in candidates]}")
        annotations_dir = found[0]
    annotations_dir = Path(annotations_dir)

    numbered = []
    for p in img_dir.iterdir() if img_dir.is_dir() else []:
        m = _MIR_IMAGE_RE.match(p.name)
        if m:
            numbered.append((int(m.group(1)), p))
    if not numbered:
        raise InvalidRequest(f"{img_dir}: no im<N>.jpg images (expected <root>/mirflickr/im1.jpg ...)")
    numbered.sort()
    numbers = np.asarray([k for k, _ in numbered], dtype=np.int64)
    paths = [p for _, p in numbered]
    row_of = {int(k): i for i, k in enumerate(numbers)}

    tag_dir = img_dir / "meta" / "tags"
    tags: list[list[str]] = []
    for k in numbers:
        f = tag_dir / f"tags{int(k)}.txt"
        tags.append(_dedupe(_read_lines(f)) if f.is_file() else [])
    vocabulary = None
    common = img_dir / "doc" / "common_tags.txt"
    if min_tag_count is not None and common.is_file():
        vocabulary = set()
        for line in _read_lines(common):
            parts = line.split()
            if len(parts) >= 2 and parts[-1].isdigit() and int(parts[-1]) >= min_tag_count:
                vocabulary.add(" ".join(parts[:-1]))
    tags = _vocabulary_filter(tags, min_tag_count, vocabulary)

    files = sorted(
        (f for f in annotations_dir.glob("*.txt") if f.stem.lower() != "readme"), key=lambda f: f.stem
    )
    if not files:
        raise InvalidRequest(f"{annotations_dir}: no <concept>.txt annotation files")
    chosen = _mir_concepts(files, concepts)
    labels = np.zeros((len(paths), len(chosen)), dtype=np.uint8)
    for j, f in enumerate(chosen):
        for line in _read_lines(f):
            if line:
                if not line.isdigit():
                    raise InvalidRequest(f"{f}: expected image numbers, one a line; got {line!r}")
                i = row_of.get(int(line))
                if i is not None:
                    labels[i, j] = 1

    keep = np.ones(len(paths), dtype=bool)
    if require_tags:
        keep &= np.asarray([len(t) > 0 for t in tags], dtype=bool)
    if require_labels:
        keep &= labels.any(axis=1)
    kept = np.flatnonzero(keep)
    paths = [paths[i] for i in kept]
    tags = [tags[i] for i in kept]
    labels = labels[kept]
    numbers = numbers[kept]

    train, query, db = _random_split(len(paths), n_query, n_train, database, seed, "MIRFLICKR-25K")
    split = BenchmarkSplit(
        train=train,
        query=query,
        database=db,
        description=f"MIRFLICKR-25K (seed {seed}): {len(paths)} images kept, {len(query)} random queries, "
        f"{len(train)} training images, database = {database} ({len(db)})",
    )
    return BenchmarkDataset(
        name="mirflickr25k",
        root=top,
        paths=paths,
        tags=tags,
        labels=labels,
        label_names=[f.stem for f in chosen],
        split=split,
        info={
            "label_kind": "concepts",
            "tags": "flickr",
            "images": len(paths),
            "images_found": len(numbered),
            "tag_vocabulary": "common_tags.txt"
            if vocabulary is not None
            else f"min_tag_count={min_tag_count}",
            "image_numbers": numbers,
            "seed": seed,
        },
    )


# --------------------------------------------------------------------------- NUS-WIDE

_NUS_ID_RE = re.compile(r"_(\d+)\.\w+$")


def _nus_image_relpath(line: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg`` -> ``actor/0001_2124494179.jpg``."""
    parts = [p for p in re.split(r"[\\/]", line) if p]
    return "/".join(parts[-2:])


def _nus_concepts81(root: Path, fallback: list[str]) -> list[str]:
    for c in (
        root / "ConceptsList" / "Concepts81.txt",
        root / "Concepts81.txt",
        root / "NUS_WID_Tags" / "Concepts81.txt",
    ):
        if c.is_file():
            return [w for w in _read_lines(c) if w]
    return fallback


def _nus_tags(
    root: Path, rel: list[str], concept_names: list[str], source: str
) -> tuple[list[list[str]], str]:
    n = len(rel)
    tag_dir = root / "NUS_WID_Tags"
    all_tags, tags81 = tag_dir / "All_Tags.txt", tag_dir / "AllTags81.txt"
    if source not in ("auto", "all_tags", "tags81"):
        raise InvalidRequest(f"tags_source must be 'auto', 'all_tags' or 'tags81', got {source!r}")
    if source == "all_tags" or (source == "auto" and all_tags.is_file()):
        lines = [line for line in _read_lines(all_tags) if line]
        if len(lines) != n:
            raise InvalidRequest(f"{all_tags} has {len(lines)} lines but Imagelist.txt lists {n} images")
        tags = []
        for i, line in enumerate(lines):
            photo_id, *words = line.split()
            m = _NUS_ID_RE.search(rel[i])
            if m and photo_id.isdigit() and int(m.group(1)) != int(photo_id):
                raise InvalidRequest(
                    f"{all_tags} line {i + 1} is photo {photo_id} but Imagelist.txt line {i + 1} "
                    f"is {rel[i]}; the files are not aligned"
                )
            tags.append(_dedupe(words))
        return tags, "All_Tags.txt"
    if source == "tags81" or (source == "auto" and tags81.is_file()):
        names = _nus_concepts81(root, concept_names)
        lines = [line for line in _read_lines(tags81) if line]
        if len(lines) != n:
            raise InvalidRequest(f"{tags81} has {len(lines)} lines but Imagelist.txt lists {n} images")
        tags = []
        for i, line in enumerate(lines):
            vals = line.split()
            if len(vals) != len(names):
                raise InvalidRequest(f"{tags81} line {i + 1}: {len(vals)} columns, expected {len(names)}")
            tags.append([w for w, v in zip(names, vals, strict=True) if v == "1"])
        return tags, "AllTags81.txt"
    return [[] for _ in range(n)], "none"


def load_nuswide(
    root: Path,
    *,
    image_dir: Path | None = None,
    top_concepts: int | None = 21,
    concepts: Sequence[str] | None = None,
    require_labels: bool = True,
    require_tags: bool = False,
    tags_source: Literal["auto", "all_tags", "tags81"] = "auto",
    min_tag_count: int | None = None,
    missing: Literal["error", "drop"] = "error",
    n_query: int = 20000,
    n_train: int | None = 100000,
    database: Literal["train", "rest"] = "train",
    seed: int = 0,
) -> BenchmarkDataset:
    """NUS-WIDE in its published layout (see the module docstring).

    image_dir: folder of the ``<dir>/<file>.jpg`` images (default ``<root>/Flickr``).
    top_concepts: keep the k most frequent ground-truth concepts (None: all); or name them
    with ``concepts``. require_labels: drop images with none of the kept concepts.
    tags_source: ``All_Tags.txt`` (raw tags, preferred by "auto") or ``AllTags81.txt``.
    min_tag_count: drop tags carried by fewer images (None: keep all).
    missing: an image file listed but absent raises (``"error"``) or is dropped.
    labels: (n, L) uint8 (label_names in name order); ``info["list_index"]`` gives each
    image's 0-based line in Imagelist.txt.
    """
    root = Path(root)
    image_dir = Path(image_dir) if image_dir is not None else root / "Flickr"
    rel = [_nus_image_relpath(line) for line in _read_lines(root / "ImageList" / "Imagelist.txt") if line]
    n = len(rel)
    if n == 0:
        raise InvalidRequest(f"{root / 'ImageList' / 'Imagelist.txt'} lists no image")

    gt_dir = root / "Groundtruth" / "AllLabels"
    files = sorted(gt_dir.glob("Labels_*.txt")) if gt_dir.is_dir() else []
    if not files:
        raise InvalidRequest(f"{gt_dir}: no Labels_<concept>.txt files")
    all_names = [f.stem[len("Labels_") :] for f in files]
    all_labels = np.zeros((n, len(files)), dtype=np.uint8)
    for j, f in enumerate(files):
        vals = f.read_bytes().split()  # one 0/1 a line; 269,648 lines per file in the real data
        if len(vals) != n:
            raise InvalidRequest(f"{f} has {len(vals)} lines but Imagelist.txt lists {n} images")
        all_labels[:, j] = np.asarray(vals) == b"1"

    if concepts is not None:
        unknown = [c for c in concepts if c not in all_names]
        if unknown:
            raise InvalidRequest(f"unknown NUS-WIDE concepts {unknown}; available: {all_names}")
        names = sorted(set(concepts))
    elif top_concepts is not None:
        if not 1 <= top_concepts <= len(all_names):
            raise InvalidRequest(f"top_concepts must be in 1..{len(all_names)}, got {top_concepts}")
        counts = all_labels.sum(axis=0, dtype=np.int64)
        ranked = sorted(range(len(all_names)), key=lambda j: (-int(counts[j]), all_names[j]))
        names = sorted(all_names[j] for j in ranked[:top_concepts])
    else:
        names = list(all_names)
    labels = all_labels[:, [all_names.index(c) for c in names]]

    tags, tag_file = _nus_tags(root, rel, all_names, tags_source)
    tags = _vocabulary_filter(tags, min_tag_count, None)

    keep = np.ones(n, dtype=bool)
    if require_labels:
        keep &= labels.any(axis=1)
    if require_tags:
        keep &= np.asarray([len(t) > 0 for t in tags], dtype=bool)
    paths_all = [image_dir / r for r in rel]
    absent = [i for i in np.flatnonzero(keep) if not paths_all[i].is_file()]
    if absent and missing == "error":
        raise InvalidRequest(
            f"{len(absent)} NUS-WIDE images are missing under {image_dir} (first: {paths_all[absent[0]]}); "
            "pass missing='drop' to leave them out"
        )
    keep[absent] = False
    kept = np.flatnonzero(keep)

    paths = [paths_all[i] for i in kept]
    tags = [tags[i] for i in kept]
    labels = labels[kept]
    train, query, db = _random_split(len(paths), n_query, n_train, database, seed, "NUS-WIDE")
    split = BenchmarkSplit(
        train=train,
        query=query,
        database=db,
        description=f"NUS-WIDE (seed {seed}): {len(names)} concepts, {len(paths)} images kept, "
        f"{len(query)} random queries, {len(train)} training images, database = {database} ({len(db)})",
    )
    return BenchmarkDataset(
        name="nuswide",
        root=root,
        paths=paths,
        tags=tags,
        labels=labels,
        label_names=names,
        split=split,
        info={
            "label_kind": "concepts",
            "tags": tag_file,
            "images": len(paths),
            "images_listed": n,
            "images_missing": len(absent),
            "list_index": kept.astype(np.int64),
            "seed": seed,
        },
    )


# --------------------------------------------------------------------------- registry

BENCHMARK_LOADERS = {
    "corel5k": load_corel5k,
    "cifar10": load_cifar10,
    "wang": load_wang,
    "folder": load_folder,
    "mirflickr25k": load_mirflickr25k,
    "nuswide": load_nuswide,
}


def load_benchmark(name: str, root: Path, **options: object) -> BenchmarkDataset:
    """Load benchmark ``name`` (a key of BENCHMARK_LOADERS) from ``root`` with its options."""
    try:
        loader = BENCHMARK_LOADERS[name]
    except KeyError:
        raise InvalidRequest(f"unknown benchmark {name!r}; known: {sorted(BENCHMARK_LOADERS)}") from None
    return loader(Path(root), **options)  # type: ignore[operator]
