"""``cbir train --finetune`` end to end on a tiny generated folder-per-class dataset.

Trains the last backbone block for two epochs, then indexes a collection with the
fine-tuned model's own extractor (``--extractor finetuned:NAME``) and labels, searches and
partitions it with the model. Needs torch and onnx (skipped without them), not the stock
ONNX export: fine-tuning builds the network in torch, and the model brings its own ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbir import cli
from cbir.cli import main

pytest.importorskip("torch", reason="fine-tuning needs torch")
pytest.importorskip("onnx", reason="fine-tuning exports the backbone with onnx")
pytest.importorskip("efficientnet_lite_pytorch", reason="fine-tuning needs efficientnet-lite-pytorch")

from test_cli_train import make_classes  # noqa: E402 - tests/e2e is on sys.path under pytest


@pytest.fixture(autouse=True)
def _wire(monkeypatch, tmp_path):
    if "train" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "train"])
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CBIR_COLLECTION", str(tmp_path / "default"))
    monkeypatch.delenv("CBIR_MODELS_DIR", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_finetune_index_with_its_extractor_label_search_and_refuse_mismatches(capsys, tmp_path):
    data = make_classes(tmp_path / "classes", {"red": 6, "green": 6, "blue": 6})
    c = str(tmp_path / "coll")  # no collection yet: the model goes to coll/models

    code, out, err = run(capsys, "-c", c, "train", str(data), "--name", "ft", "--finetune",
                         "--epochs", "2", "--trained-by", "tester", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["finetuned"] is True and s["extractor"] == {"name": "finetuned:ft", "dim": 1280}
    assert s["epochs"] <= 2 and s["classes"] == ["blue", "green", "red"]
    assert s["backbone"]["trained"] == ["_blocks.15", "_conv_head", "_bn1"]
    assert max(s["backbone"]["onnx_max_abs_diff"].values()) < 1e-3
    assert "is slow" in err and "per epoch" in err  # the CPU warning with its estimate
    assert "epoch 1/2: loss" in err and "val_acc" in err  # per-epoch progress
    models = tmp_path / "coll" / "models"
    meta = json.loads((models / "ft.json").read_text())
    assert {p.name for p in models.iterdir()} == {"ft.json", meta["weights_file"],
                                                   meta["backbone"]["onnx_file"]}
    assert meta["backbone"]["onnx_file"].startswith("ft.") and meta["weights_file"].startswith("ft.")

    code, out, _ = run(capsys, "-c", c, "models", "list", "--json")
    (row,) = json.loads(out)
    assert row["name"] == "ft" and row["finetuned"] is True and row["extractor"] == "finetuned:ft"
    code, out, _ = run(capsys, "-c", c, "models", "list")
    assert "ft " in out and " yes " in out

    # the collection is indexed with the fine-tuned backbone, found by name
    code, out, err = run(capsys, "-c", c, "index", str(data), "--extractor", "finetuned:ft", "-q")
    assert code == 0, err
    manifest = json.loads((tmp_path / "coll" / "manifest.json").read_text())
    meta = json.loads((models / "ft.json").read_text())
    assert manifest["extractor"] == "finetuned:ft" and manifest["dim"] == 1280
    assert manifest["preprocessing"]["backbone"]["onnx_sha256"] == meta["backbone"]["onnx_sha256"]

    # the ONNX features in the collection are the torch network's, rebuilt from the registry
    import torch

    from cbir.collection import Collection
    from cbir.extract.efficientnet import EfficientNetLite0
    from cbir.extract.finetuned import net_from_weights
    from cbir.io.images import load_image
    from cbir.train import ModelRegistry

    model = ModelRegistry(models).load("ft")
    net = net_from_weights(model.weights, 1)
    pre = EfficientNetLite0()
    files = [data / "red" / "000.png", data / "blue" / "003.png"]
    x = np.stack([pre.preprocess(load_image(f, target_size=224)) for f in files])
    with torch.no_grad():
        pooled = net.extract_features(torch.from_numpy(x)).mean(dim=(2, 3)).numpy()
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    with Collection.open(Path(c)) as col:
        by_path = {r.path: r.id for r in col.catalog.iter_records("ok")}
        want_ids = [by_path[str(f.resolve())] for f in files]
        ids, feats = col.catalog.features(want_ids)
        got = feats[[ids.tolist().index(i) for i in want_ids]]
    np.testing.assert_allclose(got, want, atol=2e-3)  # the catalog stores float16

    code, out, err = run(capsys, "-c", c, "models", "label", "ft", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 18 and all(r["label"] == Path(r["path"]).parent.name for r in rows)

    q = data / "green" / "001.png"
    code, out, err = run(capsys, "-c", c, "models", "search", "ft", str(q), "-k", "4",
                         "--partitioned", "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert len(hits) == 4 and all(h["model_label"] == "green" for h in hits)
    assert run(capsys, "-c", c, "models", "use", "ft")[0] == 0

    # another head on the fine-tuned features (head-only training, --extractor finetuned:NAME)
    heads = str(tmp_path / "heads")
    code, out, err = run(capsys, "-c", c, "train", str(data), "--name", "lin", "--head", "linear",
                         "--extractor", "finetuned:ft", "--models", heads, "--epochs", "30", "-q", "--json")
    assert code == 0, err
    assert json.loads(out)["extractor"] == {"name": "finetuned:ft", "dim": 1280}
    code, out, err = run(capsys, "-c", c, "models", "label", "lin", "--models", heads, "--json")
    assert code == 0 and all(r["label"] == Path(r["path"]).parent.name for r in json.loads(out)), err

    # mismatches are refused in one line
    other = str(tmp_path / "hist")
    assert run(capsys, "-c", other, "index", str(data), "--extractor", "colorhist", "-q")[0] == 0
    for argv, needle in [
        (("-c", other, "models", "label", "ft", "--models", str(models)), "'finetuned:ft' features"),
        (("-c", other, "train", str(data), "--name", "ft2", "--finetune"), "computes its own features"),
        (("-c", c, "train", str(data), "--name", "x", "--finetune", "--extractor", "colorhist"),
         "cannot start from"),
        (("-c", str(tmp_path / "new"), "index", str(data), "--extractor", "finetuned:nope"),
         "no fine-tuned model named 'nope'"),
    ]:
        code, out, err = run(capsys, *argv)
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)

    # retrained under the same name: the collection's features are from the old backbone
    code, _, err = run(capsys, "-c", c, "train", str(data), "--name", "ft", "--finetune", "--epochs", "1",
                       "--no-flip", "--finetune-lr", "1e-3", "--overwrite", "-q")
    assert code == 0 and "previous backbone" in err
    code, _, err = run(capsys, "-c", c, "models", "label", "ft")
    assert code == 2 and "another backbone" in err
    assert run(capsys, "-c", c, "models", "label", "lin", "--models", heads)[0] == 0  # both the old one
    c2 = str(tmp_path / "coll2")  # a new collection with the new backbone: the new model fits it
    assert run(capsys, "-c", c2, "index", str(data), "--extractor", "finetuned:ft", "-q")[0] == 0
    code, _, err = run(capsys, "-c", c2, "models", "label", "ft", "--models", str(models))
    assert code == 0, err
    code, _, err = run(capsys, "-c", c2, "models", "label", "lin", "--models", heads)
    assert code == 2 and "another backbone" in err and "train 'lin' again" in err
    more = make_classes(tmp_path / "more", {"red": 1}, seed=5)
    code, _, err = run(capsys, "-c", c, "index", str(more), "-q")
    assert code == 2 and "differently" in err  # the manifest refuses the new backbone's features

    code, out, err = run(capsys, "-c", c, "models", "delete", "ft")
    assert code == 0 and "can no longer embed" in err
    assert not list(models.glob("ft*.backbone.onnx"))
