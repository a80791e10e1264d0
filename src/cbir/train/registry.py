"""The model registry: one directory, two files per trained model.

```
<models>/<name>.safetensors   the head's float32 tensors (no pickle: safetensors only)
<models>/<name>.json          the record: who trained it, when, classes, epochs, validation
                              accuracy, per-epoch curve, extractor name + dim, head, format
<models>/<name>.backbone.onnx a fine-tuned model's backbone (``cbir train --finetune``): the
                              extractor ``finetuned:<name>`` (see ``cbir.extract.finetuned``)
```

The default directory is ``<collection>/models`` (``--models DIR`` overrides it): a model
only works with the extractor that made its training features, a collection fixes one
extractor, and what depends on a model (the collection's choice of partitioning model and
the index built from it) lives in the same collection, so deleting either stays local.

Writes are atomic: the weights (and a fine-tuned backbone) go to temporary files that are
renamed into place, then the JSON (which carries their sha256) is written the same way. The JSON is the commit
point: a model exists when its JSON does, and a weights file that does not match its JSON's
sha256 (a crash mid-overwrite) is reported as damaged instead of being used.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from cbir.atomic import atomic_write_bytes
from cbir.errors import CollectionError, InvalidRequest
from cbir.store.manifest import write_json_atomic
from cbir.train.model import FORMAT_VERSION, ClassifierModel

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODELS_DIRNAME = "models"


def check_name(name: str) -> str:
    """A model name: 1-64 letters, digits, '.', '_' or '-', not starting with '.' (no paths)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidRequest(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (no '/' or '..')")
    return name


def default_models_dir(collection_dir: Path | None = None) -> Path:
    """``<collection>/models`` (the collection defaults as for every command)."""
    from cbir.collection import default_collection_dir

    return Path(collection_dir or default_collection_dir()) / MODELS_DIRNAME


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




class ModelRegistry:
    """Trained models in ``directory`` (created on the first save)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def weights_path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}.safetensors"

    def meta_path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}.json"

    def backbone_path(self, name: str) -> Path:
        """A fine-tuned model's backbone ONNX file."""
        from cbir.extract.finetuned import BACKBONE_SUFFIX

        return self.directory / f"{check_name(name)}{BACKBONE_SUFFIX}"

    def exists(self, name: str) -> bool:
        return self.meta_path(name).exists()

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json") if NAME_RE.match(p.stem))

    def check_new(self, name: str, *, overwrite: bool = False) -> None:
        """Fail fast if ``name`` is invalid or taken (unless ``overwrite``)."""
        if self.exists(name) and not overwrite:
            raise InvalidRequest(f"a model named {name!r} already exists in {self.directory}; choose "
                                 f"another --name, or delete it first (`cbir models delete {name}`)")

    # -- save / load ------------------------------------------------------------------------
    def save(self, model: ClassifierModel, *, overwrite: bool = False,
             backbone: bytes | None = None) -> Path:
        """Write ``<name>.safetensors`` (and ``backbone``, a fine-tuned model's ONNX bytes, as
        ``<name>.backbone.onnx``) then ``<name>.json``, each atomically. Returns the JSON path."""
        from safetensors.numpy import save

        name = check_name(model.name)
        if bool(backbone) != bool(model.meta.get("finetuned")):
            raise InvalidRequest("a fine-tuned model is saved with its backbone, and only it")
        self.check_new(name, overwrite=overwrite)
        self.directory.mkdir(parents=True, exist_ok=True)
        header = {"format": "cbir-classifier", "format_version": str(FORMAT_VERSION),
                  "name": name, "head": model.head}
        data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.weights.items()},
                    metadata=header)
        meta = dict(model.meta)
        meta["weights_file"] = self.weights_path(name).name
        meta["weights_sha256"] = _sha256(data)
        meta["weights_bytes"] = len(data)
        atomic_write_bytes(self.weights_path(name), data)
        if backbone:
            meta["backbone"] = {**meta.get("backbone", {}), "onnx_file": self.backbone_path(name).name,
                                "onnx_sha256": _sha256(backbone), "onnx_bytes": len(backbone)}
            atomic_write_bytes(self.backbone_path(name), backbone)
        write_json_atomic(self.meta_path(name), meta)
        model.meta = meta
        if backbone:
            from cbir.extract.finetuned import write_pointer

            write_pointer(name, self.directory, meta["backbone"]["onnx_sha256"])
        else:  # an overwritten fine-tuned model leaves no stale backbone behind
            self.backbone_path(name).unlink(missing_ok=True)
        return self.meta_path(name)

    def meta(self, name: str) -> dict[str, Any]:
        """The JSON record of ``name``; a clear error if there is none or it is unreadable."""
        path = self.meta_path(name)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            known = ", ".join(self.names()) or "none yet"
            raise InvalidRequest(f"no model named {name!r} in {self.directory} (trained: {known}); "
                                 "train one with `cbir train FOLDER --name NAME`") from None
        except (OSError, ValueError) as e:
            raise CollectionError(f"model record {path} is unreadable ({e}); delete the model "
                                  f"(`cbir models delete {name}`) and train it again") from None
        if not isinstance(raw, dict) or raw.get("format") != "cbir-classifier":
            raise CollectionError(f"{path} is not a cbir model record")
        version = raw.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CollectionError(f"model {name!r} has format version {version!r}, newer than this "
                                  f"cbir understands ({FORMAT_VERSION}); upgrade cbir")
        return raw

    def load(self, name: str) -> ClassifierModel:
        """Load weights (safetensors, checked against the record's sha256) and metadata."""
        from safetensors.numpy import load

        meta = self.meta(name)
        path = self.weights_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CollectionError(f"model {name!r} has a record but no weights file {path.name}; "
                                  f"delete it (`cbir models delete {name}`) and train again") from None
        if meta.get("weights_sha256") and _sha256(data) != meta["weights_sha256"]:
            raise CollectionError(f"the weights of model {name!r} do not match its record (damaged or "
                                  f"half-overwritten); delete it and train again")
        try:
            weights = load(data)
        except Exception as e:  # noqa: BLE001 — a corrupt file gets one clear message
            raise CollectionError(f"cannot read {path}: {e}") from None
        return ClassifierModel(weights, meta)

    def list(self) -> list[dict[str, Any]]:
        """One summary row per model (an unreadable one gets an ``error`` field)."""
        rows = []
        for name in self.names():
            try:
                m = self.meta(name)
            except Exception as e:  # noqa: BLE001 — list what can be read, flag the rest
                rows.append({"name": name, "error": str(e)})
                continue
            rows.append({"name": name, "classes": len(m.get("classes", [])),
                         "head": m.get("head", {}).get("type"), "epochs": m.get("epochs"),
                         "val_accuracy": m.get("val_accuracy"), "trained_by": m.get("trained_by"),
                         "trained_at": m.get("trained_at"),
                         "extractor": m.get("extractor", {}).get("name"),
                         "finetuned": bool(m.get("finetuned", False))})
        return rows

    def delete(self, name: str) -> bool:
        """Remove the record first (so the model is gone at once), then the weights and backbone."""
        from cbir.extract.finetuned import remove_pointer

        existed = any(p.exists() for p in (self.meta_path(name), self.weights_path(name),
                                           self.backbone_path(name)))
        self.meta_path(name).unlink(missing_ok=True)
        self.weights_path(name).unlink(missing_ok=True)
        self.backbone_path(name).unlink(missing_ok=True)
        remove_pointer(name, self.directory)
        return existed
