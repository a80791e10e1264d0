"""Combine `cbir eval hashing --out` files of several seeds into mean ± sd tables.

    python bench/hashing_seeds.py bench/results/hashing-corel5k.json \
        bench/results/hashing-corel5k-seed1.json bench/results/hashing-corel5k-seed2.json \
        [--metric mAP@5000] [--baseline itq] [--out bench/results/hashing-corel5k-seeds.json]

For runs made one seed at a time (`cbir eval hashing ... --seed 0,1,2` does the same in
one command). Each file must be one seed's run of the same dataset and protocol; a file
that repeats a seed is refused. Prints, per relevance kind, the mean ± sd of the metric
per method and code length, and each method's paired difference to the baseline (same
seed) with the number of seeds where it is higher. Writes the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cbir.eval.hashing_seeds import format_seed_tables, summarize_seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--metric", default="mAP@5000")
    p.add_argument("--baseline", default="itq")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    runs = [json.loads(f.read_text()) for f in args.files]
    for key in ("dataset", "protocol"):
        if len({r[key] for r in runs}) != 1:
            sys.exit(f"the files are runs of different {key}s: {sorted({r[key] for r in runs})}")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        sys.exit(f"a seed appears twice: {seeds}")
    summary = summarize_seeds([r["results"] for r in runs], args.metric, args.baseline)
    print(f"{runs[0]['dataset']}: {runs[0]['protocol']}; seeds {seeds}")
    for kind in summary:
        print(f"\n== relevance: {kind} ==\n{format_seed_tables(summary, kind, args.metric, args.baseline)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"dataset": runs[0]["dataset"], "seeds": seeds,
                                        "files": [str(f) for f in args.files], "metric": args.metric,
                                        "baseline": args.baseline, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
