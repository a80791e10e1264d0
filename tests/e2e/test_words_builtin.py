"""Search by words with no training, on real photos and the real backbone (slow: needs ONNX).

scikit-image's sample photos (a cat, a rocket, a cup of coffee), a few edited copies each,
make a folder-per-class dataset: each folder's name must find its own photos first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageOps

from cbir.cli import main

pytestmark = pytest.mark.slow


def _dataset(root: Path) -> Path:
    data = pytest.importorskip("skimage.data")
    for name, arr in (("cats", data.chelsea()), ("rockets", data.rocket()), ("coffee", data.coffee())):
        im = Image.fromarray(arr).convert("RGB")
        d = root / name
        d.mkdir(parents=True)
        w, h = im.size
        variants = [im, ImageOps.mirror(im), im.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
                    ImageEnhance.Brightness(im).enhance(0.8)]
        for i, v in enumerate(variants):
            v.save(d / f"{name}_{i}.jpg", quality=90)
    return root


def test_eval_words_and_scene_find_each_class_by_its_name(tmp_path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    coll = str(tmp_path / "coll")
    assert main(["-c", coll, "eval", "words", str(ds), "--ks", "4", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_class = {r["class"]: r for r in out["classes"]}
    assert by_class["cats"]["concepts"] == ["cat"]  # plural read as singular
    for name in ("cats", "rockets", "coffee"):
        assert by_class[name]["p@4"] == 1.0 and by_class[name]["ap"] == 1.0, by_class[name]
    # the same collection, searched by words from the CLI without any concept model
    assert main(["-c", coll, "scene", "cat", "-k", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "builtin"
    assert all(Path(h["path"]).parent.name == "cats" for h in res["hits"])
    assert res["hits"][0]["evidence"]["cat"]["visual"] > 0.5
