"""Scene search from the CLI: train concept models on tagged photos, query concept sets, tag images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbir.cli import main
from scene_photos import make_tagged_photos

pytest.importorskip("torch")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """72 photos with 1-3 colour concepts each, as sidecar tags; 8 untagged with red+blue."""
    root = tmp_path_factory.mktemp("scenes")
    photos = root / "photos"
    truth = make_tagged_photos(photos)
    return root, photos, truth


@pytest.fixture
def coll(tagged, capsys, tmp_path):
    root, photos, truth = tagged
    c = str(tmp_path / "coll")
    assert run(capsys, "-c", c, "index", str(photos), "--extractor", "colorhist", "-q")[0] == 0
    return c, photos, truth


def test_train_scene_query_and_tags(coll, capsys):
    c, photos, truth = coll
    code, out, err = run(capsys, "-c", c, "concepts", "train", "--vectors", "none", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["concepts"] == 4  # the four colours; tag cleaning drops the camera tag "nikon"
    assert info["text_branch"] is False and abs(sum(info["weights"]) - 1) < 1e-6

    code, out, err = run(capsys, "-c", c, "scene", "red blue", "-k", "10", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["query"] == ["blue", "red"]
    hits = res["hits"]
    assert len(hits) == 10
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    relevant = sum({"red", "blue"} <= truth[h["path"]] for h in hits)
    assert relevant >= 8, [(h["path"], truth[h["path"]]) for h in hits]
    assert any("untagged" in h["path"] for h in hits)  # found by what they show, not by tags
    assert set(hits[0]["evidence"]) == {"red", "blue"}
    assert set(hits[0]["components"]) == {"visual_single", "visual_multi", "text_single", "text_multi"}

    # a misspelt concept is read as the closest name and said so; an unknown one is refused
    code, out, err = run(capsys, "-c", c, "scene", "yelow", "-k", "3")
    assert code == 0 and "'yelow' read as 'yellow'" in err
    code, out, err = run(capsys, "-c", c, "scene", "red", "xylophone")
    assert code == 2 and "does not know the concept 'xylophone'" in err and err.count("\n") == 1

    img = sorted(photos.glob("untagged*.png"))[0]
    code, out, err = run(capsys, "-c", c, "tags", str(img), "--top", "3", "--json")
    assert code == 0, err
    top = [x["concept"] for x in json.loads(out)[0]["concepts"]]
    assert set(top[:2]) == {"red", "blue"} or {"red", "blue"} <= set(top)


def test_concept_model_maintenance(coll, capsys):
    c, _, _ = coll
    assert run(capsys, "-c", c, "concepts", "train", "--vectors", "none", "--name", "colours", "-q")[0] == 0
    code, out, _ = run(capsys, "-c", c, "concepts", "list", "--json")
    assert [m["name"] for m in json.loads(out)] == ["colours"]
    code, out, _ = run(capsys, "-c", c, "concepts", "show", "colours", "--json")
    shown = json.loads(out)
    assert shown["concepts"]["red"] > 0 and set(shown["weights"]) >= {"visual_single", "visual_multi"}
    code, _, err = run(capsys, "-c", c, "concepts", "train", "--vectors", "none", "--name", "colours")
    assert code == 2 and "exists" in err
    assert run(capsys, "-c", c, "concepts", "delete", "colours")[0] == 0
    code, _, err = run(capsys, "-c", c, "scene", "red")
    assert code == 2 and "no concept model" in err


def test_untagged_collection_is_refused_clearly(tmp_path, capsys):
    from badfiles import make_good_images

    photos = tmp_path / "p"
    make_good_images(photos, 30)
    c = str(tmp_path / "c")
    run(capsys, "-c", c, "index", str(photos), "--extractor", "colorhist", "-q")
    code, _, err = run(capsys, "-c", c, "concepts", "train", "--vectors", "none")
    assert code == 2 and "carry a concept" in err and "--vocab folders" in err


def test_word2vec_text_branch_is_trained_on_the_collection_and_kept_with_the_model(coll, capsys):
    pytest.importorskip("gensim")
    c, _, truth = coll
    code, out, err = run(capsys, "-c", c, "concepts", "train", "--vectors", "word2vec", "--json")
    assert code == 0, err
    assert json.loads(out)["text_branch"] is True
    code, out, err = run(capsys, "-c", c, "scene", "green", "-k", "5", "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert sum("green" in truth[h["path"]] for h in hits) >= 4
    assert any(h["evidence"]["green"]["text"] is not None for h in hits)
    assert run(capsys, "-c", c, "concepts", "delete", "scenes")[0] == 0
    assert not any(p.name.endswith(".word2vec") for p in (Path(c) / "concepts").iterdir())
