"""The REST API: search, images, collection, jobs, maintenance, models, health, metrics.

* ``GET /api/health``, ``GET /metrics``
* ``POST /api/search`` (an upload), ``GET /api/search?id=N`` (a stored image)
* ``GET /api/images/{id}``, ``/thumbnail``, ``/meta``
* ``GET /api/collection`` (with ``partition_model``), ``GET /api/roots``
* ``POST /api/index-jobs``, ``GET /api/jobs``, ``GET /api/jobs/{id}``, ``/events``, ``POST .../cancel``,
  ``.../retry``; ``POST /api/index/clear``, ``POST /api/index/rebuild``
* ``GET /api/models`` (each with ``in_use``), ``GET|DELETE /api/models/{name}``,
  ``POST /api/train-jobs``, ``POST /api/train-jobs/upload``
* ``GET|PUT /api/partition-model``: the trained model whose classes partition the collection's
  class-partitioned index (``cbir models use NAME`` / ``--none``); ``{"model": null}`` goes back to
  the extractor's classes. It takes the collection's writer lock without waiting (409 while a job
  writes or is queued to), drops the saved index and starts the rebuild job that saves it again
  (``job`` in the answer; ``index_job`` of ``GET /api/collection`` while it runs). Searches
  meanwhile build it in memory with the new classes.

The web page's other endpoints (duplicates, filter values, model curves, labels and model
search) are in :mod:`cbir.service.page_routes`, words search in :mod:`cbir.service.scene_routes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import mimetypes
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

from cbir import __version__
from cbir.collection import Collection
from cbir.errors import CollectionError, InvalidImage, InvalidRequest
from cbir.extract.base import l2_normalize
from cbir.extract.pipeline import embed_images
from cbir.indexing import indexed_roots
from cbir.io.images import load_image, os_error_reason
from cbir.io.saferead import FileRefused, open_file, read_fd
from cbir.search import Hit, search
from cbir.search import Query as SearchQuery
from cbir.service import training
from cbir.service.errors import ApiError
from cbir.service.filter_params import search_filters
from cbir.service.jobs import FINISHED
from cbir.service.safezip import ZipLimits, safe_extract
from cbir.service.schemas import (
    ClearRequest,
    CollectionInfo,
    ErrorBody,
    Health,
    HitOut,
    ImageInfo,
    IndexJobRequest,
    IndexType,
    Job,
    JobList,
    Label,
    ModelList,
    PartitionModel,
    PartitionModelRequest,
    RebuildRequest,
    Rerank,
    Roots,
    SearchResponse,
    TrainJobRequest,
)
from cbir.service.security import resolve_under_roots, token_matches
from cbir.service.state import UPLOAD_DIR, ReaderCollection, ServiceState, make_thumbnail, thumbnail_path

MAX_K = 1000
#: the largest indexed file the image endpoint sends (the indexer's own limit)
MAX_SERVE_BYTES = 512 * 1024 * 1024
MAX_ID = 2**63 - 1
JOB_ID = r"^[0-9a-f]{1,32}$"
#: cbir.train's model names: 1-64 letters, digits, '.', '_', '-', first a letter or digit, no '..'
MODEL_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
#: formats every browser shows; others are converted to PNG before serving
BROWSER_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/avif"}

ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d} for s, d in (
        (400, "bad request: the detail says which value and what is allowed"),
        (401, "an API token is needed (Authorization: Bearer TOKEN)"),
        (403, "refused: path outside the allowed roots, or a cross-site write"),
        (404, "no such image, job or model"),
        (409, "the collection is busy or inconsistent"),
        (413, "the upload is too large"),
        (422, "invalid parameters or an image that cannot be decoded"),
        (501, "not available in this build"),
    )
}

router = APIRouter()


# -- dependencies ---------------------------------------------------------------------------
async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a plain ``def`` dependency in the thread pool, one more hop per request
    return request.app.state.cbir


State = Annotated[ServiceState, Depends(get_state)]


async def require_token(request: Request, state: State) -> None:
    """Mutating endpoints need a token when the server was given any."""
    hashes = state.config.token_hashes
    if not hashes:
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-token")
    if not token_matches(token, hashes):
        raise ApiError(401, "unauthorized",
                       "this endpoint needs a valid API token: send 'Authorization: Bearer TOKEN' "
                       "(the token printed by `cbir serve --create-token`)" if not token else
                       "the API token is not valid", headers={"WWW-Authenticate": "Bearer"})


Mutating = [Depends(require_token)]


def _store(state: ServiceState):
    if state.store is None or state.runner is None:
        raise ApiError(503, "starting", "the server is still starting; try again in a moment")
    return state.store, state.runner


def _reader(state: ServiceState) -> ReaderCollection:
    reader = state.readers.get()
    if reader is None:
        raise ApiError(404, "no_collection", "there is no collection yet: index a folder first "
                       "(POST /api/index-jobs or the Index panel)")
    return reader


#: job kinds that write the collection's catalog or index (under its writer lock)
WRITING_JOBS = ("index", "clear", "rebuild")


def writing_job(state: ServiceState) -> dict[str, Any] | None:
    """This server's job that writes the collection now (running) or next (the first queued)."""
    if state.store is None:
        return None
    for status in ("running", "queued"):
        jobs = [j for j in state.store.list(limit=1000, status=status) if j["kind"] in WRITING_JOBS]
        if jobs:
            return jobs[-1]  # newest first: the last one is the one that runs first
    return None


def _kind(index_type: IndexType | None, state: ServiceState) -> str | None:
    if index_type is None:
        return None
    kind = index_type.value
    if kind == "class-partitioned" and not state.readers.extractor().class_names \
            and not partition_model(state)[0]:
        raise ApiError(409, "index_unavailable", "the class-partitioned index needs predicted classes, "
                       f"and this collection's extractor {state.readers.manifest().extractor!r} "  # type: ignore[union-attr]
                       "has no classifier: choose a trained model for it (PUT /api/partition-model, or "
                       "'Use for partitioned search' on the page's Models tab), or another index_type")
    return kind


def class_partitioned_available(state: ServiceState, model: str | None) -> bool:
    """Whether the class-partitioned index has classes: a partitioning model, or the extractor's."""
    if model:
        return True
    try:
        return bool(state.readers.extractor().class_names)
    except Exception:  # noqa: BLE001 - the extractor cannot load: the searches will say why
        return False


def partition_model(state: ServiceState, col: Collection | None = None) -> tuple[str | None, bool]:
    """(name of the model whose classes partition the collection's class-partitioned index or
    None, whether it is one of this server's models in ``<collection>/models``).

    A damaged setting raises CollectionError (409; ``PUT /api/partition-model`` with null repairs it).
    """
    from cbir.train.apply import used_model

    col = col if col is not None else state.readers.get()
    used = used_model(col) if col is not None else None
    if used is None:
        return None, False
    here = training.registry(state.directory).directory.resolve()
    return used[0], used[1] == here


def _hit_out(h: Hit) -> HitOut:
    return HitOut.model_construct(
        rank=h.rank, id=h.id, path=h.path, name=os.path.basename(h.path), similarity=h.similarity,
        distance=h.distance, cosine=h.cosine, match=h.match,
        labels=[Label.model_construct(label=n, prob=float(p)) for n, p in h.labels], tags=list(h.tags),
        image_url=f"/api/images/{h.id}", thumbnail_url=f"/api/images/{h.id}/thumbnail")


def read_upload(state: ServiceState, file: UploadFile) -> tuple[bytes, str]:
    """An uploaded image's bytes (413 past the configured limit) and a safe display name."""
    limit = state.config.max_upload_bytes
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "payload_too_large", f"the image is larger than {limit} bytes")
    return data, os.path.basename(file.filename or "") or "upload"


def _search(state: ServiceState, reader: ReaderCollection, query: SearchQuery, k: int,
            min_similarity: float, kind: str | None, rerank: str = "none", min_match: float = 0.0,
            filters: Any = None) -> tuple[list[Hit], str | None, int]:
    """Search the shared snapshot (pinned for this call); returns hits, index type, size."""
    idx = state.index_cache.get(reader, kind)
    reader.pinned = idx
    try:
        hits = search(reader, query, k=k, min_similarity=min_similarity, index_kind=kind, rerank=rerank,
                      min_match=min_match, filters=filters)
    finally:
        reader.pinned = None
    return hits, idx.name, len(idx)


# -- health, metrics ----------------------------------------------------------------------------
@router.get("/api/health", response_model=Health, tags=["service"], responses=ERRORS)
def health(state: State) -> Health:
    """Liveness, and what this server offers (auth, indexing, training)."""
    reader = state.readers.get()
    jobs = state.store.count(("queued", "running")) if state.store else 0
    return Health(status="ok", version=__version__, collection_exists=reader is not None,
                  images=reader.catalog.count("ok") if reader else 0,
                  auth_required=bool(state.config.token_hashes),
                  read_auth_required=state.config.reads_need_token,
                  indexing_enabled=bool(state.config.allow_roots),
                  training_available=training.available(), jobs_active=jobs)


@router.get("/metrics", response_class=PlainTextResponse, responses=ERRORS, tags=["service"])
def metrics(state: State) -> PlainTextResponse:
    """Prometheus text: requests and latency per route, collection and index size, jobs."""
    return PlainTextResponse(state.metrics.render(state.gauges()),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


# -- search -------------------------------------------------------------------------------------
@router.post("/api/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_upload(
    state: State,
    file: Annotated[UploadFile, File(description="the query image (any format Pillow reads)")],
    k: Annotated[int, Form(ge=1, le=MAX_K, description="number of results")] = 10,
    min_similarity: Annotated[float, Form(ge=0.0, le=1.0, description="drop hits below this")] = 0.0,
    index_type: Annotated[IndexType | None, Form(description="search with this index type")] = None,
    rerank: Annotated[Rerank, Form(description="re-order the first 100 hits: qe or kr")] = "none",
    min_match: Annotated[float, Form(ge=0.0, le=100.0, description="drop hits below this match %")] = 0.0,
    filters: Annotated[Any, Depends(search_filters)] = None,
) -> Response:
    """Upload an image; get the K most similar images of the collection, best first."""
    t0 = time.perf_counter()
    data, name = read_upload(state, file)
    reader = state.readers.get()
    if reader is None:  # nothing to search, but still tell the user if the image is bad
        load_image(data, max_pixels=state.config.max_pixels, name=name)
        return _json(SearchResponse.model_construct(query={"type": "upload", "name": name}, k=k,
                                                    index_type=None, collection_images=0, took_ms=_ms(t0),
                                                    hits=[]))
    kind = _kind(index_type, state)
    ext = state.readers.extractor()
    image = load_image(data, target_size=ext.input_size, max_pixels=state.config.max_pixels, name=name)
    emb = embed_images([image], ext)
    query = SearchQuery(vector=l2_normalize(emb.features[:1])[0],
                        probs=None if emb.probs is None else emb.probs[0])
    hits, used, n = _search(state, reader, query, k, min_similarity, kind, rerank, min_match, filters)
    return _json(SearchResponse.model_construct(query={"type": "upload", "name": name}, k=k, index_type=used,
                                                collection_images=n, took_ms=_ms(t0),
                                                hits=[_hit_out(h) for h in hits]))


@router.get("/api/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_by_id(
    state: State,
    image_id: Annotated[int, Query(alias="id", ge=1, le=MAX_ID, description="an image id of the collection")],
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    min_similarity: Annotated[float, Query(ge=0.0, le=1.0)] = 0.0,
    index_type: IndexType | None = None,
    include_self: Annotated[bool, Query(description="keep the query image in the results")] = False,
    rerank: Annotated[Rerank, Query(description="re-order the first 100 hits: qe or kr")] = "none",
    min_match: Annotated[float, Query(ge=0.0, le=100.0, description="drop hits below this match %")] = 0.0,
    filters: Annotated[Any, Depends(search_filters)] = None,
) -> Response:
    """Images most similar to one already in the collection (its stored vector; no decoding)."""
    t0 = time.perf_counter()
    reader = _reader(state)
    kind = _kind(index_type, state)
    rec = reader.catalog.get(id=image_id, with_feature=True)
    if rec is None:
        raise ApiError(404, "not_found", f"no image with id {image_id}")
    if rec.status != "ok" or rec.feature is None:
        raise ApiError(409, "not_indexed", f"image {image_id} could not be indexed: {rec.error}")
    query = SearchQuery(vector=l2_normalize(rec.feature[None, :])[0], labels=[rec.labels],
                        exclude=set() if include_self else {image_id})
    hits, used, n = _search(state, reader, query, k, min_similarity, kind, rerank, min_match, filters)
    return _json(SearchResponse.model_construct(
        query={"type": "id", "id": image_id, "name": os.path.basename(rec.path)}, k=k, index_type=used,
        collection_images=n, took_ms=_ms(t0), hits=[_hit_out(h) for h in hits]))


def _json(model: SearchResponse) -> Response:
    """The response serialised by pydantic-core at once: FastAPI would validate the whole model
    again first (a tenth of a search's CPU time); ``response_model`` still documents it."""
    return Response(model.model_dump_json(), media_type="application/json")


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


# -- images -------------------------------------------------------------------------------------
ImageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="image id")]


def _record(state: ServiceState, image_id: int):
    rec = _reader(state).catalog.get(id=image_id)
    if rec is None:
        raise ApiError(404, "not_found", f"no image with id {image_id}")
    return rec


def _roots(state: ServiceState) -> list[str]:
    """Where served files may live: the allowed roots and the folders indexed into the collection."""
    return [*(os.path.realpath(r) for r in state.config.allow_roots), *indexed_roots(_reader(state).catalog)]


@contextlib.contextmanager
def _opened(state: ServiceState, rec: Any) -> Iterator[tuple[int, os.stat_result]]:
    """Open an indexed file for serving (cbir.io.saferead): never through a link, never a
    FIFO or device, and only when its real path is under the collection's roots."""
    roots = _roots(state)
    if not roots:  # a collection from before roots were recorded: only the exact indexed path
        roots = [os.path.abspath(rec.path)]
    try:
        with open_file(rec.path, max_bytes=MAX_SERVE_BYTES, roots=roots, label=f"image {rec.id}") as opened:
            yield opened
    except FileRefused as e:
        raise ApiError(403, "file_refused", f"image {rec.id} is not served: {e.reason}") from None
    except InvalidImage as e:
        raise ApiError(404, "file_missing", f"the file of image {rec.id} cannot be read ({e.reason}); "
                       "re-index its folder to drop it") from None


def _read_source(state: ServiceState, rec: Any) -> bytes:
    with _opened(state, rec) as (fd, _):
        try:
            return read_fd(fd, MAX_SERVE_BYTES, f"image {rec.id}")
        except FileRefused as e:
            raise ApiError(403, "file_refused", f"image {rec.id} is not served: {e.reason}") from None
        except OSError as e:
            raise ApiError(404, "file_missing", f"the file of image {rec.id} cannot be read "
                           f"({os_error_reason(e)})") from None


def _stream(state: ServiceState, rec: Any) -> tuple[int, Iterator[bytes]]:
    """(size, chunks) of an indexed file, read from the one descriptor that was checked."""
    cm = _opened(state, rec)
    fd, st = cm.__enter__()

    def chunks() -> Iterator[bytes]:
        try:
            left = st.st_size  # never more than was checked, even if the file grows
            while left > 0:
                b = os.read(fd, min(1 << 20, left))
                if not b:
                    break
                left -= len(b)
                yield b
        finally:
            cm.__exit__(None, None, None)

    return st.st_size, chunks()


@router.get("/api/images/{image_id}", responses={**ERRORS, 200: {"content": {"image/*": {}}}},
            response_class=Response, tags=["images"])
def image_file(state: State, image_id: ImageId) -> Response:
    """The image itself (browser formats as they are, others converted to PNG)."""
    rec = _record(state, image_id)
    headers = {"Cache-Control": "private, max-age=3600", "Content-Security-Policy": "sandbox"}
    mime = mimetypes.guess_type(rec.path)[0]
    if mime in BROWSER_TYPES:
        size, body = _stream(state, rec)
        headers["Content-Length"] = str(size)
        return StreamingResponse(body, media_type=mime, headers=headers)
    im = load_image(_read_source(state, rec), max_pixels=state.config.max_pixels,
                    name=os.path.basename(rec.path))  # the name's suffix tells RAW formats apart
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return Response(buf.getvalue(), media_type="image/png", headers=headers)


@router.get("/api/images/{image_id}/thumbnail", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
            response_class=Response, tags=["images"])
def image_thumbnail(state: State, image_id: ImageId) -> Response:
    """A JPEG thumbnail (cached under the collection's thumbnails/ folder)."""
    rec = _record(state, image_id)
    dest = thumbnail_path(state.directory, image_id)
    if not dest.is_file():
        make_thumbnail(_read_source(state, rec), dest, state.config.thumb_size, state.config.max_pixels,
                       name=os.path.basename(rec.path))
    # ids are never reused and a changed file gets a new id, so the thumbnail never changes
    return FileResponse(dest, media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=604800, immutable"})


@router.get("/api/images/{image_id}/meta", response_model=ImageInfo, responses=ERRORS, tags=["images"])
def image_meta(state: State, image_id: ImageId) -> ImageInfo:
    """What the catalog knows about one image."""
    rec = _record(state, image_id)
    return ImageInfo(id=rec.id, path=rec.path, name=os.path.basename(rec.path), width=rec.width,
                     height=rec.height, size=rec.size,
                     labels=[{"label": n, "prob": p} for n, p in rec.labels], tags=rec.tags,
                     indexed_at=rec.indexed_at, image_url=f"/api/images/{rec.id}",
                     thumbnail_url=f"/api/images/{rec.id}/thumbnail")


# -- collection -----------------------------------------------------------------------------------
@router.get("/api/collection", response_model=CollectionInfo, tags=["collection"], responses=ERRORS)
def collection_info(state: State) -> dict[str, Any]:
    """Collection statistics (images, errors, extractor, index type and size)."""
    reader = state.readers.get()
    if reader is None:
        return {"exists": False, "collection": str(state.directory)}
    info = reader.info()
    info["error_reasons"] = [{"reason": r, "count": n} for r, n in info.get("error_reasons", [])]
    try:
        info["partition_model"] = partition_model(state, reader)[0]
    except CollectionError as e:  # a damaged setting: say so, the rest of the answer stands
        info["partition_model"], info["partition_model_error"] = None, str(e)
    info["class_partitioned_available"] = class_partitioned_available(state, info["partition_model"])
    job = writing_job(state)
    info["index_job"] = {k: job[k] for k in ("id", "kind", "status")} if job else None
    return {"exists": True, **info}


@router.get("/api/roots", response_model=Roots, tags=["collection"], responses=ERRORS)
def roots(state: State) -> Roots:
    """The folders this server may index (set with --allow-root)."""
    return Roots(roots=[str(r) for r in state.config.allow_roots])


# -- jobs -------------------------------------------------------------------------------------
def _accepted(response: Response, job: dict[str, Any]) -> dict[str, Any]:
    response.headers["Location"] = f"/api/jobs/{job['id']}"
    return job


def _folder(state: ServiceState, path: str) -> Path:
    folder = resolve_under_roots(path, state.config.allow_roots)
    try:
        exists = folder.exists()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise InvalidRequest(f"{path[:200]}: {os_error_reason(e)}") from None
    if not exists:
        raise ApiError(404, "not_found", f"{path[:200]}: no such folder under the allowed roots")
    return folder


@router.post("/api/index-jobs", status_code=202, response_model=Job, responses=ERRORS,
             dependencies=Mutating, tags=["jobs"])
def start_index_job(state: State, body: IndexJobRequest, response: Response) -> dict[str, Any]:
    """Index a folder (under an allowed root) in the background; only new or changed files."""
    _, runner = _store(state)
    folder = _folder(state, body.path)
    if body.index_type is not None and state.readers.exists():
        _kind(body.index_type, state)
    job = runner.submit("index", {"path": str(folder), "retry_errors": body.retry_errors,
                                  "index_type": body.index_type.value if body.index_type else None})
    return _accepted(response, job)


@router.get("/api/jobs", response_model=JobList, tags=["jobs"], responses=ERRORS)
def list_jobs(state: State, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              status: Annotated[str | None, Query(pattern=r"^[a-z]{1,20}$")] = None,
              kind: Annotated[str | None, Query(pattern=r"^[a-z]{1,20}$")] = None) -> dict[str, Any]:
    """Recent jobs, newest first (they survive page reloads and server restarts)."""
    store, _ = _store(state)
    return {"jobs": store.list(limit=limit, status=status, kind=kind)}


JobId = Annotated[str, PathParam(pattern=JOB_ID, description="job id")]


def _job(state: ServiceState, job_id: str) -> dict[str, Any]:
    store, _ = _store(state)
    job = store.get(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job with id {job_id}")
    return job


@router.get("/api/jobs/{job_id}", response_model=Job, responses=ERRORS, tags=["jobs"])
def get_job(state: State, job_id: JobId) -> dict[str, Any]:
    """One job: status, progress (done/total, percent), message, failed files, result."""
    return _job(state, job_id)


@router.get("/api/jobs/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
            response_class=StreamingResponse, tags=["jobs"])
async def job_events(request: Request, state: State, job_id: JobId) -> StreamingResponse:
    """Server-sent events: the job as JSON whenever it changes, until it finishes."""
    store, _ = _store(state)
    if store.get(job_id) is None:
        raise ApiError(404, "not_found", f"no job with id {job_id}")

    async def events():
        last = None
        t_end = time.monotonic() + 3600
        beat = time.monotonic()
        while time.monotonic() < t_end:
            job = store.get(job_id)
            if job is None:
                return
            text = json.dumps(job)
            if text != last:
                last = text
                yield f"event: job\ndata: {text}\n\n"
                beat = time.monotonic()
            if job["status"] in FINISHED:
                return
            if time.monotonic() - beat > 15:
                yield ": keep-alive\n\n"
                beat = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/api/jobs/{job_id}/cancel", response_model=Job, responses=ERRORS, dependencies=Mutating,
             tags=["jobs"])
def cancel_job(state: State, job_id: JobId) -> dict[str, Any]:
    """Cancel a queued job, or stop a running one after its current batch (committed work stays)."""
    _, runner = _store(state)
    job = runner.cancel(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job with id {job_id}")
    return job


@router.post("/api/jobs/{job_id}/retry", status_code=202, response_model=Job, responses=ERRORS,
             dependencies=Mutating, tags=["jobs"])
def retry_job(state: State, job_id: JobId, response: Response) -> dict[str, Any]:
    """Start a finished job again with the same parameters (indexing resumes where it stopped)."""
    _, runner = _store(state)
    old = _job(state, job_id)
    if old["status"] not in FINISHED:
        raise ApiError(409, "job_active", f"job {job_id} is still {old['status']}")
    if old["kind"] == "train" and old["params"].get("uploaded"):
        raise ApiError(409, "upload_gone", "the uploaded training images were removed; upload them again")
    if old["kind"] in ("index", "train"):
        _folder(state, old["params"].get("path") or old["params"].get("folder", ""))
    return _accepted(response, runner.submit(old["kind"], old["params"]))


# -- maintenance ----------------------------------------------------------------------------
@router.post("/api/index/clear", status_code=202, response_model=Job, responses=ERRORS,
             dependencies=Mutating, tags=["maintenance"])
def clear_index(state: State, response: Response, body: ClearRequest) -> dict[str, Any]:
    """Remove every image from the collection (send {"confirm": true}); runs as a job."""
    _, runner = _store(state)
    return _accepted(response, runner.submit("clear", {}))


@router.post("/api/index/rebuild", status_code=202, response_model=Job, responses=ERRORS,
             dependencies=Mutating, tags=["maintenance"])
def rebuild_index(state: State, response: Response,
                  body: Annotated[RebuildRequest | None, Body()] = None) -> dict[str, Any]:
    """Rebuild the vector index from the catalog (optionally re-scan indexed folders); a job."""
    _, runner = _store(state)
    body = body or RebuildRequest()
    if not state.readers.exists():
        raise ApiError(409, "no_collection", "there is no collection to rebuild yet: index a folder first")
    _kind(body.index_type, state)
    return _accepted(response, runner.submit("rebuild", {
        "index_type": body.index_type.value if body.index_type else None, "rescan": body.rescan}))


# -- models (cbir.train) ----------------------------------------------------------------------
ModelName = Annotated[str, PathParam(pattern=MODEL_NAME, max_length=64)]


@router.get("/api/models", response_model=ModelList, responses=ERRORS, tags=["models"])
def list_models(state: State) -> dict[str, Any]:
    """Trained models: who trained them, when, epochs, validation accuracy; ``in_use``: its classes
    partition the collection's class-partitioned index (PUT /api/partition-model)."""
    training.require()
    try:
        used, here = partition_model(state)
    except CollectionError:
        used, here = None, False
    return {"models": [{**m, "in_use": here and m.get("name") == used}
                       for m in training.list_models(state.directory)]}


@router.get("/api/models/{name}", responses=ERRORS, tags=["models"])
def get_model(state: State, name: ModelName) -> dict[str, Any]:
    """One model's record, with its training curves as columns under ``curves``."""
    training.require()
    return training.get_model(state.directory, name)


#: one change of the partitioning model at a time (its busy check sees the rebuild the last one queued)
_PARTITION_CHANGE = threading.Lock()


@router.delete("/api/models/{name}", responses=ERRORS, dependencies=Mutating, tags=["models"])
def delete_model(state: State, name: ModelName) -> dict[str, Any]:
    """Delete a trained model (and the collection's use of it for partitioning: then ``job`` is
    the rebuild job that saves the index again with the extractor's classes)."""
    training.require()
    if not state.readers.exists():
        return training.delete_model(state.directory, name, None)
    with _PARTITION_CHANGE, Collection.open(state.directory) as col:
        lock = col.writer_lock()
        if not lock.acquire():
            raise ApiError(409, "busy", "a job is writing to the collection; delete the model when it "
                           "has finished")
        try:
            out = training.delete_model(state.directory, name, col)
        finally:
            lock.release()
        state.index_cache.invalidate()
        if out.get("collection_stopped_using_it"):
            out["job"] = _rebuild_for(state, None)
    return out


def _rebuild_for(state: ServiceState, model: str | None) -> dict[str, Any]:
    """Queue the rebuild job that saves the index dropped by a change of partitioning model
    (called after the writer lock is released: the job takes it itself)."""
    _, runner = _store(state)
    return runner.submit("rebuild", {"index_type": None, "rescan": False, "partition_model": model})


def _partition_out(state: ServiceState, name: str | None, note: str,
                   previous: str | None = None, job: dict[str, Any] | None = None) -> dict[str, Any]:
    classes = None
    if name is not None:
        reg = training.registry(state.directory)
        with contextlib.suppress(Exception):  # a model deleted or damaged since: no classes to show
            classes = list(reg.meta(name).get("classes") or [])
    return {"model": name, "classes": classes,
            "class_partitioned_available": class_partitioned_available(state, name),
            "previous": previous, "note": note, "job": job}


@router.get("/api/partition-model", response_model=PartitionModel, responses=ERRORS, tags=["models"])
def get_partition_model(state: State) -> dict[str, Any]:
    """The trained model whose classes partition the collection's class-partitioned index, if any
    (`cbir models use`)."""
    training.require()
    reader = _reader(state)
    name, here = partition_model(state, reader)
    note = ("searches with index_type=class-partitioned, and model searches with partitioned=true, "
            f"scan the tables of the query's most probable classes under model {name}" if name else
            "no trained model partitions the index: the class-partitioned index uses the extractor's "
            "own classes, if it has any")
    if name and not here:
        note += " (a model of another models folder, chosen with `cbir models use --models DIR`)"
    return _partition_out(state, name, note)


BUSY = ("a job is writing to the collection (indexing, clearing or rebuilding){job}; choose the "
        "partitioning model when it has finished")


@router.put("/api/partition-model", response_model=PartitionModel, responses=ERRORS, dependencies=Mutating,
            tags=["models"])
def set_partition_model(state: State, body: PartitionModelRequest) -> dict[str, Any]:
    """Choose the trained model whose classes partition the collection's class-partitioned index
    (`cbir models use NAME`), or ``{"model": null}`` to go back to the extractor's classes
    (`cbir models use --none`). As the CLI, this drops the saved index; the answer's ``job`` is the
    rebuild job that saves it again (follow it like any job; until it has finished, searches build
    the index in memory, class-partitioned ones with the new classes). 409 while a job writes to
    the collection or is queued to (indexing, clear, rebuild, the rebuild of the last change):
    choose the model when it has finished."""
    from cbir.train.apply import stop_using, use_model

    training.require()
    _reader(state)
    _store(state)
    reg = training.registry(state.directory)
    name = body.model
    if name is not None and not reg.exists(name):
        raise ApiError(404, "not_found", f"no model named {name!r} (trained: "
                       f"{', '.join(reg.names()) or 'none yet'})")
    with _PARTITION_CHANGE, Collection.open(state.directory) as col:
        try:
            previous, here = partition_model(state, col)
            damaged = False
        except CollectionError:  # a damaged setting: replaced below
            previous, here, damaged = None, False, True
        if not damaged and previous == name and (here or name is None):
            return _partition_out(state, name, f"model {name} already partitions the index" if name
                                  else "no trained model partitions the index (nothing changed)", previous)
        busy = writing_job(state)
        if busy is not None:
            raise ApiError(409, "busy", BUSY.format(
                job=f": {busy['kind']} job {busy['id']} is {busy['status']}"))
        lock = col.writer_lock()
        if not lock.acquire():
            raise ApiError(409, "busy", BUSY.format(job=""))
        try:
            if name is None:
                stop_using(col)
            else:
                use_model(col, reg, name)
        finally:
            lock.release()
        state.index_cache.invalidate()
        job = _rebuild_for(state, name)
    note = (f"the saved index was dropped; rebuild job {job['id']} saves it again (until it has "
            "finished, searches build it in memory); class-partitioned searches use "
            + (f"model {name}'s classes" if name else "the extractor's own classes, if it has any"))
    return _partition_out(state, name, note, previous, job)


def _new_model_name(state: ServiceState, name: str | None) -> str:
    from cbir.train import check_name

    name = check_name(name or training.default_name())
    if training.registry(state.directory).exists(name):
        raise ApiError(409, "model_exists", f"a model named {name!r} exists; choose another name "
                       "or delete it first")
    return name


@router.post("/api/train-jobs", status_code=202, response_model=Job, responses=ERRORS,
             dependencies=Mutating, tags=["models"])
def start_train_job(state: State, body: TrainJobRequest, response: Response) -> dict[str, Any]:
    """Train a classifier from a folder with one sub-folder per class (under an allowed root)."""
    training.require()
    _, runner = _store(state)
    folder = _folder(state, body.path)
    if not folder.is_dir():
        raise InvalidRequest(f"{body.path[:200]} is a file; give a folder with one sub-folder of images "
                             "per class")
    options = body.options.model_dump(exclude_none=True)
    training.train_config(options)
    name = _new_model_name(state, body.name)
    return _accepted(response, runner.submit("train", {
        "folder": str(folder), "path": str(folder), "name": name, "trained_by": body.trained_by,
        "options": options}))


@router.post("/api/train-jobs/upload", status_code=202, response_model=Job, responses=ERRORS,
             dependencies=Mutating, tags=["models"])
def upload_train_job(
    state: State, response: Response,
    file: Annotated[UploadFile, File(description="a zip with one folder of images per class")],
    name: Annotated[str | None, Form(pattern=MODEL_NAME, max_length=64)] = None,
    trained_by: Annotated[str | None, Form(max_length=100)] = None,
) -> dict[str, Any]:
    """Upload a zip of class folders (checked against zip bombs and '..' paths) and train on it."""
    training.require()
    _, runner = _store(state)
    name = _new_model_name(state, name)
    dest = state.directory / UPLOAD_DIR / uuid.uuid4().hex
    limits = ZipLimits(max_total_bytes=state.config.max_unzip_bytes)
    try:
        safe_extract(file.file, dest, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    # a zip usually wraps the class folders in one top folder: train on that
    inner = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    folder = inner[0] if len(inner) == 1 and inner[0].is_dir() and any(
        p.is_dir() for p in inner[0].iterdir()) else dest
    return _accepted(response, runner.submit("train", {
        "folder": str(folder), "upload": str(dest), "name": name, "trained_by": trained_by,
        "uploaded": True, "options": {}}))
