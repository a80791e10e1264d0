"""The Python API: open a collection, index folders, search by image, by member, by words.

```python
import cbir

with cbir.open("photos.cbir") as col:          # create or open a collection
    report = col.index("~/Photos")               # incremental; takes the writer lock itself
    hits = col.search("query.jpg", k=10)         # a path, a PIL image, or the file's bytes
    hits = col.search_like("~/Photos/a.jpg")     # an image already indexed: no re-extraction
    res = col.scene("dog beach")                 # by words: built-in or trained concepts
    print(hits[0].to_dict(), res.hits[:1])
```

A top layer, like the CLI: it wires :mod:`cbir.collection`, :mod:`cbir.indexing`,
:mod:`cbir.search` and :mod:`cbir.scenes` together and adds nothing of its own. Importing
it is cheap: the parts (faiss, onnxruntime...) load on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbir.errors import CollectionError, InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

    from cbir import collection as _collection
    from cbir.indexing import IndexReport
    from cbir.scenes import SceneResult
    from cbir.search import Hit

    ImageSource = str | os.PathLike[str] | bytes | Image.Image

PathLike = str | os.PathLike


def _path(p: PathLike) -> Path:
    return Path(os.fspath(p)).expanduser()


def open(path: PathLike | None = None, *, extractor: str | None = None,  # noqa: A001 - cbir.open
         create: bool = True) -> Collection:
    """Open the collection at ``path`` (default: ``$CBIR_COLLECTION`` or the per-user one).

    create: make an empty collection there if there is none yet, for ``extractor`` (default
    efficientnet-lite0-int8; ``"efficientnet-lite0"`` is the fp32 model, ``"colorhist"`` a
    tiny, fast one); with ``create=False`` a missing
    collection raises CollectionError. Naming an extractor other than an existing
    collection's raises InvalidRequest. Use as a context manager, or call ``close()``.
    """
    import cbir.train.apply  # noqa: F401  (installs the trained-model partition provider)
    from cbir.collection import Collection as _Core

    directory = _path(path) if path is not None else None
    if create:
        return Collection(_Core.create_or_open(directory, extractor))
    core = _Core.open(directory)
    from cbir.extract.base import canonical_extractor_name

    if extractor and canonical_extractor_name(extractor) != core.manifest.extractor:
        core.close()
        raise InvalidRequest(f"collection {core.directory} uses extractor "
                             f"{core.manifest.extractor!r}, not {extractor!r}")
    return Collection(core)


class Collection:
    """A collection opened with :func:`cbir.open`: index, search, search by words, remove.

    Writes (``index``, ``remove``) take the collection's writer lock for their duration: a
    second writer, in this or another process, gets a CollectionError saying so. Searches
    need no lock and see what the last committed write left.
    """

    def __init__(self, core: _collection.Collection):
        self._core: _collection.Collection | None = core

    # -- life cycle -----------------------------------------------------------------------
    @property
    def core(self) -> _collection.Collection:
        """The library's collection object (:class:`cbir.collection.Collection`)."""
        if self._core is None:
            raise CollectionError("this collection is closed; open it again with cbir.open()")
        return self._core

    @property
    def path(self) -> Path:
        """The collection's folder."""
        return self.core.directory

    @property
    def extractor(self) -> str:
        """The name of the feature extractor the collection was made with."""
        return self.core.manifest.extractor

    @property
    def readonly(self) -> bool:
        """Opened from a folder we may not write to: search and inspect only."""
        return self.core.readonly

    @property
    def closed(self) -> bool:
        return self._core is None

    def close(self) -> None:
        """Close the catalog (idempotent). The collection stays on disk."""
        if self._core is not None:
            self._core.close()
            self._core = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """The number of indexed images (files that failed to index are not counted)."""
        return self.core.catalog.count("ok")

    def __repr__(self) -> str:
        if self._core is None:
            return "<cbir.Collection (closed)>"
        return f"<cbir.Collection {str(self.path)!r} extractor={self.extractor!r} images={len(self)}>"

    def info(self) -> dict[str, Any]:
        """Statistics as ``cbir info --json`` prints them: images, errors, extractor, index, sizes."""
        return self.core.info()

    # -- writing --------------------------------------------------------------------------
    def index(self, *paths: PathLike, progress: bool = False, index_type: str | None = None,
              retry_errors: bool = False, regions: bool = False, batch_size: int = 32) -> IndexReport:
        """Bring the collection up to date with folders (or single files), like ``cbir index``.

        Only new or changed files are read; files gone from disk are dropped. progress: a
        progress bar on stderr. index_type: the vector index to use from now on ("auto"
        chooses by size). Returns an IndexReport (``.added``, ``.failed``, ``.to_dict()``...).
        """
        from cbir.indexing import index_paths

        if not paths:
            raise InvalidRequest("give at least one folder or image file to index")
        roots = [_path(p) for p in paths]
        for p in roots:
            if not os.path.lexists(p):
                raise InvalidRequest(f"{p}: no such file or folder")
        core = self.core
        with core.writer_lock():
            if index_type:
                core.set_requested_index(index_type)
            return index_paths(core, roots, batch_size=batch_size, regions=regions,
                               retry_errors=retry_errors, progress=progress)

    def remove(self, *paths: PathLike) -> int:
        """Drop files, or everything indexed under folders, from the collection (not from disk).

        Returns the number of images removed (0 when none of the paths was indexed).
        """
        from cbir.indexing import remove_paths

        core = self.core
        with core.writer_lock():
            n, _missing = remove_paths(core, [_path(p) for p in paths])
        return n

    # -- searching ------------------------------------------------------------------------
    def search(self, image: ImageSource | Sequence[ImageSource], k: int = 10, *,
               min_similarity: float = 0.0, index_type: str | None = None,
               rerank: str = "none", min_match: float = 0.0,
               filters: dict[str, Any] | None = None) -> list[Hit]:
        """The ``k`` indexed images most like ``image``, best first.

        filters: ``{"folder": ..., "after": "2021", "before": ..., "camera": "canon",
        "min_width": 1000, "min_height": ..., "tags": [...], "gps": True}`` (any of them).

        image: a file path, the file's bytes, a PIL image, or a list of these (their mean
        feature is searched). Each Hit has rank, path, similarity 1/(1+distance), distance,
        cosine, match (0-100, for people: 0 = as alike as two random photos of the
        collection), labels, tags, and ``to_dict()``. rerank: ``"qe"`` (query expansion) or
        ``"kr"`` (k-reciprocal) re-orders the first 100 hits (docs/reranking.md).
        """
        from cbir.search import query_from_images, search

        images = list(image) if isinstance(image, list | tuple) else [image]
        core = self.core
        query = query_from_images(core, [_path(x) if isinstance(x, str | os.PathLike) else x
                                         for x in images])
        return search(core, query, k=k, min_similarity=min_similarity, index_kind=index_type,
                      rerank=rerank, min_match=min_match, filters=_filters(filters))

    def search_like(self, path: PathLike | Sequence[PathLike], k: int = 10, *,
                    min_similarity: float = 0.0, include_self: bool = False,
                    index_type: str | None = None, rerank: str = "none",
                    min_match: float = 0.0, filters: dict[str, Any] | None = None) -> list[Hit]:
        """Like :meth:`search`, by image(s) already in the collection: their stored features
        are used, nothing is decoded. The query images are left out unless include_self."""
        from cbir.search import query_from_members, search

        paths = list(path) if isinstance(path, list | tuple) else [path]
        core = self.core
        query = query_from_members(core, [_path(p) for p in paths], exclude_self=not include_self)
        return search(core, query, k=k, min_similarity=min_similarity, index_kind=index_type,
                      rerank=rerank, min_match=min_match, filters=_filters(filters))

    def scene(self, words: str | Sequence[str], k: int = 20, *, model: str | None = None,
              min_score: float = 0.0, filters: dict[str, Any] | None = None) -> SceneResult:
        """Images that show ALL the words of the query (``"dog beach"``), best first.

        With no trained concept model (or ``model="builtin"``) the built-in concepts answer
        (ImageNet classes and their WordNet hypernyms; needs the default extractor); else
        the collection's trained model (``cbir concepts train``). Returns a SceneResult:
        ``.hits`` (SceneHit: rank, path, score, evidence), ``.notes`` on how words were read.
        """
        from cbir.scenes import scene_search

        return scene_search(self.core, words, k=k, model_name=model, min_score=min_score,
                            filters=_filters(filters))


def _filters(filters: dict[str, Any] | None) -> Any:
    """The API's filter dict as :class:`cbir.store.photometa.Filters` (unknown keys refused)."""
    if not filters:
        return None
    import dataclasses

    from cbir.store.photometa import Filters

    known = {f.name for f in dataclasses.fields(Filters)}
    bad = sorted(set(filters) - known)
    if bad:
        raise InvalidRequest(f"unknown filter(s) {', '.join(bad)}; use {', '.join(sorted(known))}")
    return Filters(**filters)
