"""The model registry: one directory, two files per trained model.

```
<models>/<name>.json                the record: who trained it, when, classes, epochs, validation
                                    accuracy, per-epoch curve, extractor name + dim, head, format,
                                    and the file name, size and sha256 of each file below
<models>/<name>.<token>.safetensors the head's float32 tensors (no pickle: safetensors only)
<models>/<name>.<token>.backbone.onnx a fine-tuned model's backbone (``cbir train --finetune``):
                                    the extractor ``finetuned:<name>`` (see ``cbir.extract.finetuned``)
```

``<token>`` is new random hex for every save (models saved by older versions use
``<name>.safetensors``; their records name that file, so they still load).

The default directory is ``<collection>/models`` (``--models DIR`` overrides it): a model
only works with the extractor that made its training features, a collection fixes one
extractor, and what depends on a model (the collection's choice of partitioning model and
the index built from it) lives in the same collection, so deleting either stays local.

Saving (also ``--overwrite``) never touches the files of the model being replaced: the new
weights (and backbone) are written atomically under a fresh token, then the JSON record
(which names them and carries their sha256) is replaced with one atomic ``os.replace``, the
switch; only then are the old files removed. A kill at any point leaves the old model or
the new one, whole (plus unused files that ``cbir verify`` notes and the next save of the
name removes). A record whose files are missing or do not match their sha256 is reported
as damaged by ``models list`` and ``cbir verify``, and refused by ``load``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbir.atomic import atomic_write_bytes
from cbir.errors import CbirError, CollectionError, InvalidRequest
from cbir.paths import MODELS_DIRNAME, default_models_dir  # noqa: F401  (re-exported)
from cbir.store.manifest import write_json_atomic
from cbir.train.model import FORMAT_VERSION, ClassifierModel

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """A model name: 1-64 letters, digits, '.', '_' or '-', not starting with '.' (no paths)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidRequest(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (no '/' or '..')")
    return name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain_file(name: object, record: Path) -> str:
    """A file name from a record: a plain name in the models folder (no path)."""
    if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
        raise CollectionError(f"model record {record} names a bad file {name!r}")
    return name




class ModelRegistry:
    """Trained models in ``directory`` (created on the first save)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _default_weights(self, name: str) -> Path:
        """``<name>.safetensors``: where models saved by older versions keep their weights."""
        return self.directory / f"{check_name(name)}.safetensors"

    def _default_backbone(self, name: str) -> Path:
        from cbir.extract.finetuned import BACKBONE_SUFFIX

        return self.directory / f"{check_name(name)}{BACKBONE_SUFFIX}"

    def _current_file(self, name: str, kind: str, default: Path) -> Path:
        try:
            found = [p for k, p, _ in self.files(name) if k == kind] if self.exists(name) else []
        except CbirError:
            found = []
        return found[0] if found else default

    def weights_path(self, name: str) -> Path:
        """The weights file of ``name``: the one its record names, else ``<name>.safetensors``."""
        return self._current_file(name, "weights", self._default_weights(name))

    def meta_path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}.json"

    def backbone_path(self, name: str) -> Path:
        """A fine-tuned model's backbone ONNX file (the one its record names, if any)."""
        return self._current_file(name, "backbone", self._default_backbone(name))

    def exists(self, name: str) -> bool:
        return self.meta_path(name).exists()

    def files(self, name: str, meta: dict[str, Any] | None = None) -> list[tuple[str, Path, str | None]]:
        """(kind, path, sha256 or None) of the files the record of ``name`` points to.

        ``kind`` is "weights" or "backbone"; records of older versions name no file: the
        default names are used.
        """
        meta = self.meta(name) if meta is None else meta
        rec = self.meta_path(name)
        out: list[tuple[str, Path, str | None]] = [
            ("weights", self.directory / _plain_file(meta.get("weights_file") or
                                                     self._default_weights(name).name, rec),
             meta.get("weights_sha256"))]
        bb = meta.get("backbone") or {}
        if meta.get("finetuned") or bb.get("onnx_file"):
            out.append(("backbone", self.directory / _plain_file(
                bb.get("onnx_file") or self._default_backbone(name).name, rec), bb.get("onnx_sha256")))
        return out

    def problems(self, name: str) -> list[str]:
        """Why model ``name`` cannot be used ([] if it is whole): record, files, checksums."""
        from safetensors.numpy import load

        try:
            meta = self.meta(name)
            files = self.files(name, meta)
        except CbirError as e:
            return [f"model {name!r} is damaged: {e}"]
        out = []
        for kind, path, sha in files:
            try:
                got = _sha256_file(path)
            except FileNotFoundError:
                out.append(f"model {name!r} is damaged: its {kind} file {path.name} is missing")
                continue
            except OSError as e:
                out.append(f"model {name!r} is damaged: its {kind} file {path.name} is unreadable ({e})")
                continue
            if sha and got != sha:
                out.append(f"model {name!r} is damaged: its {kind} file {path.name} does not match "
                           "the sha256 in its record (changed or half-written)")
            elif not sha and kind == "weights":  # an old record without a checksum: can it be read?
                try:
                    load(path.read_bytes())
                except Exception as e:  # noqa: BLE001 — any failure means damaged
                    out.append(f"model {name!r} is damaged: its weights file {path.name} cannot be "
                               f"read ({e})")
        return out

    def _loose_files(self) -> list[Path]:
        """Weights and backbone files no record points to (a killed save's, an old model's)."""
        from cbir.extract.finetuned import BACKBONE_SUFFIX

        if not self.directory.is_dir():
            return []
        used: set[str] = set()
        unreadable: list[str] = []
        for name in self.names():
            try:
                used |= {p.name for _, p, _ in self.files(name)}
            except CbirError:
                unreadable.append(name + ".")
        return sorted(
            p for p in self.directory.iterdir()
            if p.is_file() and p.name.endswith((".safetensors", BACKBONE_SUFFIX))
            and p.name not in used and not p.name.startswith(tuple(unreadable)))

    def _loose_files_of(self, name: str) -> list[Path]:
        """Loose files that ``name`` wrote (``<name>.safetensors`` or ``<name>.<token>...``)."""
        own = re.compile(re.escape(name) + r"(\.[0-9a-f]{16})?(\.safetensors|\.backbone\.onnx)")
        return [p for p in self._loose_files() if own.fullmatch(p.name)]

    def verify(self) -> tuple[list[str], list[str]]:
        """(problems, notes) of every model here, for ``cbir verify``."""
        problems: list[str] = []
        for name in self.names():
            problems += self.problems(name)
        loose = [p.name for p in self._loose_files()]
        notes = [f"{len(loose)} model file(s) in {self.directory} belong to no model, left by an "
                 "interrupted `cbir train` or save (harmless; the next save of that name removes "
                 "them): " + ", ".join(loose[:5])] if loose else []
        return problems, notes

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

        from cbir.extract.finetuned import BACKBONE_SUFFIX

        name = check_name(model.name)
        if bool(backbone) != bool(model.meta.get("finetuned")):
            raise InvalidRequest("a fine-tuned model is saved with its backbone, and only it")
        self.check_new(name, overwrite=overwrite)
        started = time.time()
        self.directory.mkdir(parents=True, exist_ok=True)
        header = {"format": "cbir-classifier", "format_version": str(FORMAT_VERSION),
                  "name": name, "head": model.head}
        data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.weights.items()},
                    metadata=header)
        # new files under a fresh name, beside (never over) those of the model being replaced
        token = secrets.token_hex(8)
        weights = self.directory / f"{name}.{token}.safetensors"
        onnx = self.directory / f"{name}.{token}{BACKBONE_SUFFIX}"
        meta = dict(model.meta)
        meta["weights_file"] = weights.name
        meta["weights_sha256"] = _sha256(data)
        meta["weights_bytes"] = len(data)
        try:
            atomic_write_bytes(weights, data)
            if backbone:
                meta["backbone"] = {**meta.get("backbone", {}), "onnx_file": onnx.name,
                                    "onnx_sha256": _sha256(backbone), "onnx_bytes": len(backbone)}
                atomic_write_bytes(onnx, backbone)
            try:
                old = [p for _, p, _ in self.files(name)] if self.exists(name) else []
            except CbirError:  # an unreadable old record: its files are found as loose ones below
                old = []
            write_json_atomic(self.meta_path(name), meta)  # the switch: one os.replace
        except Exception:  # no switch: the old model stays whole, the new files go
            weights.unlink(missing_ok=True)
            onnx.unlink(missing_ok=True)
            raise
        model.meta = meta
        if backbone:
            from cbir.extract.finetuned import write_pointer

            write_pointer(name, self.directory, meta["backbone"]["onnx_sha256"])
        # only now the replaced model's files, and any a killed save of this name left (not
        # those of a save of it running meanwhile, which started after this one)
        keep = {p.name for _, p, _ in self.files(name, meta)}
        loose = [p for p in self._loose_files_of(name) if p.stat().st_mtime < started]
        for p in [*old, *loose]:
            if p.name not in keep:
                p.unlink(missing_ok=True)
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
        path = self.files(name, meta)[0][1]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CollectionError(f"model {name!r} is damaged: it has a record but no weights file "
                                  f"{path.name}; delete it (`cbir models delete {name}`) and train "
                                  "again") from None
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
            row = {"name": name, "classes": len(m.get("classes", [])),
                   "head": m.get("head", {}).get("type"), "epochs": m.get("epochs"),
                   "val_accuracy": m.get("val_accuracy"), "trained_by": m.get("trained_by"),
                   "trained_at": m.get("trained_at"),
                   "extractor": m.get("extractor", {}).get("name"),
                   "finetuned": bool(m.get("finetuned", False))}
            problems = self.problems(name)  # missing or changed files: flagged, not shown healthy
            if problems:
                row["error"] = "; ".join(problems)
            rows.append(row)
        return rows

    def delete(self, name: str) -> bool:
        """Remove the record first (so the model is gone at once), then the weights and backbone."""
        from cbir.extract.finetuned import remove_pointer

        try:
            files = [p for _, p, _ in self.files(name)] if self.exists(name) else []
        except CbirError:
            files = []
        files += [self._default_weights(name), self._default_backbone(name)]
        existed = any(p.exists() for p in (self.meta_path(name), *files))
        self.meta_path(name).unlink(missing_ok=True)
        for p in [*files, *self._loose_files_of(name)]:
            p.unlink(missing_ok=True)
        remove_pointer(name, self.directory)
        return existed
