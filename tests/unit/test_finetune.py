"""Fine-tuning pieces: extractor names, finding a model, registry files, the activation cache,
the torch split of the backbone, and the fine-tuned ONNX export against torch."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cbir.errors import CollectionError, IndexMismatch, InvalidRequest
from cbir.extract import EXTRACTORS, create_extractor
from cbir.extract import finetuned as ftx
from cbir.store.manifest import Manifest
from cbir.train import ModelRegistry, TrainConfig, train_classifier
from cbir.train.apply import check_model
from cbir.train.finetune import ActivationCache, FinetuneConfig


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CBIR_COLLECTION", str(tmp_path / "default-collection"))
    monkeypatch.delenv(ftx.MODELS_ENV, raising=False)


def _head(name: str = "m", extractor: str = "efficientnet-lite0", dim: int = 16, **extra):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat([0, 1, 2], 10)
    x[y == 1] += 1.0
    x[y == 2] -= 1.0
    res = train_classifier(x, y, ["a", "b", "c"], TrainConfig(epochs=3, head="linear"), name=name,
                           extractor=extractor, warn=lambda m: None, extra_meta=extra)
    return res.model


def _finetuned_head(name: str = "ft"):
    return _head(name, ftx.extractor_name(name), 1280, finetuned=True,
                 backbone={"base": "efficientnet-lite0", "blocks": 1})


# -- names ------------------------------------------------------------------------------------------
def test_extractor_names_accept_every_finetuned_name_but_list_only_the_built_ins():
    names = EXTRACTORS.names()
    assert "finetuned:shoes-v1" in names and "finetuned:a.b_c" in names
    for bad in ("finetuned:", "finetuned:../x", "finetuned:a/b", "finetuned:.x", "fine:x", 3):
        assert bad not in names
    assert not any(n.startswith("finetuned:") for n in names)  # help and errors list real ones
    assert "finetuned:x" in EXTRACTORS and "colorhist" in EXTRACTORS
    p = argparse.ArgumentParser()
    p.add_argument("--extractor", choices=EXTRACTORS.names())
    assert p.parse_args(["--extractor", "finetuned:x"]).extractor == "finetuned:x"
    with pytest.raises(SystemExit):
        p.parse_args(["--extractor", "finetuned:../x"])
    assert ftx.model_of("finetuned:x") == "x"
    with pytest.raises(InvalidRequest):
        ftx.model_of("efficientnet-lite0")


def test_an_unknown_finetuned_model_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidRequest, match="no fine-tuned model named 'nope'.*CBIR_MODELS_DIR"):
        create_extractor("finetuned:nope", models_dir=tmp_path)


def test_a_head_only_model_is_not_a_backbone(tmp_path):
    reg = ModelRegistry(tmp_path / "m")
    reg.save(_head("h"))
    with pytest.raises(InvalidRequest, match="not a fine-tuned backbone"):
        create_extractor("finetuned:h", models_dir=reg.directory)


def test_search_order_explicit_then_env_then_default_collection_then_pointer(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv(ftx.MODELS_ENV, f"{a}:{b}")
    default = tmp_path / "default-collection" / "models"
    assert ftx.search_dirs("x") == [a, b, default]
    assert ftx.search_dirs("x", tmp_path / "only") == [tmp_path / "only"]
    ftx.write_pointer("x", tmp_path / "elsewhere", "0" * 64)
    assert ftx.search_dirs("x")[-1] == (tmp_path / "elsewhere").resolve()
    ftx.remove_pointer("x", tmp_path / "not-it")  # points elsewhere: kept
    assert ftx.pointer_path("x").exists()
    ftx.remove_pointer("x", tmp_path / "elsewhere")
    assert not ftx.pointer_path("x").exists()


# -- registry ---------------------------------------------------------------------------------------
def test_registry_keeps_the_backbone_with_the_model_and_finds_it_by_pointer(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    model = _finetuned_head("ft")
    with pytest.raises(InvalidRequest, match="backbone"):
        reg.save(model)  # a fine-tuned model without its backbone
    with pytest.raises(InvalidRequest, match="backbone"):
        reg.save(_head("h"), backbone=b"onnx")  # and a head with one
    reg.save(model, backbone=b"not really onnx")
    meta = reg.meta("ft")
    assert meta["finetuned"] is True and meta["extractor"] == {"name": "finetuned:ft", "dim": 1280}
    assert meta["backbone"]["onnx_file"] == reg.backbone_path("ft").name and meta["backbone"]["blocks"] == 1
    assert re.fullmatch(r"ft\.[0-9a-f]{16}\.backbone\.onnx", reg.backbone_path("ft").name)
    assert reg.backbone_path("ft").read_bytes() == b"not really onnx"
    assert [r["finetuned"] for r in reg.list()] == [True]

    ex = create_extractor("finetuned:ft")  # found through the pointer the registry wrote
    assert (ex.name, ex.dim, ex.class_names, ex.models_dir) == ("finetuned:ft", 1280, [], reg.directory)
    stock = create_extractor("efficientnet-lite0").preprocessing
    assert {k: v for k, v in ex.preprocessing.items() if k != "backbone"} == stock
    assert ex.preprocessing["backbone"] == {"base": "efficientnet-lite0", "model": "ft",
                                            "onnx_sha256": meta["backbone"]["onnx_sha256"]}
    reg.backbone_path("ft").write_bytes(b"damaged")
    with pytest.raises(CollectionError, match="does not match"):
        ex.session  # noqa: B018 - checked before onnxruntime reads it

    reg.save(_head("ft", "finetuned:ft", 1280), overwrite=True)  # replaced by a plain head
    assert not reg.backbone_path("ft").exists()
    reg.delete("ft")
    assert not reg.weights_path("ft").exists()


def test_delete_removes_backbone_and_pointer(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    reg.save(_finetuned_head("ft"), backbone=b"x")
    assert ftx.pointer_path("ft").exists()
    assert reg.delete("ft")
    assert not reg.backbone_path("ft").exists() and not ftx.pointer_path("ft").exists()
    with pytest.raises(InvalidRequest, match="no fine-tuned model"):
        create_extractor("finetuned:ft")


def test_a_retrained_backbone_is_refused_on_the_old_collection(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    reg.save(_finetuned_head("ft"), backbone=b"first")
    model = reg.load("ft")
    pre = create_extractor("finetuned:ft").preprocessing
    col = SimpleNamespace(manifest=Manifest(extractor="finetuned:ft", dim=1280, preprocessing=pre))
    check_model(col, model)  # the collection's backbone is the model's
    reg.save(_finetuned_head("ft"), backbone=b"second", overwrite=True)
    with pytest.raises(IndexMismatch, match="another backbone"):
        check_model(col, reg.load("ft"))
    new = create_extractor("finetuned:ft")
    with pytest.raises(IndexMismatch):  # nor can the collection take the new features
        col.manifest.check_extractor(new.name, new.dim, new.preprocessing)
    plain = SimpleNamespace(manifest=Manifest(extractor="efficientnet-lite0", dim=1280, preprocessing={}))
    with pytest.raises(IndexMismatch, match="finetuned:ft"):
        check_model(plain, model)


# -- activation cache / config ----------------------------------------------------------------------
@pytest.mark.parametrize("limit", [1 << 30, 16])
def test_activation_cache_in_memory_or_temp_file(limit):
    cache = ActivationCache(5, (3, 2, 2), 2, limit)
    assert cache.storage == ("memory" if limit > 1000 else "temporary file")
    assert cache.nbytes == 2 * 5 * 12 * 2
    data = np.arange(2 * 5 * 12, dtype=np.float16).reshape(2, 5, 3, 2, 2)
    for i in range(5):
        cache.a[:, i] = data[:, i]
    got = cache.rows(np.array([4, 1]))
    assert got.dtype == np.float32 and np.array_equal(got, data[0, [4, 1]])
    assert np.array_equal(cache.rows(np.array([4, 1]), np.array([1, 0])), np.stack([data[1, 4], data[0, 1]]))
    cache.close()


@pytest.mark.parametrize(("kw", "needle"), [({"blocks": 0}, "blocks"), ({"blocks": 6}, "blocks"),
                                            ({"lr": 0}, "learning rate"), ({"warmup_epochs": -1}, "warm-up")])
def test_bad_finetune_settings_are_named(kw, needle):
    with pytest.raises(InvalidRequest, match=needle):
        FinetuneConfig(**kw).validate()


def test_finetune_refuses_another_base_extractor(tmp_path):
    from cbir.train import train_from_folder

    with pytest.raises(InvalidRequest, match="cannot start from extractor 'colorhist'"):
        train_from_folder(tmp_path, name="x", registry=ModelRegistry(tmp_path / "m"),
                          extractor="colorhist", finetune=True)


# -- torch: the split and the export ----------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    torch = pytest.importorskip("torch", reason="fine-tuning needs torch")
    pytest.importorskip("efficientnet_lite_pytorch", reason="fine-tuning needs efficientnet-lite-pytorch")
    torch.set_num_threads(1)
    return ftx.load_torch_backbone()


@pytest.mark.parametrize("blocks", [1, 4])
def test_trunk_then_tail_is_the_stock_network(net, blocks):
    import torch

    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tail = ftx.make_tail(net, blocks).eval()
    start = ftx.split_at(net, blocks)
    with torch.no_grad():
        want = net.extract_features(x)
        a = ftx.trunk_forward(net, x, start)
        got = tail(a)
    assert a.shape[1:] == (192, 7, 7)
    assert torch.allclose(got, want, atol=1e-5)
    names = ftx.trained_parts(net, blocks)
    assert names[-2:] == ["_conv_head", "_bn1"] and len(names) == blocks + 2
    assert names[0] == f"_blocks.{16 - blocks}"
    trainable = {id(p) for p in tail.parameters()}
    assert id(net._conv_head.weight) in trainable and id(net._conv_stem.weight) not in trainable


def test_export_matches_torch_and_the_extractor_runs_it(net, tmp_path):
    import torch

    pytest.importorskip("onnx", reason="the export needs onnx")
    tail = ftx.make_tail(net, 1)
    with torch.no_grad():  # stand-in for training: move the trainable weights
        for p in tail.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    data, diffs = ftx.export_finetuned(net, "ft")
    assert set(diffs) == {"features", "regions"} and max(diffs.values()) < 1e-3

    model = _finetuned_head("ft")
    model.weights.update(ftx.tail_weights(tail))
    reg = ModelRegistry(tmp_path / "models")
    reg.save(model, backbone=data)
    rebuilt = ftx.net_from_weights(reg.load("ft").weights, 1)  # torch, from the registry's tensors
    ex = create_extractor("finetuned:ft", models_dir=reg.directory, intra_op_num_threads=1)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    emb = ex.embed(x, regions=True)
    with torch.no_grad():
        fmap = rebuilt.extract_features(torch.from_numpy(x))
    pooled = fmap.mean(dim=(2, 3)).numpy()
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert emb.features.shape == (2, 1280) and emb.probs is None
    np.testing.assert_allclose(emb.features, want, atol=1e-4)
    np.testing.assert_allclose(emb.regions, fmap.flatten(2).transpose(1, 2).numpy(), atol=1e-3)
    stock = ftx.load_torch_backbone()
    with torch.no_grad():
        assert not torch.allclose(stock.extract_features(torch.from_numpy(x)), fmap, atol=1e-3)
    meta = json.loads((reg.directory / "ft.json").read_text())
    assert meta["backbone"]["onnx_bytes"] == len(data) == Path(reg.backbone_path("ft")).stat().st_size
