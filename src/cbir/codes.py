"""Learned binary codes of a collection: train a hasher, store its codes, search in Hamming space.

```
<collection>/hashers/<name>/g<N>.safetensors  generation N of the trained hasher (weights + JSON)
catalog table ``hashers``                      per name: the current generation, bits, file sha256
catalog table ``codes``                        one packed uint8 code per (hasher, image), with the
                                               generation of the hasher that made it
<collection>/hashers/<name>/g<N>.milvus        on a Milvus collection (``--index-type milvus``):
                                               the codes' Milvus binary index (URI, collection, ids)
```

Re-training writes the new hasher under a new generation's file name (nobody reads it yet),
encodes, then replaces the codes and the current generation in ONE catalog transaction;
the old generation's file is removed after that commit. A kill at any point leaves the old
hasher and codes or the new ones, never a mix; :func:`code_problems` (used by ``cbir
verify`` and before every Hamming search) names a mismatch if one ever exists. Hashers
saved by older versions (``hashers/<name>.safetensors``, codes of generation 0) still load.

Codes of images indexed after training are computed on the next search (from the
stored features, so no image is decoded again); codes of removed images go with them.
When the collection's vector index is Milvus (``cbir index --index-type milvus``), the codes
also go to a Milvus BINARY_VECTOR field searched with the HAMMING metric (the binary index
backend ``milvus``, :mod:`cbir.hashing.milvus_binary`): built by ``cbir hash train``, kept in
step with the catalog by id set difference before each search (under the writer lock; when
another writer holds it, or the collection is read-only, that one search runs in memory with
``binary-flat`` instead: the same exact results), dropped with the generation or the hasher.
Otherwise the Hamming search runs in memory (``binary-flat``), as before. Either way the hits
are re-scored with the stored float features the same way.

Weak supervision comes from the images' user tags, or, for images without any, from
the backbone's own ImageNet labels ("machine tags"), as the hashing issue asks.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import MILVUS_COLLECTION_KEY, Collection
from cbir.errors import IndexMismatch, InvalidRequest
from cbir.search import Hit, Query, build_hits

#: hashers whose fit() learns from tags, and the ones that need region features
TAG_METHODS = {"wdht", "ws-dsh", "ws-hashnet", "idea", "idea-l", "idea-a"}
REGION_METHODS = {"idea", "idea-l", "idea-a"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hashers_dir(col: Collection) -> Path:
    return col.directory / "hashers"


def hasher_path(col: Collection, name: str) -> Path:
    if not _NAME.match(name):
        raise InvalidRequest(f"hasher name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return hashers_dir(col) / f"{name}.safetensors"


def generation_path(col: Collection, name: str, generation: int) -> Path:
    """The file of generation ``generation`` (>= 1) of hasher ``name``."""
    hasher_path(col, name)  # validates the name
    return hashers_dir(col) / name / f"g{int(generation)}.safetensors"


@dataclass
class CurrentHasher:
    """Which file holds hasher ``name`` now, and what its codes must match."""

    name: str
    path: Path
    #: 0 for a hasher saved by an older cbir (one file, no record)
    generation: int
    #: None when unrecorded (an older cbir's hasher): read from the file
    bits: int | None = None
    sha256: str | None = None


def current(col: Collection, name: str) -> CurrentHasher | None:
    """The current generation of hasher ``name`` (None if there is no such hasher)."""
    legacy = hasher_path(col, name)
    rec = col.catalog.hasher_record(name)
    if rec is not None:
        return CurrentHasher(name, generation_path(col, name, rec["generation"]), rec["generation"],
                             rec["bits"], rec["sha256"])
    if legacy.is_file():
        return CurrentHasher(name, legacy, 0)
    return None


def current_hasher_file(col: Collection, name: str) -> Path:
    """The file the codes of ``name`` were made with (InvalidRequest if there is none)."""
    cur = current(col, name)
    if cur is None:
        raise InvalidRequest(f"no hash codes named {name!r}")
    return cur.path


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _names(col: Collection) -> list[str]:
    found = {p.stem for p in hashers_dir(col).glob("*.safetensors") if p.is_file()}
    found |= {p.name for p in hashers_dir(col).glob("*") if p.is_dir()}
    found |= set(col.catalog.hasher_names())
    return sorted(n for n in found if _NAME.match(n))


def code_problems(col: Collection, name: str) -> list[str]:
    """Why the stored codes of ``name`` do not match its current hasher file ([] if they do).

    Checks: a current hasher file exists, is readable, has the recorded sha256 and bits;
    every code was made by the current generation and is ceil(bits/8) bytes long.
    """
    from cbir.hashing.base import code_size, read_hasher_header

    cur = current(col, name)
    summary = col.catalog.codes_summary(name)
    what = f"hash codes {name!r}:"
    if cur is None:
        n = sum(c for _, _, c in summary)
        return [f"{what} {n} stored codes but no hasher (no record, no file); "
                f"delete them with `cbir hash delete {name}`"] if n else []
    rel = cur.path.relative_to(col.directory)
    try:
        head = read_hasher_header(cur.path)
    except Exception as e:  # noqa: BLE001 — a problem to report, whatever it is
        return [f"{what} hasher file {rel} of generation {cur.generation} cannot be read ("
                + str(e).replace("\n", " ") + ")"]
    problems = []
    bits = head.get("bits")
    if cur.sha256 is not None and _sha256_file(cur.path) != cur.sha256:
        problems.append(f"{what} hasher file {rel} does not have the sha256 recorded with the "
                        f"codes of generation {cur.generation} (replaced or damaged)")
    if cur.bits is not None and bits != cur.bits:
        problems.append(f"{what} hasher file {rel} makes {bits}-bit codes, the record says "
                        f"{cur.bits}")
    total = sum(c for _, _, c in summary)
    stale = {g: 0 for g, _, _ in summary if g != cur.generation}
    for g, _, c in summary:
        if g in stale:
            stale[g] += c
    if stale:
        problems.append(f"{what} {sum(stale.values())} of {total} codes were made by hasher "
                        f"generation(s) {sorted(stale)}, not the current generation {cur.generation}")
    if isinstance(bits, int):
        want = code_size(bits)
        wrong = {ln: 0 for _, ln, _ in summary if ln != want}
        for _, ln, c in summary:
            if ln in wrong:
                wrong[ln] += c
        if wrong:
            problems.append(f"{what} {sum(wrong.values())} of {total} codes are "
                            f"{'/'.join(map(str, sorted(wrong)))} byte(s) long, not {want} "
                            f"({bits} bits)")
    return problems


def check_codes(col: Collection, name: str) -> None:
    """Raise a one-line IndexMismatch if the codes of ``name`` do not match their hasher."""
    problems = code_problems(col, name)
    if problems:
        raise IndexMismatch(f"the stored codes of {name!r} do not match their hasher ("
                            + problems[0].split(": ", 1)[-1] + f"); see `cbir verify`, and train "
                            f"them again with `cbir hash train --name {name} ...`")


def verify_codes(col: Collection) -> tuple[list[str], list[str]]:
    """(problems, notes) of every hasher of the collection, for ``cbir verify``."""
    problems: list[str] = []
    notes: list[str] = []
    for name in _names(col):
        problems += code_problems(col, name)
        cur = current(col, name)
        stale = [p.name for p in _stale_files(col, name, None if cur is None else cur.path)]
        if stale:
            notes.append(f"hash codes {name!r}: {len(stale)} unused hasher file(s) left by an "
                         f"interrupted `cbir hash train` (harmless; the next training removes "
                         f"them): {', '.join(stale[:5])}")
    return problems, notes


def _stale_files(col: Collection, name: str, keep: Path | None) -> list[Path]:
    """Hasher files of ``name`` that are not the current one."""
    files = sorted((hashers_dir(col) / name).glob("g*.safetensors"))
    legacy = hasher_path(col, name)
    if legacy.is_file():
        files.append(legacy)
    return [p for p in files if p != keep]


def list_hashers(col: Collection) -> list[dict[str, Any]]:
    from cbir.hashing.base import read_hasher_header

    out = []
    for name in _names(col):
        cur = current(col, name)
        n = sum(c for _, _, c in col.catalog.codes_summary(name))
        if cur is None:
            out.append({"name": name, "images_with_codes": n, "error": "no hasher file"})
            continue
        try:
            head = read_hasher_header(cur.path)
        except Exception as e:  # noqa: BLE001 — list what can be read, flag the rest
            out.append({"name": name, "error": str(e)})
            continue
        row = {"name": name, "method": head.get("name"), "bits": head.get("bits"),
               "images_with_codes": n, "file_bytes": cur.path.stat().st_size,
               "generation": cur.generation, **codes_location(col, name, cur.generation)}
        problems = code_problems(col, name)
        if problems:
            row["error"] = "; ".join(problems)
        out.append(row)
    return out


def machine_tags(labels: list[tuple[str, float]], min_prob: float = 0.05) -> list[str]:
    """An image's ImageNet top-5 label names with probability >= min_prob, as tags."""
    return [name for name, prob in labels if prob >= min_prob]


def collection_tags(col: Collection, ids: np.ndarray, source: str = "auto") -> list[list[str]]:
    """Cleaned tags per id: ``user`` tags, ``machine`` tags, or ``auto`` (user, else machine)."""
    return collection_tag_sources(col, ids, source)[0]


def collection_tag_sources(col: Collection, ids: np.ndarray, source: str = "auto"
                           ) -> tuple[list[list[str]], np.ndarray]:
    """(:func:`collection_tags`, (n,) bool: True where an image's tags are machine tags)."""
    from cbir.concepts.tags import clean_tags

    if source not in {"auto", "user", "machine"}:
        raise InvalidRequest(f"tag source must be auto, user or machine; got {source!r}")
    recs = col.catalog.records(ids)
    out = []
    machine = np.zeros(len(ids), dtype=bool)
    for k, i in enumerate(ids):
        rec = recs[int(i)]
        user = clean_tags(rec.tags) if source != "machine" else []
        if not user and source != "user":
            user = clean_tags(machine_tags(rec.labels))
            machine[k] = True
        out.append(user)
    return out, machine


def stored_regions(col: Collection, ids: np.ndarray) -> np.ndarray:
    """(n, 49, c) float16 region features of ``ids``; a clear error if any were not stored."""
    found = col.catalog.regions(ids)
    missing = [int(i) for i in ids if int(i) not in found]
    if missing:
        raise InvalidRequest(
            f"{len(missing)} of {len(ids)} images have no stored region features; re-index with "
            "`cbir index FOLDER --regions` (this method learns from 7x7 region features)")
    return np.stack([found[int(i)] for i in ids])


@dataclass
class TrainedCodes:
    name: str
    method: str
    bits: int
    images: int
    seconds: float
    #: distinct codes and bit balance (:class:`cbir.hashing.supervision.CodeStats`)
    codes: dict[str, Any] | None = None
    #: what the tags say against the features (weak methods and auto; else None)
    supervision: dict[str, Any] | None = None
    #: with method "auto": {"method": the one trained, "reason": why}
    choice: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "bits": self.bits, "images": self.images,
                "seconds": round(self.seconds, 2), "codes": self.codes,
                "supervision": self.supervision, "choice": self.choice, "warnings": self.warnings}


def train(col: Collection, method: str, bits: int, *, name: str | None = None,
          tag_source: str = "auto", vectors: str = "glove",
          progress: Callable[[str], None] | None = None,
          warn: Callable[[str], None] | None = None, weak: str = "wdht",
          **params: Any) -> TrainedCodes:
    """Fit ``method`` on the collection's stored features (and tags), save it, store all codes.

    ``method="auto"``: measure what the tags say against the features
    (:func:`cbir.hashing.supervision.measure_supervision`) and train ITQ when they carry
    less than the features, else the weakly supervised ``weak`` (default wdht); the choice
    and why are in ``TrainedCodes.choice``, and the default name is the chosen method's. A
    weak method is measured the same way before it trains, and ``warn`` is called when its
    tags carry less than the features; after training, ``warn`` is called when the codes
    collapsed (:func:`cbir.hashing.supervision.code_stats`). Warnings are also returned.
    """
    from cbir.hashing import HASHERS, check_bits, create_hasher
    from cbir.hashing.supervision import (
        choose_method,
        code_stats,
        measure_supervision,
        supervision_warning,
    )

    bits = check_bits(bits)
    auto = method == "auto"
    for m in ([weak] if auto else [method]):
        if m not in HASHERS:
            raise InvalidRequest(f"unknown hashing method {m!r}; choose one of: auto, "
                                 + ", ".join(HASHERS.names()))
    if auto and weak not in TAG_METHODS:
        raise InvalidRequest(f"--weak must be a weakly supervised method ({', '.join(sorted(TAG_METHODS))}); "
                             f"got {weak!r}")
    if name is not None:
        hasher_path(col, name)  # a bad name fails before any work
    if auto or method in TAG_METHODS:  # the weak methods train with torch on tag vectors
        from cbir import extras

        what = f"--method auto (it may train {weak!r})" if auto else f"hashing method {method!r}"
        extras.require(what, "train", ["torch"])
        extras.require_vectors(what, vectors)
    t0 = time.perf_counter()
    ids, feats = col.catalog.features()
    if len(ids) < 2:
        raise InvalidRequest("the collection needs at least 2 indexed images to learn codes")
    warnings_: list[str] = []

    def _warn(message: str) -> None:
        warnings_.append(message)
        if warn:
            warn(message)

    sup: dict[str, Any] = {}
    report = None
    choice = None
    if auto or method in TAG_METHODS:
        from cbir.concepts.tag_vectors import create_tag_vectors

        tags, machine = collection_tag_sources(col, ids, tag_source)
        if not any(tags) and not auto:
            raise InvalidRequest("no image has tags to learn from; add sidecar tags or use "
                                 "--tags machine (ImageNet labels) or an unsupervised method")
        tag_vectors = create_tag_vectors(vectors, corpus=tags) if any(tags) else None
        if tag_vectors is not None:
            if progress:
                progress(f"measuring what the tags say against the features ({len(ids)} images)")
            report = measure_supervision(feats, tags, tag_vectors, machine=machine,
                                         seed=params.get("seed", 0))
        if auto:
            if report is None:
                method, why = "itq", "itq, because no image has tags: there is nothing to learn from"
            else:
                method, why = choose_method(report, weak)
            choice = {"method": method, "reason": why}
            if progress:
                progress(f"auto: {why}")
        elif report is not None:
            message = supervision_warning(report, method)
            if message:
                _warn(message)
        if method in TAG_METHODS:
            sup["tags"] = tags
            sup["tag_vectors"] = tag_vectors
    name = name or f"{method}-{bits}"
    hasher_path(col, name)
    if method in REGION_METHODS:
        sup["regions"] = stored_regions(col, ids)
    if progress:
        progress(f"training {method} ({bits} bits) on {len(ids)} images")
    hasher = create_hasher(method, bits, **params).fit(feats, **sup)
    with col.writer_lock():
        old = current(col, name)
        generation = (0 if old is None else old.generation) + 1
        path = generation_path(col, name, generation)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # staged under a new name: nothing reads it until the commit below makes it current
            hasher.save(path)
            codes = _encode(hasher, method, feats, sup.get("regions"))
            col.catalog.replace_codes(name, ids, codes, generation=generation, bits=hasher.bits,
                                      sha256=_sha256_file(path))
        except Exception:  # not committed: the old generation stays, this one's file goes
            path.unlink(missing_ok=True)
            raise
        for stale in _stale_files(col, name, keep=path):  # the old generation, killed runs' files
            stale.unlink(missing_ok=True)
        if uses_milvus(col):
            try:
                _milvus_codes(col, name, generation, hasher.bits, ids, codes, locked=True)
            except Exception as e:  # noqa: BLE001 — the codes are committed; the next search retries
                _warn(f"{name}: codes stored, but not put into Milvus ({type(e).__name__}: {e}); "
                      "the next `cbir search --codes` does it")
    stats = code_stats(codes, hasher.bits)
    if stats.warning:
        _warn(f"{name}: {stats.warning}")
    return TrainedCodes(name, method, bits, len(ids), time.perf_counter() - t0,
                        codes=stats.as_dict(),
                        supervision=None if report is None else report.as_dict(),
                        choice=choice, warnings=warnings_)


def _encode(hasher: Any, method: str, feats: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
    if method in REGION_METHODS:
        return hasher.encode(feats, regions=regions)
    return hasher.encode(feats)


def load(col: Collection, name: str) -> Any:
    """The current hasher of ``name``."""
    return _load_current(col, name)[0]


def _load_current(col: Collection, name: str) -> tuple[Any, CurrentHasher]:
    from cbir.hashing import load_hasher

    for _ in range(3):  # a re-training may replace the file between the look-up and the read
        cur = current(col, name)
        if cur is None:
            known = ", ".join(_names(col)) or "none yet"
            raise InvalidRequest(f"no hash codes named {name!r} in this collection (trained: "
                                 f"{known}); train them with `cbir hash train`")
        try:
            return load_hasher(cur.path), cur
        except InvalidRequest:
            if cur.path.exists() or current(col, name) == cur:
                break
    check_codes(col, name)  # names what is wrong
    raise IndexMismatch(f"the hasher file of {name!r} is missing; see `cbir verify`")


def delete(col: Collection, name: str) -> int:
    """Delete hasher ``name``: its codes and record in one commit, then its files.

    Returns how many codes were deleted. Call it holding the writer lock.
    """
    if current(col, name) is None and not col.catalog.codes_summary(name):
        raise InvalidRequest(f"no codes named {name!r}")
    n = col.catalog.drop_codes(name)
    for stub in sorted((hashers_dir(col) / name).glob(f"g*{MILVUS_SUFFIX}")):
        _drop_milvus_stub(stub)
    hasher_path(col, name).unlink(missing_ok=True)
    shutil.rmtree(hashers_dir(col) / name, ignore_errors=True)
    return n


def sync_codes(col: Collection, name: str, hasher: Any, generation: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Encode images indexed since training; returns all (ids, codes).

    ``generation``: the hasher generation ``hasher`` is (default: the current one). Codes
    that do not match it raise IndexMismatch instead of being searched.
    """
    if generation is None:
        cur = current(col, name)
        generation = 0 if cur is None else cur.generation
    check_codes(col, name)
    missing = col.catalog.ids_without_codes(name)
    if len(missing):
        method = getattr(hasher, "name", "")
        ids, feats = col.catalog.features(missing)
        regions = stored_regions(col, ids) if method in REGION_METHODS else None
        col.catalog.put_codes(name, ids, _encode(hasher, method, feats, regions),
                              generation=generation)
    # only this generation's codes: a re-training committed meanwhile is not mixed in
    return col.catalog.codes(name, generation=generation)


def hamming_search(col: Collection, name: str, query: Query, *, k: int = 10, rerank: int = 0,
                   query_regions: np.ndarray | None = None, min_similarity: float = 0.0
                   ) -> list[Hit]:
    """Top-k by Hamming distance; with ``rerank`` N, the N nearest codes re-scored by cosine."""
    from cbir.hashing import create_binary_index
    from cbir.index.base import check_k

    k = check_k(k)
    if isinstance(rerank, bool) or not isinstance(rerank, int | np.integer) or rerank < 0:
        raise InvalidRequest(f"rerank must be 0 or a positive integer; got {rerank!r}")

    hasher, cur = _load_current(col, name)
    method = getattr(hasher, "name", "")
    if method in REGION_METHODS and query_regions is None:
        raise InvalidRequest(f"{name} needs the query's region features")
    ids, codes = sync_codes(col, name, hasher, cur.generation)
    if len(ids) == 0:
        return []
    q = query.vector[None, :].astype(np.float32)
    qcode = hasher.encode(q, regions=query_regions) if method in REGION_METHODS else hasher.encode(q)
    index = _milvus_codes(col, name, cur.generation, hasher.bits, ids, codes) if uses_milvus(col) \
        else None
    if index is None:
        index = create_binary_index("binary-flat", hasher.bits)
        index.add(ids, codes)
    want = min(max(k, rerank) + len(query.exclude), len(ids))  # never more than there are
    dist, got = index.search(qcode, want)
    pairs = [(int(d), int(i)) for d, i in zip(dist[0], got[0], strict=True)
             if i >= 0 and int(i) not in query.exclude]
    # the stored float features give every hit its cosine, and the re-ranking its order
    order_ids, feats = col.catalog.features([i for _, i in pairs])
    cos = {int(i): float(f @ query.vector) for i, f in zip(order_ids, feats, strict=True)}
    if rerank:
        pairs = sorted(pairs[:rerank], key=lambda p: -cos.get(p[1], -2.0))
    return build_hits(col, [(i, cos[i], ham) for ham, i in pairs if i in cos], k=k,
                      min_similarity=min_similarity)



# ----------------------------------------------------------------------------- Milvus

MILVUS_SUFFIX = ".milvus"
#: per process: the last loaded Milvus binary index per stub file, with the file's (mtime, size)
_MILVUS_CACHE: dict[Path, tuple[tuple[int, int], Any]] = {}


def uses_milvus(col: Collection) -> bool:
    """Whether the collection's vector index is Milvus (then its hash codes go there too)."""
    return col.requested_index() == "milvus"


def milvus_stub_path(col: Collection, name: str, generation: int) -> Path:
    """The Milvus binary index file (URI, collection name, ids) of generation ``generation``."""
    return generation_path(col, name, generation).with_suffix(MILVUS_SUFFIX)


def codes_location(col: Collection, name: str, generation: int) -> dict[str, Any]:
    """Where ``cbir search --codes NAME`` searches the codes of that generation, for ``cbir hash
    list``: ``{"search_index": "binary-flat"}`` (in memory) on a FAISS collection; on a Milvus
    one ``"milvus"``, the server (``milvus_uri``, without credentials), the Milvus collection
    (``milvus_collection``) and the codes it held at its last sync (``milvus_codes``; 0: not
    there yet, the next search puts them there). From the local files only: no round trip."""
    from cbir.index.base import read_index_header
    from cbir.index.milvus import public_uri

    if not uses_milvus(col):
        return {"search_index": "binary-flat"}
    uri = col.milvus_uri()
    base = col.catalog.get_meta(MILVUS_COLLECTION_KEY)  # (read, never made here: a listing writes nothing)
    out: dict[str, Any] = {
        "search_index": "milvus", "milvus_uri": public_uri(uri),
        "milvus_collection": _milvus_collection_name(col, name, generation, base) if base else None,
        "milvus_codes": 0}
    try:
        header = read_index_header(milvus_stub_path(col, name, generation))
    except (OSError, IndexMismatch, InvalidRequest):
        return out  # not synced yet (or an unreadable stub: rebuilt by the next search)
    params = header.get("params", {})
    if header.get("backend") == "milvus" and params.get("uri") == uri:
        out["milvus_collection"] = params.get("collection")
        out["milvus_codes"] = int(header.get("count", 0))
    return out


def _milvus_collection_name(col: Collection, name: str, generation: int,
                            base: str | None = None) -> str:
    """``<the collection's Milvus name>_bin_<hash of the hasher name>_g<N>``: fixed, so a run
    killed before its stub was written leaves nothing that the next one does not replace."""
    tag = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{base or col._milvus_collection()}_bin_{tag}_g{int(generation)}"


def _load_milvus_stub(path: Path, uri: str | None, bits: int) -> Any:
    """The Milvus binary index of a stub file (cached per process), or None when the file is
    missing, names another server or bit width, or its Milvus collection is gone."""
    from cbir.hashing import load_binary_index
    from cbir.index.base import read_index_header

    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    hit = _MILVUS_CACHE.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        header = read_index_header(path)
        if header.get("backend") != "milvus" or header.get("bits") != bits or \
                header.get("params", {}).get("uri") != uri:
            return None  # (another server now, e.g. a new --milvus-uri: filled anew there)
        index = load_binary_index(path)
    except (IndexMismatch, InvalidRequest):
        return None
    _MILVUS_CACHE[path] = (key, index)
    return index


def _milvus_codes(col: Collection, name: str, generation: int, bits: int, ids: np.ndarray,
                  codes: np.ndarray, *, locked: bool = False) -> Any:
    """The Milvus binary index of generation ``generation`` of ``name``, holding exactly
    (ids, codes) (sorted ids, the catalog's codes of that generation).

    In step already: returned as it is. Else it is synced (by id set difference; built anew
    when its stub is missing or stale) under the writer lock -- ``locked``: the caller holds
    it -- and its stub saved. Returns None, for an in-memory search, when the lock is busy or
    the collection is read-only.
    """
    from cbir.hashing import create_binary_index
    from cbir.store import WriterLock

    if ids.size > 1 and np.any(np.diff(ids) <= 0):
        order = np.argsort(ids, kind="stable")
        ids, codes = ids[order], codes[order]
    path = milvus_stub_path(col, name, generation)
    uri = col.milvus_uri()
    index = _load_milvus_stub(path, uri, bits)
    if index is not None and np.array_equal(index.ids(), ids):
        return index
    if col.readonly:
        return None
    lock = WriterLock(col.directory)
    if not locked and not lock.acquire():
        return None  # another writer is busy: this search runs in memory
    try:
        index = _load_milvus_stub(path, uri, bits)  # (another process may have synced it meanwhile)
        if index is None:
            index = create_binary_index("milvus", bits, uri=uri,
                                        collection=_milvus_collection_name(col, name, generation))
        have = index.ids()
        stale = np.setdiff1d(have, ids, assume_unique=True)
        if stale.size:
            index.remove(stale)
        new = ~np.isin(ids, have, assume_unique=True)
        for start in range(0, int(new.sum()), 100_000):
            rows = np.flatnonzero(new)[start:start + 100_000]
            index.add(ids[rows], codes[rows])
        path.parent.mkdir(parents=True, exist_ok=True)
        index.save(path)
        st = path.stat()
        _MILVUS_CACHE[path] = ((st.st_mtime_ns, st.st_size), index)
        for other in path.parent.glob(f"g*{MILVUS_SUFFIX}"):  # earlier generations' collections
            if other != path:
                _drop_milvus_stub(other)
        return index
    finally:
        if not locked:
            lock.release()


def _drop_milvus_stub(path: Path) -> None:
    """Drop the Milvus collection a stub names (if cbir made it), then the stub; a server that
    cannot be reached keeps the stub, so a later training or delete tries again."""
    from cbir.index.base import read_index_header
    from cbir.index.milvus import MARK, connect

    _MILVUS_CACHE.pop(path, None)
    try:
        params = read_index_header(path).get("params", {})
        client = connect(params["uri"])
    except Exception:  # noqa: BLE001 — unreadable stub: nothing to drop; unreachable: keep it
        if not path.is_file() or _unreadable(path):
            path.unlink(missing_ok=True)
        return
    try:
        coll = params.get("collection", "")
        if client.has_collection(coll) and \
                str(client.describe_collection(coll).get("description", "")).startswith(MARK):
            client.drop_collection(coll)
        path.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 — keep the stub for a later attempt
        pass
    finally:
        client.close()


def _unreadable(path: Path) -> bool:
    from cbir.index.base import read_index_header

    try:
        read_index_header(path)
    except Exception:  # noqa: BLE001
        return True
    return False
