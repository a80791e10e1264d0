"""`cbir duplicates`: exact (sha256) and near (feature cosine) groups with a suggested keeper.

Uses the cheap ``colorhist`` extractor, like tests/e2e/test_cli.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.cli import main
from cbir.duplicates import Member, components, keeper_key


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _photo(path: Path, hue: int, size=(200, 150), seed=0) -> None:
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), dtype=np.float32)
    a[..., hue] = 120 + 100 * np.sin(x / 17.0) * np.cos(y / 11.0)
    a[..., (hue + 1) % 3] = 40 + 30 * (x / w)
    a += rng.normal(0, 8, a.shape)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=95)


@pytest.fixture
def dup_coll(tmp_path, capsys) -> tuple[str, Path]:
    d = tmp_path / "photos"
    d.mkdir()
    _photo(d / "red.jpg", 0)
    shutil.copyfile(d / "red.jpg", d / "red_copy.jpg")           # byte-identical
    _photo(d / "green.jpg", 1, seed=1)
    with Image.open(d / "green.jpg") as im:                         # near copy: half size
        im.resize((100, 75), Image.Resampling.LANCZOS).save(d / "green_small.jpg", quality=80)
    _photo(d / "blue.jpg", 2, seed=2)                               # unrelated
    old, older = 1_600_000_000, 1_500_000_000
    os.utime(d / "red.jpg", (old, old))
    os.utime(d / "red_copy.jpg", (older, older))  # same pixels and size: the oldest is kept
    os.utime(d / "green_small.jpg", (older, older))  # older, but the larger image wins
    coll = str(tmp_path / "coll")
    code, _, _ = run(capsys, "-c", coll, "index", str(d), "--extractor", "colorhist", "-q")
    assert code == 0
    return coll, d


def test_groups_and_keepers_json(capsys, dup_coll):
    coll, d = dup_coll
    code, out, _ = run(capsys, "-c", coll, "--json", "duplicates")
    assert code == 0
    res = json.loads(out)
    assert res["threshold"] == pytest.approx(0.9)
    groups = {frozenset(Path(m["path"]).name for m in g["members"]): g for g in res["groups"]}
    assert set(groups) == {frozenset({"red.jpg", "red_copy.jpg"}),
                           frozenset({"green.jpg", "green_small.jpg"})}
    exact = groups[frozenset({"red.jpg", "red_copy.jpg"})]
    assert exact["kind"] == "exact" and Path(exact["keeper"]).name == "red_copy.jpg"
    assert all(m["similarity"] == 1.0 for m in exact["members"])
    near = groups[frozenset({"green.jpg", "green_small.jpg"})]
    assert near["kind"] == "near" and Path(near["keeper"]).name == "green.jpg"
    sims = {Path(m["path"]).name: m for m in near["members"]}
    assert sims["green.jpg"]["keeper"] and not sims["green_small.jpg"]["keeper"]
    assert 0.9 <= sims["green_small.jpg"]["similarity"] <= 1.0
    assert [g["group"] for g in res["groups"]] == [1, 2]
    # nothing was deleted
    assert len(list(d.iterdir())) == 5


def test_csv_and_table(capsys, dup_coll):
    coll, _ = dup_coll
    code, out, _ = run(capsys, "-c", coll, "duplicates", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["group", "path", "keeper", "similarity"]
    assert len(rows) == 4 and sum(r["keeper"] == "1" for r in rows) == 2
    assert all(0.0 <= float(r["similarity"]) <= 1.0 for r in rows)
    code, out, _ = run(capsys, "-c", coll, "duplicates")
    assert code == 0 and "group 1" in out and "keep" in out
    # exact only, and a threshold so strict that the resized copy no longer counts
    code, out, _ = run(capsys, "-c", coll, "--json", "duplicates", "--exact-only")
    assert code == 0 and [g["kind"] for g in json.loads(out)["groups"]] == ["exact"]
    code, out, _ = run(capsys, "-c", coll, "--json", "duplicates", "--threshold", "1.0")
    assert code == 0 and [g["kind"] for g in json.loads(out)["groups"]] == ["exact"]
    code, _, err = run(capsys, "-c", coll, "duplicates", "--csv", "--json")
    assert code == 2


def test_keeper_rule_and_components():
    def m(path, w, h, size, mtime):
        return Member(id=0, path=path, width=w, height=h, size=size, mtime_ns=mtime, sha256=None)

    ms = [m("small", 100, 100, 9_000, 1), m("big_new", 200, 200, 5_000, 9),
          m("big_large_file", 200, 200, 8_000, 9), m("big_large_old", 200, 200, 8_000, 3)]
    assert [x.path for x in sorted(ms, key=keeper_key)] == \
        ["big_large_old", "big_large_file", "big_new", "small"]
    assert sorted(components([(1, 2), (3, 4), (2, 5)])) == [[1, 2, 5], [3, 4]]


def test_similar_pairs_scans_hnsw_with_a_short_candidate_list(monkeypatch):
    """The scan asks HNSW for a short candidate list (SCAN_EF, not the search default) and still
    finds every pair above the threshold that brute force finds."""
    from cbir.duplicates import SCAN_EF, similar_pairs
    from cbir.index import create_index

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    copies = x[:60] + 0.05 * rng.standard_normal((60, 64)).astype(np.float32)  # cosine ~0.999
    x = np.concatenate([x, copies])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    idx = create_index("hnsw", 64)
    idx.add(ids, x)
    assert idx.params["ef_search"] > SCAN_EF
    asked: list[int] = []
    search = idx._search
    monkeypatch.setattr(idx, "_search",
                        lambda q, k, **kw: (asked.append(kw["ef_search"]), search(q, k, **kw))[1])

    class Catalog:
        def ok_ids(self):
            return ids

        def features(self, sel):
            sel = np.asarray(sel, dtype=np.int64)
            return sel, x[sel - 1]

    class Col:
        catalog = Catalog()

        def index(self):
            return idx

    pairs = similar_pairs(Col(), 0.9)
    assert asked and set(asked) == {SCAN_EF}
    s = x @ x.T
    truth = {(int(ids[i]), int(ids[j])) for i, j in zip(*np.nonzero(np.triu(s >= 0.9, 1)), strict=True)}
    assert len(truth) >= 60 and set(pairs) == truth


def test_similar_pairs_on_an_8_bit_hnsw_checks_pairs_near_the_threshold_exactly(monkeypatch):
    """An 8-bit HNSW index is scanned without re-scoring (one source read per candidate would
    cost ~4x the scan); pairs within APPROX_MARGIN of the threshold are checked with the exact
    features, so the pairs and their cosines are brute force's, including pairs planted just
    above and just below the threshold."""
    from cbir.duplicates import similar_pairs
    from cbir.index import create_index

    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal((3000, 64))).astype(np.float32) ** 2
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # copies at cosines straddling 0.95: noise of growing size
    noise = rng.standard_normal((80, 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = x[:80] + np.linspace(0.2, 0.45, 80)[:, None] * noise
    x = np.concatenate([x, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    reads: list[int] = []

    class Catalog:
        def ok_ids(self):
            return ids

        def features(self, sel):
            sel = np.asarray(sel, dtype=np.int64)
            reads.append(len(sel))
            return sel, x[sel - 1]

    idx = create_index("hnsw", 64, dtype="int8")
    idx.use_vector_source(Catalog().features)
    idx.add(ids, x)

    class Col:
        catalog = Catalog()

        def index(self):
            return idx

    reads.clear()
    pairs = similar_pairs(Col(), 0.95)
    s = x @ x.T
    rows, cols = np.nonzero(np.triu(s >= 0.95, 1))
    truth = {(int(ids[i]), int(ids[j])): float(s[i, j]) for i, j in zip(rows, cols, strict=True)}
    assert 20 <= len(truth) <= 70, "the plant straddles the threshold"
    assert set(pairs) == set(truth)
    for key, cos in pairs.items():
        assert abs(cos - truth[key]) < 1e-5
    # the scan read the queries' features plus the candidates near the threshold, not k per image
    assert sum(reads) < len(x) + 400
