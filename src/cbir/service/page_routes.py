"""Read-only endpoints the web page needs besides search: duplicates, model curves, labels, model search.

* ``GET /api/duplicates``: groups of exact and near-duplicate images with a suggested keeper
  (:mod:`cbir.duplicates`, the engine of ``cbir duplicates``), or with ``id`` the group of one
  image; the search filters narrow it. Nothing is ever deleted: the page only exports the
  user's choices as CSV or JSON.
* ``GET /api/filter-values``: what the filters can be set to in this collection (cameras,
  folders, tags, the range of dates taken), for the page's filter chips.
* ``GET /api/models/{name}/curves.png``: the same matplotlib plot as ``cbir models curves``.
* ``GET /api/models/{name}/labels``: the collection's images labelled by a trained model
  (``cbir models label``; nothing is written).
* ``GET|POST /api/models/{name}/search``: search re-ranked by a trained model (``cbir models search``);
  with ``partitioned=true`` the candidates come from the tables of the query's ``n_partitions``
  most probable classes under the model (``--partitioned --nprobe N``; ``depth``: ``--depth``,
  the candidates re-ranked, and at least the vectors a partitioned search scans): the collection's
  class-partitioned index, so the model must be the one in use (``PUT /api/partition-model``,
  else 409 ``not_in_use``).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from cbir.extract.base import l2_normalize
from cbir.extract.pipeline import embed_images
from cbir.io.images import load_image
from cbir.search import Query as SearchQuery
from cbir.search import match_baseline, match_score
from cbir.service import training
from cbir.service.errors import ApiError
from cbir.service.filter_params import search_filters
from cbir.service.routes import ERRORS, MAX_ID, MAX_K, MODEL_NAME, _reader, get_state, read_upload
from cbir.service.schemas import HitOut, Label
from cbir.service.state import ReaderCollection, ServiceState

router = APIRouter()
State = Annotated[ServiceState, Depends(get_state)]
ModelName = Annotated[str, PathParam(pattern=MODEL_NAME, max_length=64, description="model name")]

#: pyplot keeps global state: one curves plot at a time
_PLOT_LOCK = threading.Lock()
#: the last collection-wide duplicates answers, keyed by (collection, catalog generation, threshold,
#: near, filters)
_DUP_CACHE: dict[tuple[str, int, float, bool, str], list[Any]] = {}
_DUP_LOCK = threading.Lock()
#: the last filter values, keyed by (collection, catalog generation)
_VALUES_CACHE: dict[tuple[str, int], dict[str, Any]] = {}


class DuplicateMember(BaseModel):
    id: int
    path: str
    name: str
    keeper: bool = Field(description="the suggested copy to keep: most pixels, largest file, oldest")
    similarity: float | None = Field(description="cosine similarity to the keeper (1 for the keeper)")
    width: int | None
    height: int | None
    size: int
    modified: float = Field(description="the file's modification time (Unix seconds)")
    image_url: str
    thumbnail_url: str


class DuplicateGroup(BaseModel):
    group: int
    kind: str = Field(description="exact (same bytes) or near")
    keeper: int = Field(description="id of the suggested keeper")
    members: list[DuplicateMember]


class DuplicatesResponse(BaseModel):
    threshold: float
    groups: list[DuplicateGroup]
    total_groups: int
    images_in_groups: int
    took_ms: float


class ModelHitOut(HitOut):
    score: float = Field(description="cosine + beta * p(query's class | hit)")
    model_label: str = Field(description="the hit's most probable class under the model")
    model_prob: float


class ModelSearchResponse(BaseModel):
    query: dict[str, Any]
    model: str
    k: int
    partitioned: bool = Field(False, description="candidates from the class-partitioned index only")
    n_partitions: int | None = Field(None, description="with partitioned: the classes scanned (at least)")
    collection_images: int
    took_ms: float
    hits: list[ModelHitOut]


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def _pin(state: ServiceState, reader: ReaderCollection) -> None:
    """Pin the shared index snapshot (a plain one: class-partitioned searches only some classes)."""
    from cbir.index import choose_index

    idx = state.index_cache.get(reader, None)
    if idx.name == "class-partitioned":
        idx = state.index_cache.get(reader, choose_index(len(idx)))
    reader.pinned = idx


def _group_out(g: Any) -> dict[str, Any]:
    members = [{"id": m.id, "path": m.path, "name": os.path.basename(m.path), "keeper": m.keeper,
                "similarity": None if m.similarity != m.similarity else round(m.similarity, 4),
                "width": m.width, "height": m.height, "size": m.size, "modified": m.mtime_ns / 1e9,
                "image_url": f"/api/images/{m.id}", "thumbnail_url": f"/api/images/{m.id}/thumbnail"}
               for m in g.members]
    return {"group": g.number, "kind": g.kind, "keeper": g.keeper.id, "members": members}


def _one_group(reader: ReaderCollection, image_id: int, threshold: float, filters: Any = None) -> list[Any]:
    """The duplicates of one image: its exact copies and neighbours with cosine >= threshold
    (with ``filters``, only those that pass them)."""
    from cbir.duplicates import Group, Member, keeper_key
    from cbir.search import search

    rec = reader.catalog.get(id=image_id, with_feature=True)
    if rec is None:
        raise ApiError(404, "not_found", f"no image with id {image_id}")
    if rec.status != "ok" or rec.feature is None:
        raise ApiError(409, "not_indexed", f"image {image_id} could not be indexed: {rec.error}")
    ids = {image_id}
    if rec.sha256:
        ids |= {int(r[0]) for r in reader.catalog.db.execute(
            "SELECT id FROM images WHERE status='ok' AND sha256=?", (rec.sha256,)).fetchall()}
    query = SearchQuery(vector=l2_normalize(rec.feature[None, :])[0], exclude={image_id})
    ids |= {h.id for h in search(reader, query, k=min(50, max(1, len(reader.pinned or []))))
            if h.cosine >= threshold}
    if filters is not None:
        from cbir.store.photometa import matching_ids

        ids = {image_id} | (ids & set(matching_ids(reader.catalog, filters).tolist()))
    if len(ids) < 2:
        return []
    recs = reader.catalog.records(sorted(ids))
    members = [Member(id=i, path=r.path, width=r.width, height=r.height, size=r.size, mtime_ns=r.mtime_ns,
                      sha256=r.sha256) for i, r in recs.items()]
    members.sort(key=keeper_key)
    members[0].keeper = True
    fids, feats = reader.catalog.features([m.id for m in members])
    vec = {int(i): f / max(float(np.linalg.norm(f)), 1e-12) for i, f in zip(fids, feats, strict=True)}
    keep = vec.get(members[0].id)
    for m in members[1:]:
        same = m.sha256 is not None and m.sha256 == members[0].sha256
        m.similarity = 1.0 if same else float(keep @ vec[m.id]) if keep is not None and m.id in vec \
            else float("nan")
    kind = "exact" if len({m.sha256 for m in members}) == 1 and members[0].sha256 else "near"
    return [Group(number=1, kind=kind, members=members)]


@router.get("/api/duplicates", response_model=DuplicatesResponse, responses=ERRORS, tags=["duplicates"])
def duplicates(
    state: State,
    threshold: Annotated[float, Query(ge=0.5, le=1.0, description="cosine similarity of near "
                                      "duplicates (default 0.90, as `cbir duplicates`)")] = 0.90,
    near: Annotated[bool, Query(description="false: exact copies (same bytes) only")] = True,
    image_id: Annotated[int | None, Query(alias="id", ge=1, le=MAX_ID,
                                          description="only the group of this image")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="groups returned (largest first)")] = 200,
    filters: Annotated[Any, Depends(search_filters)] = None,
) -> Response:
    """Groups of duplicate images, each with a suggested keeper, among the images that pass the
    filters (as `cbir duplicates --folder ...`). Read-only: nothing is deleted."""
    from cbir.duplicates import find_duplicates

    t0 = time.perf_counter()
    reader = _reader(state)
    _pin(state, reader)
    try:
        if image_id is not None:
            groups = _one_group(reader, image_id, threshold, filters)
        else:
            key = (str(state.directory), reader.catalog.generation(), round(threshold, 4), near,
                   repr(filters))
            with _DUP_LOCK:
                groups = _DUP_CACHE.get(key)
            if groups is None:
                groups = find_duplicates(reader, threshold, near=near, filters=filters)
                with _DUP_LOCK:
                    _DUP_CACHE.clear()
                    _DUP_CACHE[key] = groups
    finally:
        reader.pinned = None
    out = DuplicatesResponse(
        threshold=threshold, groups=[_group_out(g) for g in groups[:limit]], total_groups=len(groups),
        images_in_groups=sum(len(g.members) for g in groups), took_ms=_ms(t0))
    return Response(out.model_dump_json(), media_type="application/json")


# -- filter values -------------------------------------------------------------------------------
def _folders(paths: list[str], roots: list[str], limit: int) -> list[dict[str, Any]]:
    """The folders holding images, with the images under each (sub-folders included): every
    folder from an indexed root down to the images' own; the ``limit`` fullest, by path."""
    direct: dict[str, int] = {}
    for p in paths:
        d = os.path.dirname(p)
        direct[d] = direct.get(d, 0) + 1
    under: dict[str, int] = {}
    for d, n in direct.items():
        root = next((r for r in roots if d == r or d.startswith(r.rstrip(os.sep) + os.sep)), d)
        while True:
            under[d] = under.get(d, 0) + n
            parent = os.path.dirname(d)
            if len(d) <= len(root) or parent == d:
                break
            d = parent
    top = sorted(under.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [{"path": d, "name": os.path.basename(d) or d, "count": n} for d, n in sorted(top)]


def filter_values(catalog: Any, roots: list[str], limit: int = 100) -> dict[str, Any]:
    """Distinct cameras, folders and tags of the ok images, and the range of dates taken."""
    from cbir.store import photometa

    db = catalog.db
    paths = [r[0] for r in db.execute("SELECT path FROM images WHERE status='ok'")]
    tags = [{"tag": t, "count": int(n)} for t, n in db.execute(
        "SELECT lower(j.value), COUNT(*) FROM images i, json_each(i.tags) j WHERE i.status='ok' "
        "AND i.tags IS NOT NULL AND json_valid(i.tags) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?", (limit,))]
    cameras: list[dict[str, Any]] = []
    taken: dict[str, Any] = {"first": None, "last": None}
    geotagged = 0
    if photometa.has_table(db):
        rows = db.execute(
            "SELECT m.make, m.model, COUNT(*) FROM photo_meta m JOIN images i ON i.id = m.id "
            "WHERE i.status='ok' AND (m.make IS NOT NULL OR m.model IS NOT NULL) "
            "GROUP BY m.make, m.model ORDER BY 3 DESC, 2 LIMIT ?", (limit,)).fetchall()
        # the value sent back as ``camera`` (make or model contains): the model names the camera
        cameras = [{"value": model or make, "make": make, "model": model, "count": int(n)}
                   for make, model, n in rows]
        first, last, geo = db.execute(
            "SELECT MIN(m.taken_at), MAX(m.taken_at), SUM(m.gps) FROM photo_meta m "
            "JOIN images i ON i.id = m.id WHERE i.status='ok'").fetchone()
        taken = {"first": first[:10] if first else None, "last": last[:10] if last else None}
        geotagged = int(geo or 0)
    return {"images": len(paths), "cameras": cameras, "folders": _folders(paths, roots, limit),
            "tags": tags, "taken": taken, "geotagged": geotagged,
            "without_metadata": photometa.without_metadata(catalog)}


class CameraValue(BaseModel):
    value: str = Field(description="what to send as the camera filter")
    make: str | None
    model: str | None
    count: int


class FolderValue(BaseModel):
    path: str = Field(description="what to send as the folder filter (sub-folders included)")
    name: str
    count: int = Field(description="images in it and its sub-folders")


class TagValue(BaseModel):
    tag: str
    count: int


class FilterValues(BaseModel):
    images: int
    cameras: list[CameraValue]
    folders: list[FolderValue]
    tags: list[TagValue]
    taken: dict[str, str | None] = Field(description="first and last day taken (EXIF), YYYY-MM-DD")
    geotagged: int
    without_metadata: int = Field(description="images without stored metadata: date and camera "
                                  "filters cannot see them until `cbir index` reads it")


@router.get("/api/filter-values", response_model=FilterValues, responses=ERRORS, tags=["search"])
def get_filter_values(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000, description="most values per list")] = 100,
) -> dict[str, Any]:
    """What the search filters can be set to here: cameras, folders (with their image counts),
    tags, the dates taken; read-only, for the page's filter chips."""
    from cbir.indexing import indexed_roots

    reader = _reader(state)
    key = (str(state.directory), reader.catalog.generation())
    with _DUP_LOCK:
        out = _VALUES_CACHE.get(key)
    if out is None:
        out = filter_values(reader.catalog, indexed_roots(reader.catalog), limit=1000)
        with _DUP_LOCK:
            _VALUES_CACHE.clear()
            _VALUES_CACHE[key] = out
    return {**out, "cameras": out["cameras"][:limit], "tags": out["tags"][:limit],
            "folders": sorted(sorted(out["folders"], key=lambda f: -f["count"])[:limit],
                              key=lambda f: f["path"])}


# -- trained models ------------------------------------------------------------------------------
def _model(state: ServiceState, name: str) -> Any:
    training.require()
    reg = training.registry(state.directory)
    if not reg.exists(name):
        raise ApiError(404, "not_found", f"no model named {name!r} (trained: "
                       f"{', '.join(reg.names()) or 'none yet'})")
    return reg


@router.get("/api/models/{name}/curves.png", responses={**ERRORS, 200: {"content": {"image/png": {}}}},
            response_class=Response, tags=["models"])
def model_curves_png(state: State, name: ModelName) -> Response:
    """The training curves as the CLI draws them (`cbir models curves NAME --out FILE.png`)."""
    from cbir.train.curves import plot_curves

    meta = _model(state, name).meta(name)
    with tempfile.TemporaryDirectory(prefix="cbir-curves-") as tmp, _PLOT_LOCK:
        out = plot_curves(meta, Path(tmp) / "curves.png")
        data = out.read_bytes()
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get("/api/models/{name}/labels", responses=ERRORS, tags=["models"])
def model_labels(
    state: State, name: ModelName,
    label: Annotated[str | None, Query(max_length=200, description="only images labelled so")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The collection's images labelled by the model (`cbir models label`); nothing is written."""
    from cbir.train.apply import label_collection

    model = _model(state, name).load(name)
    rows = label_collection(_reader(state), model, top=3)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    if label is not None:
        rows = [r for r in rows if r["label"] == label]
    rows.sort(key=lambda r: (-r["prob"], r["path"]))  # the most confident first
    page = [{**r, "name": os.path.basename(r["path"]), "image_url": f"/api/images/{r['id']}",
             "thumbnail_url": f"/api/images/{r['id']}/thumbnail"} for r in rows[offset:offset + limit]]
    return {"model": name, "classes": list(model.classes), "counts": counts, "total": len(rows),
            "rows": page}


def _partitioned_index(state: ServiceState, reader: ReaderCollection, name: str) -> Any:
    """The shared class-partitioned snapshot when model ``name`` partitions it; else 409."""
    from cbir.service.routes import partition_model

    used, here = partition_model(state, reader)
    if used != name or not here:
        now = f"; it is partitioned by model {used!r} now" if used else ""
        raise ApiError(409, "not_in_use", f"a partitioned search by model {name!r} scans the collection's "
                       f"class-partitioned index, which is not partitioned by {name!r}{now}: choose it first "
                       f"(PUT /api/partition-model {{\"model\": \"{name}\"}}, `cbir models use {name}`, "
                       "or 'Use for partitioned search' on the page's Models tab)")
    return state.index_cache.get(reader, "class-partitioned")


def _model_search(state: ServiceState, name: str, query: SearchQuery, k: int, beta: float,
                  qinfo: dict[str, Any], t0: float, partitioned: bool = False,
                  n_partitions: int = 1, depth: int = 100) -> Response:
    from cbir.train.apply import search_with_model

    model = _model(state, name).load(name)
    reader = _reader(state)
    if partitioned:
        idx = _partitioned_index(state, reader, name)
        reader.pinned = idx
    else:
        idx = None
        _pin(state, reader)
    try:
        ranked = search_with_model(reader, model, query, k=k, beta=beta, depth=depth,
                                   partitioned=partitioned, n_partitions=n_partitions, index=idx)
        n = len(reader.pinned or [])
        baseline = match_baseline(reader) if ranked else 0.0
    finally:
        reader.pinned = None
    hits = []
    for r in ranked:
        h = r.hit
        hits.append(ModelHitOut.model_construct(
            rank=h.rank, id=h.id, path=h.path, name=os.path.basename(h.path), similarity=h.similarity,
            distance=h.distance, cosine=h.cosine, match=match_score(h.cosine, baseline),
            labels=[Label.model_construct(label=a, prob=float(p)) for a, p in h.labels], tags=list(h.tags),
            image_url=f"/api/images/{h.id}", thumbnail_url=f"/api/images/{h.id}/thumbnail",
            score=r.score, model_label=r.label, model_prob=r.prob))
    out = ModelSearchResponse.model_construct(query=qinfo, model=name, k=k, partitioned=partitioned,
                                              n_partitions=n_partitions if partitioned else None,
                                              collection_images=n, took_ms=_ms(t0), hits=hits)
    return Response(out.model_dump_json(), media_type="application/json")


PARTITIONED = ("candidates only from the collection's class-partitioned index, partitioned by this "
               "model's classes (`cbir models search --partitioned`; the model must be in use: "
               "PUT /api/partition-model)")
N_PARTITIONS = "with partitioned: the query's most probable classes scanned (`--nprobe`)"
DEPTH = ("candidates re-ranked (`--depth`); a partitioned search scans further classes until their "
         "tables hold this many")


@router.get("/api/models/{name}/search", response_model=ModelSearchResponse, responses=ERRORS,
            tags=["models"])
def model_search_by_id(
    state: State, name: ModelName,
    image_id: Annotated[int, Query(alias="id", ge=1, le=MAX_ID)],
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    beta: Annotated[float, Query(ge=0.0, le=100.0, description="weight of the class agreement")] = 0.5,
    partitioned: Annotated[bool, Query(description=PARTITIONED)] = False,
    n_partitions: Annotated[int, Query(ge=1, le=1000, description=N_PARTITIONS)] = 1,
    depth: Annotated[int, Query(ge=1, le=MAX_K, description=DEPTH)] = 100,
) -> Response:
    """Images like one of the collection, re-ranked by a trained model (`cbir models search --like`)."""
    t0 = time.perf_counter()
    reader = _reader(state)
    rec = reader.catalog.get(id=image_id, with_feature=True)
    if rec is None:
        raise ApiError(404, "not_found", f"no image with id {image_id}")
    if rec.status != "ok" or rec.feature is None:
        raise ApiError(409, "not_indexed", f"image {image_id} could not be indexed: {rec.error}")
    query = SearchQuery(vector=l2_normalize(rec.feature[None, :])[0], exclude={image_id})
    return _model_search(state, name, query, k, beta,
                         {"type": "id", "id": image_id, "name": os.path.basename(rec.path)}, t0,
                         partitioned, n_partitions, depth)


@router.post("/api/models/{name}/search", response_model=ModelSearchResponse, responses=ERRORS,
             tags=["models"])
def model_search_upload(
    state: State, name: ModelName,
    file: Annotated[UploadFile, File(description="the query image")],
    k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
    beta: Annotated[float, Form(ge=0.0, le=100.0)] = 0.5,
    partitioned: Annotated[bool, Form(description=PARTITIONED)] = False,
    n_partitions: Annotated[int, Form(ge=1, le=1000, description=N_PARTITIONS)] = 1,
    depth: Annotated[int, Form(ge=1, le=MAX_K, description=DEPTH)] = 100,
) -> Response:
    """Upload an image; search re-ranked by a trained model (`cbir models search NAME IMAGE`)."""
    t0 = time.perf_counter()
    data, fname = read_upload(state, file)
    _reader(state)
    ext = state.readers.extractor()
    image = load_image(data, target_size=ext.input_size, max_pixels=state.config.max_pixels, name=fname)
    emb = embed_images([image], ext)
    query = SearchQuery(vector=l2_normalize(emb.features[:1])[0])
    return _model_search(state, name, query, k, beta, {"type": "upload", "name": fname}, t0,
                         partitioned, n_partitions, depth)
