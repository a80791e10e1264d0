"""`cbir hash train --method auto`, the weak-method warning, code statistics, `eval hashing --root`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cbir.cli import main

pytest.importorskip("torch")

WORDS = ["dog", "car", "mountain", "piano"]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def make_classes(root, per_class: int = 12, tags: str | None = None, seed: int = 0):
    """root/<class>/<i>.png in 4 colour families (colorhist separates them), optionally with
    sidecar tags: "classes" = one word per family, "shuffled" = the same words at random."""
    rng = np.random.default_rng(seed)
    for c, base in enumerate(COLOURS):
        for j in range(per_class):
            arr = np.clip(np.array(base) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            path = root / WORDS[c] / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            if tags:
                word = WORDS[c] if tags == "classes" else WORDS[int(rng.integers(0, 4))]
                (path.parent / f"{j}.png.txt").write_text(word)
    return root


def index(capsys, tmp_path, tags):
    photos = make_classes(tmp_path / "photos", tags=tags)
    c = str(tmp_path / "coll")
    assert run(capsys, "-c", c, "index", str(photos), "--extractor", "colorhist", "-q")[0] == 0
    return c


def test_auto_trains_the_weak_method_on_informative_user_tags(capsys, tmp_path):
    c = index(capsys, tmp_path, "classes")
    code, out, err = run(capsys, "-c", c, "hash", "train", "--method", "auto", "--bits", "16", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["method"] == "wdht" and res["name"] == "wdht-16"
    assert res["choice"]["method"] == "wdht" and "kappa" in res["choice"]["reason"]
    assert res["supervision"]["verdict"] == "tags" and res["supervision"]["machine_share"] == 0.0
    assert res["codes"]["images"] == 48 and 1 <= res["codes"]["distinct"] <= 48
    assert {"ones_min", "ones_max", "imbalance", "constant_bits"} <= set(res["codes"])
    assert "tags carry less" not in err


def test_tags_unrelated_to_the_images_warn_and_auto_trains_itq(capsys, tmp_path):
    c = index(capsys, tmp_path, "shuffled")
    code, out, err = run(capsys, "-c", c, "hash", "train", "--method", "wdht", "--bits", "16")
    assert code == 0 and "trained wdht-16" in out and "codes: " in out and "distinct codes" in out
    assert "warning: the tags carry less than the features" in err and "--method auto" in err
    code, out, err = run(capsys, "-c", c, "hash", "train", "--method", "auto", "--bits", "16")
    assert code == 0 and "auto chose itq, because" in out and "trained itq-16" in out


def test_auto_without_any_tags_trains_itq(capsys, tmp_path):
    c = index(capsys, tmp_path, None)  # colorhist gives no ImageNet labels: no machine tags
    code, out, _ = run(capsys, "-c", c, "hash", "train", "--method", "auto", "--bits", "16", "--json")
    res = json.loads(out)
    assert code == 0 and res["method"] == "itq" and "no image has tags" in res["choice"]["reason"]
    # an unknown weak method for auto is a one-line error
    code, _, err = run(capsys, "-c", c, "hash", "train", "--method", "auto", "--weak", "itq")
    assert code == 2 and "--weak" in err


def test_eval_hashing_takes_any_folder_per_class_dataset(capsys, tmp_path):
    root = make_classes(tmp_path / "shapes")
    code, out, err = run(capsys, "-c", str(tmp_path / "coll"), "eval", "hashing", "--root", str(root),
                         "--extractor", "colorhist", "--methods", "lsh,itq,auto", "--bits", "8,16",
                         "--quiet", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["dataset"] == "folder" and res["sizes"] == {"train": 40, "query": 8, "database": 40}
    assert res["auto"]["method"] == "itq"  # colorhist: no tags at all
    labels = res["results"]["labels"]
    assert labels["auto"] == labels["itq"] and labels["itq"]["16"]["mAP"] > 0.7
    assert res["codes"]["itq"]["16"]["images"] == 40
    # the name "folder" works too; a missing folder is a one-line error
    code, _, err = run(capsys, "-c", str(tmp_path / "coll"), "eval", "hashing", "folder",
                       "--root", str(tmp_path / "nope"), "--extractor", "colorhist", "--quiet")
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "eval", "hashing", "--quiet")
    assert code == 2 and "--root" in err
