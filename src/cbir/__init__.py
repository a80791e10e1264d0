"""cbir: content-based image retrieval on a CPU."""

__version__ = "0.1.0"

# The Python API (README: "Python API"). Importing cbir stays cheap: the names below load
# their modules (and with them numpy, faiss, onnxruntime...) on first access.
from typing import TYPE_CHECKING as _TYPE_CHECKING

from cbir.errors import (
    BackendUnavailable,
    CbirError,
    CbirWarning,
    CollectionError,
    IndexMismatch,
    InvalidImage,
    InvalidRequest,
    UnknownComponent,
)

_LAZY = {
    "open": "cbir.api",
    "Collection": "cbir.api",
    "Hit": "cbir.search",
    "SceneHit": "cbir.scenes",
    "SceneResult": "cbir.scenes",
    "IndexReport": "cbir.indexing",
}

__all__ = [
    "open", "Collection", "Hit", "SceneHit", "SceneResult", "IndexReport",
    "CbirError", "CollectionError", "InvalidImage", "InvalidRequest", "IndexMismatch",
    "BackendUnavailable", "UnknownComponent", "CbirWarning", "__version__",
]


def __getattr__(name: str):  # PEP 562: lazy public names
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cbir' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if _TYPE_CHECKING:
    from cbir.api import Collection, open  # noqa: A004
    from cbir.indexing import IndexReport
    from cbir.scenes import SceneHit, SceneResult
    from cbir.search import Hit
