"""A trained concept learnt from a handful of images defers to the built-in concept (issue 11).

Four photos tagged "dog" among colour-tagged ones: the trained "dog" rests on 4 images,
so `cbir scene dog` answers by the built-in concepts (the stored ImageNet probabilities)
and says so; `concepts show` flags the concept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cbir.cli import main
from cbir.collection import Collection
from cbir.indexing import index_paths
from cbir.store.catalog import pack_class_probs
from scene_photos import make_tagged_photos

pytest.importorskip("torch")


def _store_top_class(col: Collection, top: Callable[[Any], int]) -> None:
    """Store the class probabilities the ImageNet backbone would have: 0.9 on ``top(record)``."""
    for rec in col.catalog.iter_records("ok"):
        p = np.full(1000, 1e-5, dtype=np.float32)
        p[top(rec)] = 0.9
        col.catalog.db.execute("UPDATE images SET class_probs=? WHERE id=?",
                               (pack_class_probs(p), rec.id))
    col.catalog._bump()


def test_a_concept_with_few_training_images_leans_on_the_builtin_one(tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    make_tagged_photos(photos, n_tagged=40, n_untagged=4)
    for i in range(4):  # "dog" on four tagged photos only
        side = photos / f"img{i:03d}.txt"
        side.write_text(side.read_text() + ", dog")
    coll = tmp_path / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
        # the ImageNet backbone would have stored these: one untagged photo shows a dog
        _store_top_class(col, lambda rec: 207 if rec.path.endswith("untagged0.png") else 281)
    assert main(["-c", str(coll), "concepts", "train", "--vectors", "none", "--min-support", "3"]) == 0
    capsys.readouterr()
    assert main(["-c", str(coll), "concepts", "show", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["concepts"]["dog"] <= 4 and "dog" in info["few_images"]  # its training split
    assert main(["-c", str(coll), "scene", "dog", "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "builtin" and any("fewer than 10" in n for n in res["notes"])
    assert res["hits"][0]["path"].endswith("untagged0.png")  # found by what it shows, not by tags
    # naming the model still uses it
    assert main(["-c", str(coll), "scene", "dog", "-k", "3", "--model", "scenes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "scenes"


def test_trained_and_builtin_concepts_form_one_vocabulary(tmp_path, capsys) -> None:
    """`scene "red dog"`: "red" is the library's own tag (trained), "dog" only a built-in
    concept; the images that show both rank first, each word's evidence from its own model."""
    photos = tmp_path / "photos"
    truth = make_tagged_photos(photos, n_tagged=60, n_untagged=6)
    coll = tmp_path / "coll"
    dogs = set()
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
        records = sorted(col.catalog.iter_records("ok"), key=lambda r: r.path)
        # half the red photos and a third of the others (tagged or not) show a dog
        for n, rec in enumerate(records):
            if n % (2 if "red" in truth[rec.path] else 3) == 0:
                dogs.add(rec.path)
        _store_top_class(col, lambda rec: 207 if rec.path in dogs else 281)
    assert main(["-c", str(coll), "concepts", "train", "--vectors", "none", "--min-support", "3"]) == 0
    capsys.readouterr()
    assert main(["-c", str(coll), "scene", "red dog", "-k", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "scenes+builtin"
    assert any("does not know 'dog'" in n for n in res["notes"]), res["notes"]
    assert [t["how"] for t in res["terms"]][0] == "exact" and len(res["terms"]) == 2
    red_dogs = {p for p in dogs if "red" in truth[p]}
    top = [h["path"] for h in res["hits"]]
    assert len(red_dogs) >= 8 and set(top) <= red_dogs, (top, red_dogs)
    h = res["hits"][0]
    red, dog = h["evidence"].values()  # the trained word's fused probability, the built-in mass
    assert red["probability"] > 0.5 and dog["visual"] > 0.5 and dog["text"] is None, h
    # the same words one at a time: each model answers alone
    assert main(["-c", str(coll), "scene", "red", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "scenes"
    assert main(["-c", str(coll), "scene", "dog", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "builtin"
    # a word neither knows is refused, naming it
    assert main(["-c", str(coll), "scene", "red", "qzxv", "-k", "3"]) == 2
    assert "qzxv" in capsys.readouterr().err


def test_a_real_word_is_never_read_as_a_misspelt_trained_concept(tmp_path, capsys) -> None:
    """The library's tags taught "shore" (from plenty of images) but not "horse": `scene horse`
    once read 'horse' as a misspelling of 'shore' and ranked shore photos. A real word the
    trained model lacks goes to the built-in concepts; naming the model refuses it."""
    photos = tmp_path / "photos"
    truth = make_tagged_photos(photos, n_tagged=60, n_untagged=4)
    for side in photos.glob("img*.txt"):
        if "red" in side.read_text():
            side.write_text(side.read_text() + ", shore")
    coll = tmp_path / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
        # 339: sorrel, a horse
        _store_top_class(col, lambda rec: 339 if rec.path.endswith("untagged1.png") else 281)
    assert sum("red" in t for t in truth.values()) >= 20
    assert main(["-c", str(coll), "concepts", "train", "--vectors", "none", "--min-support", "3"]) == 0
    capsys.readouterr()
    assert main(["-c", str(coll), "concepts", "show", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["concepts"]["shore"] >= 10 and "horse" not in info["concepts"]
    assert main(["-c", str(coll), "scene", "horse", "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "builtin" and res["query"] == ["horse"], res
    assert res["hits"][0]["path"].endswith("untagged1.png")
    # the trained model, named, does not guess either: it refuses the word
    assert main(["-c", str(coll), "scene", "horse", "--model", "scenes"]) == 2
    err = capsys.readouterr().err
    assert "horse" in err and "shore" in err  # suggested, not silently substituted
    # a real misspelling of a trained concept is still read as it
    assert main(["-c", str(coll), "scene", "shoer", "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["query"] == ["shore"] and res["terms"][0]["how"] == "spelling", res
