"""Mean ± sd over seeds and paired differences to a baseline, checked by hand."""

from __future__ import annotations

import pytest

from cbir.errors import InvalidRequest
from cbir.eval.hashing_seeds import format_seed_tables, summarize_seeds


def _run(itq12, idea12, idea64=None):
    res = {"labels": {"float (no hashing)": {"float": {"mAP@5000": 0.5}},
                      "itq": {"12": {"mAP@5000": itq12}},
                      "idea": {"12": {"mAP@5000": idea12}}}}
    if idea64 is not None:
        res["labels"]["idea"]["64"] = {"mAP@5000": idea64}
    return res


def test_summary_by_hand():
    # idea 12 bits over 3 seeds: 0.30, 0.20, 0.25 -> mean 0.25, sample sd
    # sqrt(((.05)^2 + (.05)^2 + 0) / 2) = 0.05. itq: 0.20, 0.22, 0.24 -> mean 0.22, sd 0.02.
    # paired differences: +0.10, -0.02, +0.01 -> mean 0.03, sd sqrt((.07^2 + .05^2 + .02^2) / 2)
    # = sqrt(0.0039) = 0.062450; wins 2 of 3.
    runs = [_run(0.20, 0.30, 0.4), _run(0.22, 0.20), _run(0.24, 0.25)]
    s = summarize_seeds(runs)["labels"]
    idea = s["idea"]["12"]
    assert idea["mean"] == pytest.approx(0.25) and idea["sd"] == pytest.approx(0.05)
    assert idea["diff_mean"] == pytest.approx(0.03) and idea["diff_sd"] == pytest.approx(0.0624500, abs=1e-6)
    assert idea["wins"] == 2 and idea["n"] == 3
    assert s["itq"]["12"]["mean"] == pytest.approx(0.22) and "diff_mean" not in s["itq"]["12"]
    # a cell one run has: summarised over that run (sd 0); no baseline cell at 64 bits -> no pairing
    assert s["idea"]["64"] == {"mean": 0.4, "sd": 0.0, "n": 1, "values": [0.4]}
    assert s["float (no hashing)"]["float"]["mean"] == 0.5
    text = format_seed_tables(summarize_seeds(runs), "labels", "mAP@5000", "itq")
    assert "mean ± sd over 3 seeds" in text and "0.250 ± 0.050" in text
    assert "+0.030 ± 0.062 (2/3)" in text
    assert "0.400 ± 0.000 (n=1)" in text  # idea at 64 bits: one run only
    with pytest.raises(InvalidRequest):
        summarize_seeds([])
