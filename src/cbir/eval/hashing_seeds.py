"""Hashing tables over several seeds: mean ± sd per cell, and paired differences to a baseline.

One seed's table can mislead: on Corel-5K (499 queries) two seeds of the same method
differ by up to 0.02 mAP, as much as the gaps between methods. Every run of
``cbir eval hashing`` with a seed fits every method with that seed (ITQ's random rotation,
LSH's projections, the deep hashers' initialisation and minibatches), so two methods run
with the same seed form a pair, and the paired difference (method - baseline, per seed)
is what says whether one beats the other.

Input: the ``results`` of :func:`cbir.eval.hashing_benchmark.run` (as written to JSON:
``{relevance kind: {method: {bits as str: {metric: value}}}}``), one per seed.
sd is the sample standard deviation (ddof = 1; 0 for one seed). "wins" counts the seeds
where the method's value is strictly above the baseline's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest
from cbir.eval.protocols import format_table

Results = Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize_seeds(
    runs: Sequence[Results], metric: str = "mAP@5000", baseline: str | None = "itq"
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{kind: {method: {bits: {mean, sd, n, values[, diff_mean, diff_sd, wins]}}}} over the runs.

    A cell is summarised over the runs that have it; the paired fields need the baseline's
    cell in the same runs (they are left out otherwise, and for the baseline itself).
    """
    if not runs:
        raise InvalidRequest("no runs to summarise")
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for kind in runs[0]:
        methods: list[str] = []
        for r in runs:
            methods += [m for m in r.get(kind, {}) if m not in methods]
        per_kind: dict[str, dict[str, dict[str, Any]]] = {}
        for method in methods:
            bits_keys: list[str] = []
            for r in runs:
                bits_keys += [b for b in r.get(kind, {}).get(method, {}) if b not in bits_keys]
            cells: dict[str, dict[str, Any]] = {}
            for b in bits_keys:
                vals, diffs = [], []
                for r in runs:
                    cell = r.get(kind, {}).get(method, {}).get(b, {})
                    if metric not in cell:
                        continue
                    vals.append(float(cell[metric]))
                    base = r.get(kind, {}).get(baseline or "", {}).get(b, {})
                    if baseline and method != baseline and metric in base:
                        diffs.append(float(cell[metric]) - float(base[metric]))
                if not vals:
                    continue
                v = np.asarray(vals)
                entry: dict[str, Any] = {"mean": float(v.mean()), "sd": _sd(v), "n": len(v), "values": vals}
                if diffs and len(diffs) == len(vals):
                    d = np.asarray(diffs)
                    entry.update(diff_mean=float(d.mean()), diff_sd=_sd(d), wins=int((d > 0).sum()))
                cells[b] = entry
            if cells:
                per_kind[method] = cells
        out[kind] = per_kind
    return out


def _bits_order(per_kind: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for cells in per_kind.values():
        keys += [k for k in cells if k not in keys]
    ints = sorted((k for k in keys if k.isdigit()), key=int)
    return ints + [k for k in keys if not k.isdigit()]


def format_seed_tables(summary: Mapping[str, Any], kind: str, metric: str, baseline: str | None) -> str:
    """Two tables for one relevance kind: mean ± sd, then the paired difference to the baseline.

    A cell summarised over fewer runs than the most says so: ``0.049 ± 0.000 (n=1)``.
    """
    per_kind = summary[kind]
    cols = _bits_order(per_kind)

    def head(k: str) -> str:
        return f"{k} bits" if k.isdigit() else k

    n = max((c["n"] for cells in per_kind.values() for c in cells.values()), default=0)
    rows, diff_rows = [], []
    for method, cells in per_kind.items():
        row: dict[str, object] = {"method": method}
        drow: dict[str, object] = {"method": method}
        for k in cols:
            if k in cells:
                c = cells[k]
                fewer = f" (n={c['n']})" if c["n"] < n else ""
                row[head(k)] = f"{c['mean']:.3f} ± {c['sd']:.3f}{fewer}"
                if "diff_mean" in c:
                    drow[head(k)] = f"{c['diff_mean']:+.3f} ± {c['diff_sd']:.3f} ({c['wins']}/{c['n']})"
        rows.append(row)
        if len(drow) > 1:
            diff_rows.append(drow)
    text = f"{metric}, mean ± sd over {n} seeds\n" + format_table(rows, ["method", *map(head, cols)])
    if baseline and diff_rows:
        text += (f"\n\n{metric}: paired difference to {baseline} (same seed), mean ± sd "
                 f"(seeds where it is higher)\n" + format_table(diff_rows, ["method", *map(head, cols)]))
    return text
