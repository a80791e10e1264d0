"""Pydantic models of the API's requests and responses (they make the OpenAPI schema)."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from cbir.index import INDEXES

#: the vector index backends a search may ask for
IndexType = Enum("IndexType", {n.replace("-", "_"): n for n in INDEXES.names()}, type=str)  # type: ignore[misc]

#: re-ranking of the first hits (cbir.rerank)
Rerank = Literal["none", "qe", "kr"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
JobKind = Literal["index", "clear", "rebuild", "train"]


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. invalid_image")
    detail: Any = Field(description="what went wrong and how to fix it")


class Label(BaseModel):
    label: str
    prob: float


class HitOut(BaseModel):
    rank: int
    id: int
    path: str
    name: str = Field(description="file name of the image")
    similarity: float = Field(description="1 / (1 + Euclidean distance), 0..1")
    distance: float
    cosine: float
    match: float | None = Field(None, description="0-100 for people: 0 = as alike as two random photos "
                                "of the collection, 100 = the same image")
    labels: list[Label] = []
    tags: list[str] = []
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    query: dict[str, Any] = Field(description="what was searched: an upload or an image id")
    k: int
    index_type: str | None
    collection_images: int = Field(description="images in the collection at search time")
    took_ms: float
    hits: list[HitOut]


class ImageInfo(BaseModel):
    id: int
    path: str
    name: str
    width: int | None
    height: int | None
    size: int
    labels: list[Label] = []
    tags: list[str] = []
    indexed_at: float
    image_url: str
    thumbnail_url: str


class JobRef(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus


class CollectionInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    exists: bool
    collection: str
    images: int = 0
    errors: int = 0
    extractor: str | None = None
    index_type: str | None = None
    partition_model: str | None = Field(None, description="the trained model whose classes partition the "
                                        "class-partitioned index (PUT /api/partition-model); null: the "
                                        "extractor's own classes")
    class_partitioned_available: bool | None = Field(None, description="searches may ask for "
                                                     "index_type=class-partitioned: a model is in use, or "
                                                     "the extractor predicts classes")
    index_job: JobRef | None = Field(None, description="this server's job that writes the collection's "
                                     "index now (running) or next (queued): indexing, clear or rebuild, "
                                     "e.g. the rebuild after PUT /api/partition-model; null: none")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    collection_exists: bool
    images: int
    auth_required: bool
    #: reads (search, images, jobs, metrics) need the token too: a non-loopback bind without --public-read
    read_auth_required: bool = False
    indexing_enabled: bool
    training_available: bool
    jobs_active: int


class Roots(BaseModel):
    roots: list[str]


class IndexJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096,
                      description="folder to index, inside an allowed root (relative = to the first)")
    index_type: IndexType | None = Field(default=None, description="index for the collection "
                                         "(default: keep the collection's setting)")
    retry_errors: StrictBool = Field(default=False, description="try again files that failed before")


class ClearRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confirm: Literal[True] = Field(description="must be true: every image is removed from the collection")


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index_type: IndexType | None = Field(default=None, description="switch the index type while rebuilding")
    rescan: StrictBool = Field(default=False, description="also re-index every folder indexed before")


class TrainOptions(BaseModel):
    """Hyper-parameters of cbir.train.TrainConfig that a web request may set."""

    model_config = ConfigDict(extra="forbid")
    head: Literal["linear", "mlp"] | None = None
    hidden: int | None = Field(default=None, ge=1, le=65536)
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    epochs: int | None = Field(default=None, ge=1, le=10000)
    patience: int | None = Field(default=None, ge=1, le=10000)
    val_split: float | None = Field(default=None, ge=0.0, le=0.5)
    batch_size: int | None = Field(default=None, ge=1, le=65536)
    lr: float | None = Field(default=None, gt=0.0, le=10.0)
    weight_decay: float | None = Field(default=None, ge=0.0, le=10.0)
    balance: Literal["weights", "sampler", "none"] | None = None
    monitor: Literal["val_loss", "val_acc"] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    min_per_class: int | None = Field(default=None, ge=2, le=1_000_000)


class TrainJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096, description="folder with one sub-folder per class")
    name: str | None = Field(default=None, max_length=64,
                             pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$",
                             description="model name (default model-YYYYMMDD-HHMMSS)")
    trained_by: str | None = Field(default=None, max_length=100, description="recorded in the model")
    options: TrainOptions = Field(default_factory=lambda: TrainOptions(),
                                  description="training settings (unset: cbir.train's defaults)")


class ProblemFile(BaseModel):
    path: str
    reason: str


class Job(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    params: dict[str, Any]
    done: int = Field(description="items processed so far")
    total: int = Field(description="items to process (0 while unknown)")
    percent: float = Field(description="0..100; 100 once the job succeeded")
    message: str
    errors: list[ProblemFile] = Field(description="files that failed (the first 200)")
    error_count: int
    result: dict[str, Any] | None
    created: float
    started: float | None
    finished: float | None


class JobList(BaseModel):
    jobs: list[Job]


class ModelList(BaseModel):
    models: list[dict[str, Any]]


class PartitionModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(max_length=64, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$",
                              description="a trained model's name (`cbir models use NAME`), or null to go "
                              "back to the extractor's classes (`cbir models use --none`)")


class PartitionModel(BaseModel):
    model: str | None = Field(description="the model whose classes partition the class-partitioned index; "
                              "null: the extractor's own (ImageNet) classes, if it has any")
    classes: list[str] | None = Field(None, description="the model's classes (the index's tables)")
    class_partitioned_available: bool = Field(description="searches may ask for "
                                              "index_type=class-partitioned (and model searches for "
                                              "partitioned=true with this model)")
    previous: str | None = Field(None, description="the model in use before this change (PUT only)")
    note: str = Field(description="what happens next, for people")
    job: Job | None = Field(None, description="PUT: the rebuild job that saves the index again with the "
                            "new classes (follow it at /api/jobs/{id}); null when nothing changed")
