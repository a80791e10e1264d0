"""The service's bridge to ``cbir.train`` (classifier heads on stored features).

Used from ``cbir.train``: ``train_from_folder(dataset, *, name, registry, extractor, config,
trained_by, cache_dir, progress, on_epoch, stop)``, ``TrainConfig``, ``ModelRegistry``
(``list``, ``meta``, ``exists``), ``default_models_dir``, ``cbir.train.curves.curves`` and
``cbir.train.apply.delete_model``. Models live in ``<collection>/models``. If any of these
is missing (an older or partial build), the training endpoints answer 501 saying which.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbir.errors import InvalidRequest
from cbir.service.errors import ApiError

#: (module, attribute) pairs the service needs
NEEDED = (("cbir.train", "train_from_folder"), ("cbir.train", "TrainConfig"),
          ("cbir.train", "ModelRegistry"), ("cbir.train", "default_models_dir"),
          ("cbir.train.curves", "curves"), ("cbir.train.apply", "delete_model"))
#: TrainConfig fields a web request may set (not threads: the server's cores are shared)
OPTIONS = ("head", "hidden", "dropout", "epochs", "patience", "val_split", "batch_size", "lr",
           "weight_decay", "balance", "monitor", "seed", "min_per_class")


def missing() -> list[str]:
    """The needed ``module.attribute`` names that cannot be imported, and torch if it is not
    installed (the ``train`` extra; empty: training works)."""
    from cbir import extras

    out = extras.missing(["torch"])
    for mod, attr in NEEDED:
        try:
            ok = hasattr(importlib.import_module(mod), attr)
        except ImportError:
            ok = False
        if not ok:
            out.append(f"{mod}.{attr}")
    return out


def available() -> bool:
    return not missing()


def require() -> None:
    """Raise 501 naming what is missing when training is not available."""
    gone = missing()
    if gone:
        from cbir.extras import install_command

        raise ApiError(501, "not_implemented", "model training is not available in this build "
                       f"(missing: {', '.join(gone)}; {install_command('train')})")


def registry(collection_dir: Path) -> Any:
    from cbir.train import ModelRegistry, default_models_dir

    return ModelRegistry(default_models_dir(collection_dir))


def list_models(collection_dir: Path) -> list[dict[str, Any]]:
    return registry(collection_dir).list()


def get_model(collection_dir: Path, name: str) -> dict[str, Any]:
    """The model's record with its curves as columns (``curves``); 404 if unknown."""
    from cbir.train.curves import curves

    reg = registry(collection_dir)
    if not reg.exists(name):
        raise ApiError(404, "not_found", f"no model named {name!r} (trained: "
                       f"{', '.join(reg.names()) or 'none yet'})")
    meta = reg.meta(name)
    return {**meta, "curves": curves(meta)}


def delete_model(collection_dir: Path, name: str, col: Any) -> dict[str, Any]:
    from cbir.train.apply import delete_model as _delete

    reg = registry(collection_dir)
    if not reg.exists(name) and not reg.weights_path(name).exists():
        raise ApiError(404, "not_found", f"no model named {name!r}")
    return _delete(reg, name, col)


def train_config(options: dict[str, Any]) -> Any:
    """A validated TrainConfig from request options (unknown keys are refused)."""
    from cbir.train import TrainConfig

    bad = sorted(set(options) - set(OPTIONS))
    if bad:
        raise InvalidRequest(f"unknown training option(s) {', '.join(bad)}; allowed: {', '.join(OPTIONS)}")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    kw: dict[str, Any] = {}
    for k, v in options.items():
        want = types.get(k)
        want = want if isinstance(want, type) else {"int": int, "float": float, "str": str}.get(str(want))
        if want is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise InvalidRequest(f"training option {k} must be a whole number, got {v!r}")
        if want is float and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InvalidRequest(f"training option {k} must be a number, got {v!r}")
        if want is str and not isinstance(v, str):
            raise InvalidRequest(f"training option {k} must be a string, got {v!r}")
        kw[k] = float(v) if want is float else v
    cfg = TrainConfig(**kw)
    cfg.validate()
    return cfg


def default_name() -> str:
    return time.strftime("model-%Y%m%d-%H%M%S")


def train(collection_dir: Path, folder: Path, *, name: str, extractor: str | None, options: dict[str, Any],
          trained_by: str | None, cache_dir: Path | None, stop: threading.Event,
          on_progress: Callable[[int, int, str], None]) -> dict[str, Any]:
    """Train a head on ``folder`` (one sub-folder per class) into the collection's registry."""
    from cbir.train import train_from_folder

    def on_epoch(s: Any) -> None:
        val = f", val acc {s.val_acc:.3f}" if s.val_acc is not None else ""
        on_progress(s.epoch, s.max_epochs, f"epoch {s.epoch} of at most {s.max_epochs}: "
                    f"loss {s.train_loss:.3f}{val}")

    warnings: list[str] = []
    res = train_from_folder(folder, name=name, registry=registry(collection_dir), extractor=extractor,
                            config=train_config(options), trained_by=trained_by, cache_dir=cache_dir,
                            progress=False, on_epoch=on_epoch, stop=stop, warn=warnings.append)
    m = res.model.meta
    keys = ("name", "classes", "head", "epochs", "best_epoch", "val_accuracy", "trained_by", "trained_at")
    return {**{k: m.get(k) for k in keys}, "stopped_early": res.stopped_early,
            "warnings": warnings + list(res.warnings)}
