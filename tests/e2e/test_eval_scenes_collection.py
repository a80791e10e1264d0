"""`cbir eval scenes --labels`: the paper's table on any collection (tags or a labels CSV)."""

from __future__ import annotations

import json

import pytest

from cbir.cli import main
from cbir.collection import Collection
from cbir.eval.scenes import read_labels_csv
from cbir.indexing import index_paths
from scene_photos import make_tagged_photos

pytest.importorskip("torch")


def test_labels_csv_is_read_relative_to_its_folder(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    csv = tmp_path / "labels.csv"
    csv.write_text("path,labels\na/x.jpg,Sky;water\n/abs/y.jpg,boats\n")
    got = read_labels_csv(csv)
    # labels are cleaned like tags ("boats" -> "boat")
    assert got == {str((tmp_path / "a" / "x.jpg").resolve()): ["sky", "water"], "/abs/y.jpg": ["boat"]}


def test_eval_scenes_on_a_collection_with_a_labels_file(tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    truth = make_tagged_photos(photos)
    coll = tmp_path / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
    csv = tmp_path / "labels.csv"  # the true colours of every photo, the untagged ones included
    csv.write_text("".join(f"{p},{';'.join(sorted(c))}\n" for p, c in truth.items()))
    assert main(["-c", str(coll), "eval", "scenes", "--labels", str(csv), "--settings", "visual",
                 "--k-rc", "8", "--queries", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sizes"] == {"train": 64, "query": 16, "unlabelled_skipped": 0}
    rows = out["settings"]["visual"]["rows"]
    ssir = rows["SSIR, K_rc = 8"]
    assert set(ssir) == {"1", "2", "3"} or set(ssir) <= {"1", "2", "3", "4"}
    assert all(0.0 <= v["MAP"] <= 1.0 for v in ssir.values())
    assert ssir["1"]["MAP"] > 0.5  # a colour histogram sees colour bands
    # both a benchmark and --labels is refused in one line
    assert main(["-c", str(coll), "eval", "scenes", "corel5k", "--labels", "tags"]) == 2
