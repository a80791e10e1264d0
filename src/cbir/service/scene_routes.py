"""REST endpoints for concept search (SSIR): scene queries, concept models, concept prediction.

Concept models are trained from the CLI (`cbir concepts train`); the service reads them
from the collection it serves, so a query sees the latest saved model on every call.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, Field

from cbir.errors import InvalidRequest
from cbir.io.images import load_image
from cbir.service.errors import ApiError
from cbir.service.filter_params import search_filters
from cbir.service.routes import ERRORS, MAX_K, MODEL_NAME, _reader, get_state, read_upload
from cbir.service.state import ServiceState

router = APIRouter()
State = Annotated[ServiceState, Depends(get_state)]
MAX_QUERY = 500


class ConceptEvidence(BaseModel):
    visual: float = Field(description="p(concept | image) from the visual classifier")
    text: float | None = Field(description="p(concept | tags) from the text classifier; null without tags")
    probability: float | None = Field(None, description="a trained concept's fused probability "
                                      "(visual, tags, absent tags) when the query mixes models")


class SceneHitOut(BaseModel):
    rank: int
    id: int
    path: str
    name: str
    score: float = Field(description="fused relevance r(Q, (I, T)), eqs. 7-9 of SSIR")
    evidence: dict[str, ConceptEvidence]
    components: dict[str, float] = Field(description="the four relevance terms before fusion")
    tags: list[str] = []
    image_url: str
    thumbnail_url: str


class SceneResponse(BaseModel):
    query: list[str] = Field(description="the concepts searched for (after synonyms and spelling)")
    notes: list[str] = Field(description="how query words that are not concept names were read")
    model: str
    k: int
    took_ms: float
    hits: list[SceneHitOut]


class ConceptModelOut(BaseModel):
    name: str
    vocab: str | None = None
    concepts: int | None = None
    concept_sets: int | None = None
    text_branch: bool | None = None
    weights: list[float] | None = None
    k_rc: int | None = None
    trained_at: str | None = None
    error: str | None = None


class ConceptScore(BaseModel):
    concept: str
    probability: float


class ConceptPrediction(BaseModel):
    name: str
    model: str
    concepts: list[ConceptScore]


def _load(reader: Any, name: str | None) -> Any:
    """The named (or only) concept model; a missing one is a 404 that says how to make it."""
    from cbir.scenes import load_concept_model

    try:
        return load_concept_model(reader, name)
    except InvalidRequest as e:
        raise ApiError(404, "no_concept_model", str(e)) from None


@router.get("/api/scenes", response_model=SceneResponse, responses=ERRORS, tags=["concepts"])
def scene_search_route(
    state: State,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY,
                            description='concepts, e.g. "sky water boats" or "polar bear, snow"')],
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
    model: Annotated[str | None, Query(max_length=64, pattern=MODEL_NAME,
                                       description="concept model (default: the only trained one, else "
                                                   "'builtin', the concepts every collection has)")] = None,
    filters: Annotated[Any, Depends(search_filters)] = None,
) -> SceneResponse:
    """Images that show ALL the concepts of the query, best first, with per-concept evidence."""
    from cbir.scenes import scene_search

    t0 = time.perf_counter()
    reader = _reader(state)
    if model is None or model == "builtin":  # no training needed: the built-in concepts answer
        res = scene_search(reader, q, k=k, model_name=model, filters=filters)
    else:
        res = scene_search(reader, q, k=k, model=_load(reader, model), filters=filters)
    hits = [SceneHitOut(rank=h.rank, id=h.id, path=h.path, name=os.path.basename(h.path), score=h.score,
                        evidence={c: ConceptEvidence(**e) for c, e in h.evidence.items()},
                        components=h.components, tags=h.tags, image_url=f"/api/images/{h.id}",
                        thumbnail_url=f"/api/images/{h.id}/thumbnail") for h in res.hits]
    return SceneResponse(query=res.query, notes=res.notes, model=res.model, k=k,
                         took_ms=round((time.perf_counter() - t0) * 1000, 2), hits=hits)


@router.get("/api/concept-models", response_model=list[ConceptModelOut], responses=ERRORS,
            tags=["concepts"])
def concept_models(state: State) -> list[dict[str, Any]]:
    """The collection's concept models (train one with `cbir concepts train`)."""
    from cbir.scenes import list_concept_models

    if not state.readers.exists():
        return []
    return list_concept_models(_reader(state))


@router.post("/api/concepts/predict", response_model=ConceptPrediction, responses=ERRORS,
             tags=["concepts"])
def predict_route(
    request: Request,
    state: State,
    file: Annotated[UploadFile, File(description="an image (any format Pillow reads)")],
    top: Annotated[int, Form(ge=1, le=100)] = 10,
    model: Annotated[str | None, Form(max_length=64, pattern=MODEL_NAME)] = None,
) -> ConceptPrediction:
    """Predicted concepts with probabilities for an uploaded image (visual classifier)."""
    from cbir.scenes import predict_image_concepts

    data, name = read_upload(state, file)
    reader = _reader(state)
    m = _load(reader, model)
    image = load_image(data, target_size=reader.extractor.input_size, max_pixels=state.config.max_pixels,
                       name=name)
    concepts = predict_image_concepts(reader, [image], [[]], model=m, top=top)[0]
    return ConceptPrediction(name=name, model=m.name, concepts=[ConceptScore(**c) for c in concepts])
