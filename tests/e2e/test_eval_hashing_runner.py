"""`cbir eval hashing` end to end on a small Corel-5K-shaped dataset the test generates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cbir.eval.hashing_benchmark import run


def _fake_corel(root, n_per_cat: int = 12, n_cats: int = 4):
    """Categories are colour families (colorhist separates them); keywords follow categories."""
    rng = np.random.default_rng(0)
    words = ["dog", "car", "mountain", "piano", "sky", "noise"]
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "words").write_text("\r\n".join(words) + "\r\n")
    base = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]
    train, test = [], []
    for c in range(n_cats):
        for j in range(n_per_cat):
            iid = 1000 + 100 * c + j
            split = "test" if j < 3 else "train"
            arr = np.clip(np.array(base[c]) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            path = root / "db" / split / f"{iid}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            kw = [c + 1] + ([5] if rng.random() < 0.5 else []) + ([6] if rng.random() < 0.3 else [])
            (test if split == "test" else train).append(f"{iid} " + " ".join(map(str, kw)) + " ")
    (root / "labels" / "training_label").write_text("\r\n".join(train) + "\r\n")
    (root / "labels" / "test_label").write_text("\r\n".join(test) + "\r\n")
    return root


def test_runner_prints_the_papers_tables(tmp_path):
    root = _fake_corel(tmp_path / "corel5k")
    result = run("corel5k", root, methods=["lsh", "itq", "wdht"], bits=[8, 16],
                 relevance=["labels", "keywords"], progress=False, extractor="colorhist",
                 collection_dir=tmp_path / "coll", plot=tmp_path / "pr.png")
    assert result["sizes"] == {"train": 36, "query": 12, "database": 36}
    labels = result["results"]["labels"]
    assert set(labels) == {"float (no hashing)", "lsh", "itq", "wdht"}
    # colour families are easy: the float ceiling and ITQ retrieve the category well
    assert labels["float (no hashing)"]["float"]["mAP"] > 0.9
    assert labels["itq"]["16"]["mAP"] > 0.7
    for kind in ("labels", "keywords"):
        assert "mAP@5000" in result["tables"][kind] and "16 bits" in result["tables"][kind]
    assert (tmp_path / "pr.png").stat().st_size > 1000
    json.dumps(result)  # everything is JSON-serialisable


def test_cli_over_several_seeds_prints_mean_sd_and_paired_differences(tmp_path, capsys):
    from cbir.cli import main

    root = _fake_corel(tmp_path / "corel5k")
    out = tmp_path / "seeds.json"
    code = main(["-c", str(tmp_path / "coll"), "eval", "hashing", "corel5k", "--root", str(root),
                 "--methods", "lsh,itq", "--bits", "8,16", "--seed", "0,1,2", "--quiet", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "mean ± sd over 3 seeds" in text and "paired difference to itq" in text
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1, 2] and len(result["runs"]) == 3
    assert [r["seed"] for r in result["runs"]] == [0, 1, 2]
    cell = result["summary"]["labels"]["lsh"]["16"]
    values = [r["results"]["labels"]["lsh"]["16"]["mAP@5000"] for r in result["runs"]]
    assert cell["values"] == values and cell["mean"] == sum(values) / 3
    assert len(set(values)) > 1  # LSH's random projections differ by seed
    itq = [r["results"]["labels"]["itq"]["16"]["mAP@5000"] for r in result["runs"]]
    diffs = [v - b for v, b in zip(values, itq, strict=True)]
    assert cell["wins"] == sum(d > 0 for d in diffs)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "hashing", "corel5k", "--seed", "1,1"])
    assert exc.value.code == 2
    assert "distinct seeds" in capsys.readouterr().err
