"""The match score people read (issue 14, part 4): 0 = two random photos of the collection,
100 = the same image; the paper's 1/(1+d) stays as it is."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from badfiles import make_good_images
from cbir.cli import main
from cbir.collection import Collection
from cbir.indexing import index_paths
from cbir.search import match_baseline, match_score, query_from_members, search


def test_match_score_by_hand():
    assert match_score(1.0, 0.4) == 100.0
    assert match_score(0.4, 0.4) == 0.0 and match_score(0.1, 0.4) == 0.0  # below random: 0
    assert match_score(0.7, 0.4) == 50.0  # halfway from the random-pair median to identical
    assert match_score(0.55, 0.0) == 55.0


@pytest.fixture
def col(tmp_path):
    photos = tmp_path / "photos"
    make_good_images(photos, 12)
    shutil.copy(sorted(photos.iterdir())[0], photos / "copy.png")  # an exact copy of the first
    with Collection.create_or_open(tmp_path / "coll", "colorhist") as c, c.writer_lock():
        index_paths(c, [photos], progress=False)
    with Collection.open(tmp_path / "coll") as c:
        yield c


def test_baseline_is_the_median_cosine_of_the_collections_pairs(col):
    ids, feats = col.catalog.features()
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    want = float(np.median((x @ x.T)[np.triu_indices(len(x), 1)]))
    assert match_baseline(col) == pytest.approx(want, abs=1e-5)  # small: every image is sampled
    assert match_baseline(col) == match_baseline(col)  # cached per catalog generation


def test_the_writer_stores_the_baseline_and_a_search_reads_it(col, monkeypatch):
    """Indexing keeps the zero next to its generation, so a cold search does not re-measure it;
    a stored value of another generation is ignored."""
    from cbir import search as search_mod
    from cbir.store import matchscale

    cat = col.catalog
    gen = int(cat.generation())
    want = matchscale.compute(cat)
    assert matchscale.stored(cat, gen) == pytest.approx(want)  # written by index_paths' index sync
    assert matchscale.stored(cat, gen + 1) is None
    search_mod._BASELINES.clear()
    monkeypatch.setattr(matchscale, "compute", lambda c: pytest.fail("measured again"))
    assert match_baseline(col) == pytest.approx(want)
    cat.set_meta(matchscale.META_KEY, f'{{"generation": {gen - 1}, "baseline": 0.5}}')
    search_mod._BASELINES.clear()
    monkeypatch.undo()
    assert match_baseline(col) == pytest.approx(want)  # stale: measured, not trusted


def test_hits_carry_a_match_and_min_match_filters(col, capsys):
    first = sorted(r.path for r in col.catalog.iter_records("ok") if not r.path.endswith("copy.png"))[0]
    q = query_from_members(col, [first])
    hits = search(col, q, k=20)
    base = match_baseline(col)
    for h in hits:
        assert h.match == match_score(h.cosine, base) and 0 <= h.match <= 100
        assert h.as_dict()["match"] == h.match
    assert hits[0].path.endswith("copy.png") and hits[0].match == 100.0
    assert hits[0].similarity == 1.0  # the paper's score is unchanged
    assert [h.rank for h in hits] == sorted(h.rank for h in hits)
    kept = search(col, q, k=20, min_match=50.0)
    assert [h.id for h in kept] == [h.id for h in hits if h.match >= 50.0]
    code = main(["-c", str(col.directory), "search", "--like", first, "--min-match", "50", "--json"])
    got = [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]]
    assert code == 0 and got == [h.id for h in kept]
    assert main(["-c", str(col.directory), "search", "--like", first, "-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "match", "similarity"] and "100.0%" in table[1]
