"""Learned binary codes from the CLI: train, search in Hamming space, re-rank, stay in step."""

from __future__ import annotations

import json
import os

import pytest

from badfiles import make_good_images
from cbir.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def coll(tmp_path, capsys):
    photos = tmp_path / "photos"
    make_good_images(photos, 40)
    c = str(tmp_path / "coll")
    assert run(capsys, "-c", c, "index", str(photos), "--extractor", "colorhist", "-q")[0] == 0
    return c, photos


@pytest.mark.parametrize("method", ["lsh", "itq", "pcah", "sh"])
def test_train_and_search_by_codes(capsys, coll, method):
    c, photos = coll
    code, out, _ = run(capsys, "-c", c, "hash", "train", "--method", method, "--bits", "16", "--json")
    assert code == 0 and json.loads(out)["images"] == 40
    q = sorted(photos.iterdir())[7]
    code, out, _ = run(capsys, "-c", c, "search", "--like", str(q), "--include-self",
                       "--codes", f"{method}-16", "-k", "5", "--json")
    hits = json.loads(out)["hits"]
    assert hits[0]["hamming"] == 0 and len(hits) == 5
    assert [h["hamming"] for h in hits] == sorted(h["hamming"] for h in hits)
    # re-ranking a shortlist by float features puts the exact match first and orders by cosine
    code, out, _ = run(capsys, "-c", c, "search", "--like", str(q), "--include-self",
                       "--codes", f"{method}-16", "-k", "5", "--rerank", "20", "--json")
    hits = json.loads(out)["hits"]
    assert hits[0]["path"] == os.path.abspath(q)
    assert [h["cosine"] for h in hits] == sorted((h["cosine"] for h in hits), reverse=True)


def test_codes_follow_the_collection(capsys, coll, tmp_path):
    c, photos = coll
    run(capsys, "-c", c, "hash", "train", "--method", "itq", "--bits", "8", "--name", "small")
    more = photos / "more"
    make_good_images(more, 3)
    run(capsys, "-c", c, "index", str(photos), "-q")
    victim = sorted(photos.iterdir())[0]
    run(capsys, "-c", c, "remove", str(victim))
    code, out, _ = run(capsys, "-c", c, "search", "--like", str(sorted(more.iterdir())[0]),
                       "--include-self", "--codes", "small", "-k", "100", "--json")
    paths = [h["path"] for h in json.loads(out)["hits"]]
    assert os.path.abspath(victim) not in paths  # removed images never come back
    assert all(os.path.abspath(p) in paths for p in more.iterdir())  # new ones got codes
    code, out, _ = run(capsys, "-c", c, "hash", "list", "--json")
    assert json.loads(out)[0]["images_with_codes"] == 40 - 1 + 3
    assert run(capsys, "-c", c, "hash", "delete", "small")[0] == 0
    code, out, err = run(capsys, "-c", c, "search", "--like", str(victim.parent / "x.jpg"),
                         "--codes", "small")
    assert code == 2


def test_bad_hash_arguments_are_one_line_errors(capsys, coll):
    c, _ = coll
    for argv, needle in [
        (("hash", "train", "--method", "nope", "--bits", "16"), "unknown hashing method"),
        (("hash", "train", "--method", "itq", "--bits", "4"), "bits"),
        (("hash", "train", "--method", "itq", "--bits", "16", "--name", "../evil"), "name"),
        (("search", "x.jpg", "--codes", "missing"), "no hash codes named"),
    ]:
        code, out, err = run(capsys, "-c", c, *argv)
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)
