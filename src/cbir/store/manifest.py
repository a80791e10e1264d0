"""The collection's self-describing ``manifest.json``.

It records the format version and the extractor (name, dim, preprocessing) that made
the stored vectors, so a collection is never searched or extended with vectors from
another extractor, and a newer format is refused instead of misread.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cbir import __version__
from cbir.atomic import atomic_write_json
from cbir.errors import CollectionError, IndexMismatch

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class Manifest:
    extractor: str
    dim: int
    preprocessing: dict[str, Any]
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    cbir_version: str = __version__

    def check_extractor(self, name: str, dim: int, preprocessing: dict[str, Any]) -> None:
        """Refuse an extractor that differs from the one that made this collection."""
        if name != self.extractor or dim != self.dim:
            raise IndexMismatch(
                f"this collection was made with extractor {self.extractor!r} (dim {self.dim}), "
                f"not {name!r} (dim {dim}); use another --collection or re-create it"
            )
        if _jsonable(preprocessing) != _jsonable(self.preprocessing):
            raise IndexMismatch(
                f"extractor {name!r} now preprocesses images differently from when this "
                "collection was made; its vectors would not be comparable. Re-create the collection"
            )


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` so that readers see the old or the new file, never half of one."""
    atomic_write_json(path, obj)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(directory) / MANIFEST_NAME, asdict(manifest))


def read_manifest(directory: Path) -> Manifest:
    """Read and validate the manifest; raise CollectionError with what to do."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CollectionError(
            f"{directory} is not a cbir collection (no {MANIFEST_NAME}); run `cbir index FOLDER` first"
        ) from None
    except (OSError, ValueError) as e:
        raise CollectionError(f"cannot read {path}: {e}") from None
    def malformed(what: str) -> CollectionError:
        return CollectionError(f"{path} is malformed: {what}; restore it from a backup, or "
                               "index the folders again into a new collection")

    if not isinstance(raw, dict):
        raise malformed(f"expected a JSON object, found {_json_kind(raw)}")
    version = raw.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CollectionError(f"{path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise CollectionError(
            f"collection {directory} has format version {version}, newer than this cbir "
            f"understands ({FORMAT_VERSION}); upgrade cbir"
        )
    missing = [k for k in ("extractor", "dim") if k not in raw]
    if missing:
        raise malformed("missing " + " and ".join(repr(k) for k in missing))
    extractor, dim = raw["extractor"], raw["dim"]
    if not isinstance(extractor, str) or not extractor.strip():
        raise malformed(f"'extractor' must be a name, found {_json_kind(extractor)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise malformed(f"'dim' must be a positive whole number, found {_json_kind(dim)}")
    preprocessing = raw.get("preprocessing", {})
    if not isinstance(preprocessing, dict):
        raise malformed(f"'preprocessing' must be an object, found {_json_kind(preprocessing)}")
    return Manifest(
        extractor=extractor,
        dim=dim,
        preprocessing=preprocessing,
        format_version=version,
        created=str(raw.get("created", "")),
        cbir_version=str(raw.get("cbir_version", "")),
    )


def _json_kind(value: Any) -> str:
    """A JSON value described for an error message: its kind, and itself when short."""
    kind = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")
    text = json.dumps(value, ensure_ascii=False)
    return kind if value is None or len(text) > 40 else f"{kind} ({text})"
