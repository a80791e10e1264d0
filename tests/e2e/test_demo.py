"""`cbir demo` and the class-partitioned index with the real backbone (slow: needs ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbir.cli import main
from cbir.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_finds_the_edited_cat_photo(tmp_path, capsys):
    assert run_demo(tmp_path) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "chelsea.jpg" in first and "cat" in first.lower()

    coll = str(tmp_path / "collection")
    query = str(tmp_path / "query-cat.jpg")
    # the paper's class-partitioned tables: the query scans only its most probable class(es)
    assert main(["-c", coll, "search", query, "-k", "3", "--index-type", "class-partitioned",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert Path(hits[0]["path"]).name == "chelsea.jpg"
    assert hits[0]["labels"][0]["label"] in {"Egyptian cat", "tabby", "tiger cat"}
    # the image's stored top-5 ImageNet labels come with each hit
    assert len(hits[0]["labels"]) == 5
