"""Training heads on stored features: accuracy, early stopping, balancing, checks, registry, curves."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from cbir.errors import CollectionError, IndexMismatch, InvalidRequest
from cbir.train import (
    ClassifierModel,
    ModelRegistry,
    SmallClassWarning,
    TrainConfig,
    check_class_counts,
    check_name,
    stratified_split,
    train_classifier,
)
from cbir.train.apply import rerank_scores
from cbir.train.curves import curves, plot_curves
from cbir.train.trainer import class_weights


def blobs(n_per: list[int], dim: int = 32, spread: float = 0.3, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length features around one random centre per class, labels 0..C-1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per), dim))
    x = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, n_per, strict=True)])
    y = np.repeat(np.arange(len(n_per)), n_per)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def quiet(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 60, "patience": 5, **kw})


NAMES = ["a", "b", "c"]


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_separable_features_reach_high_validation_accuracy(head):
    x, y = blobs([40, 40, 40])
    seen = []
    res = train_classifier(x, y, NAMES, quiet(head=head, hidden=32), name="t", warn=lambda m: None,
                           on_epoch=seen.append)
    assert res.model.meta["val_accuracy"] >= 0.95
    assert [s.epoch for s in seen] == list(range(1, len(seen) + 1)) == [s.epoch for s in res.history]
    s = seen[0]
    assert s.max_epochs == 60 and s.val_loss is not None and 0 <= s.train_acc <= 1 and s.seconds >= 0
    # the numpy forward pass reproduces the validation accuracy torch measured
    _, va = stratified_split(y, 0.2, 0)
    acc = float((res.model.predict(x[va]).argmax(1) == y[va]).mean())
    assert acc == pytest.approx(res.model.meta["val_accuracy"], abs=1e-6)
    p = res.model.predict(x)
    assert p.shape == (120, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    e = res.model.embed(x[:5])
    assert e.shape == (5, 32 if head == "mlp" else 3) and np.allclose(np.linalg.norm(e, axis=1), 1)


def test_early_stopping_stops_and_keeps_the_best_epoch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    y = rng.integers(0, 2, 120)  # labels unrelated to the features: validation loss only rises
    res = train_classifier(x, y, ["a", "b"], quiet(epochs=200, patience=4, lr=1e-2), warn=lambda m: None)
    assert res.stopped_early and len(res.history) < 200
    assert res.best_epoch == len(res.history) - 4
    best = min(res.history, key=lambda s: s.val_loss)
    assert best.epoch == res.best_epoch and res.model.meta["val_loss"] == best.val_loss


def test_stop_event_ends_training_after_the_current_epoch():
    import threading

    x, y = blobs([20, 20])
    stop = threading.Event()
    res = train_classifier(x, y, ["a", "b"], quiet(epochs=50), warn=lambda m: None,
                           on_epoch=lambda s: stop.set() if s.epoch == 3 else None, stop=stop)
    assert len(res.history) == 3


def test_class_weights_by_hand():
    # n = 4, C = 2: class 0 has 3 -> 4 / (2 * 3); class 1 has 1 -> 4 / (2 * 1)
    assert class_weights(np.array([0, 0, 0, 1]), 2) == pytest.approx([2 / 3, 2.0])
    assert class_weights(np.array([0, 0]), 3)[1:].tolist() == [0.0, 0.0]


def test_class_balancing_recovers_the_minority_class():
    """Two overlapping classes, 20:1 in training: unweighted training all but ignores the
    minority; the weighted loss and the balanced sampler find it on a balanced test set."""
    rng = np.random.default_rng(3)
    d = np.zeros(8, dtype=np.float32)
    d[0] = 1.0

    def draw(n0: int, n1: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([rng.normal(size=(n0, 8)), rng.normal(size=(n1, 8)) + 1.5 * d])
        return x.astype(np.float32), np.repeat([0, 1], [n0, n1])

    x, y = draw(400, 20)
    xt, yt = draw(300, 300)
    recall = {}
    for balance in ["none", "weights", "sampler"]:
        res = train_classifier(x, y, ["major", "minor"], quiet(head="linear", balance=balance,
                                                                val_split=0.0, epochs=40),
                               warn=lambda m: None)
        pred = res.model.predict(xt).argmax(1)
        recall[balance] = float((pred[yt == 1] == 1).mean())
    assert recall["none"] < 0.35
    assert recall["weights"] > recall["none"] + 0.3 and recall["sampler"] > recall["none"] + 0.3


def test_stratified_split_is_seeded_and_keeps_every_class_on_both_sides():
    y = np.repeat([0, 1, 2], [5, 10, 50])
    tr, va = stratified_split(y, 0.2, seed=7)
    assert np.bincount(y[va]).tolist() == [1, 2, 10]
    assert np.bincount(y[tr]).tolist() == [4, 8, 40]
    assert not set(tr) & set(va)
    tr2, va2 = stratified_split(y, 0.2, seed=7)
    assert np.array_equal(va, va2) and not np.array_equal(va, stratified_split(y, 0.2, seed=8)[1])
    assert len(stratified_split(y, 0.0)[1]) == 0


def test_too_few_images_or_classes_are_refused_and_small_classes_warned():
    with pytest.raises(InvalidRequest, match="at least 5 usable images.*b \\(3\\)"):
        check_class_counts([10, 3], ["a", "b"])
    with pytest.raises(InvalidRequest, match="at least 2 classes"):
        check_class_counts([200], ["a"])
    assert check_class_counts([100, 150], ["a", "b"]) == []
    (note,) = check_class_counts([100, 20], ["a", "b"])
    assert "fewer than 100" in note and "b (20)" in note
    x, y = blobs([4, 30])
    with pytest.raises(InvalidRequest, match="at least 5"):
        train_classifier(x, y, ["a", "b"], quiet())
    x, y = blobs([30, 30])
    with pytest.warns(SmallClassWarning, match="fewer than 100"):
        res = train_classifier(x, y, ["a", "b"], quiet(epochs=3))
    assert res.warnings and res.model.meta["warnings"] == res.warnings


def test_bad_config_values_are_named():
    x, y = blobs([10, 10])
    for kw, needle in [({"head": "cnn"}, "head"), ({"val_split": 0.9}, "val-split"),
                       ({"balance": "x"}, "balance"), ({"epochs": 0}, "epochs")]:
        with pytest.raises(InvalidRequest, match=needle):
            train_classifier(x, y, ["a", "b"], quiet(**kw), warn=lambda m: None)


@pytest.fixture
def trained() -> tuple[ClassifierModel, np.ndarray]:
    x, y = blobs([20, 20, 20])
    res = train_classifier(x, y, NAMES, quiet(hidden=16, epochs=10), name="m1", extractor="synthetic",
                           trained_by="alice", warn=lambda m: None)
    return res.model, x


def test_registry_round_trip_gives_identical_predictions(tmp_path, trained):
    model, x = trained
    reg = ModelRegistry(tmp_path / "models")
    path = reg.save(model)
    # the weights go to a fresh file name per save (so an overwrite never touches the old ones)
    assert {p.name for p in reg.directory.iterdir()} == {"m1.json", reg.weights_path("m1").name}
    assert re.fullmatch(r"m1\.[0-9a-f]{16}\.safetensors", reg.weights_path("m1").name)
    loaded = reg.load("m1")
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert np.array_equal(loaded.embed(x), model.embed(x))
    meta = json.loads(path.read_text())
    for key in ["name", "trained_by", "trained_at", "classes", "epochs", "val_accuracy", "curve",
                "extractor", "head", "format_version", "weights_sha256"]:
        assert key in meta, key
    assert meta["trained_by"] == "alice" and meta["trained_at"].endswith("Z")
    assert meta["extractor"] == {"name": "synthetic", "dim": 32} and meta["classes"] == NAMES
    assert meta["curve"][0].keys() >= {"epoch", "seconds", "train_loss", "train_acc", "val_loss", "val_acc"}
    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle)
    raw = reg.weights_path("m1").read_bytes()
    assert json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["head"] == "mlp"
    assert reg.list()[0]["name"] == "m1" and reg.names() == ["m1"]
    with pytest.raises(InvalidRequest, match="already exists"):
        reg.save(model)
    reg.save(model, overwrite=True)
    assert reg.delete("m1") and reg.names() == [] and not any(reg.directory.iterdir())
    with pytest.raises(InvalidRequest, match="no model named 'm1'"):
        reg.load("m1")


def test_damaged_weights_are_refused(tmp_path, trained):
    model, _ = trained
    reg = ModelRegistry(tmp_path)
    reg.save(model)
    p = reg.weights_path("m1")
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CollectionError, match="do not match"):
        reg.load("m1")


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ".hidden", "", "x" * 65, "a..b", "/abs", "a\\b"])
def test_names_with_paths_are_refused(tmp_path, bad):
    with pytest.raises(InvalidRequest, match="model name"):
        check_name(bad)
    with pytest.raises(InvalidRequest):
        ModelRegistry(tmp_path).meta_path(bad)


def test_model_refuses_features_of_another_extractor(trained):
    model, _ = trained
    model.check_features("synthetic", 32)
    with pytest.raises(IndexMismatch, match="trained on 'synthetic'"):
        model.check_features("colorhist", 128)
    with pytest.raises(InvalidRequest, match="expects"):
        model.predict(np.zeros((2, 5), np.float32))


def test_curves_png_and_json(tmp_path, trained):
    model, _ = trained
    out = plot_curves(model.meta, tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    c = curves(model.meta)
    assert c["epoch"] == list(range(1, model.meta["epochs"] + 1)) and len(c["val_acc"]) == len(c["epoch"])
    with pytest.raises(InvalidRequest, match="png"):
        plot_curves(model.meta, tmp_path / "curve.jpg")
    assert not [p for p in tmp_path.iterdir() if p.name != "curve.png"]  # no temporary left


def test_rerank_scores_by_hand():
    cos = np.array([0.9, 0.8, 0.7], np.float32)
    q = np.array([0.1, 0.9], np.float32)  # the query's class is 1
    hits = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], np.float32)
    # 0.9 + 0.5*0 = 0.9; 0.8 + 0.5*0.5 = 1.05; 0.7 + 0.5*1 = 1.2
    assert rerank_scores(cos, q, hits, 0.5) == pytest.approx([0.9, 1.05, 1.2])
    assert rerank_scores(cos, q, hits, 0.0) == pytest.approx(cos)
    with pytest.raises(InvalidRequest):
        rerank_scores(cos, q, hits, -1.0)


def test_no_warning_machinery_leaks(trained):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained[0].predict(np.zeros((1, 32), np.float32))
