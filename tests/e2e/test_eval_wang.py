"""The paper's target on real photos: Wang/Corel-1K, every image querying the other 999.

Needs ../shared/datasets/wang1k.tar (skips with the reason when it is absent) and the
real EfficientNet-Lite0 backbone (exported to ONNX once per machine).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from cbir.eval.folder import evaluate_folder

WANG = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "wang1k.tar"

pytestmark = [pytest.mark.slow, pytest.mark.datasets]


@pytest.fixture(scope="module")
def wang(tmp_path_factory) -> Path:
    if not WANG.exists():
        pytest.skip(f"Wang/Corel-1K not found at {WANG} (see README: Evaluation)")
    root = tmp_path_factory.mktemp("wang")
    with tarfile.open(WANG) as tar:
        tar.extractall(root, filter="data")
    return root / "dataset"


def test_wang_p_at_10_is_far_above_the_papers_target(wang, tmp_path):
    r = evaluate_folder(wang, collection_dir=tmp_path / "coll", progress=False)
    assert r["images"] == 1000 and r["classes"] == 10 and r["failed"] == 0
    # the paper asked for P@10 >= 0.80; off-the-shelf ImageNet features do far better
    assert r["P@10"] >= 0.90
    assert r["P@1"] >= r["P@10"] - 0.05 and 0.0 < r["mAP"] <= 1.0


def test_colorhist_baseline_is_much_weaker(wang, tmp_path):
    """A classic colour histogram, as a sanity check that the CNN's lead is real."""
    r = evaluate_folder(wang, extractor="colorhist", collection_dir=tmp_path / "ch", progress=False)
    assert 0.3 < r["P@10"] < 0.8
