"""`cbir duplicates` at 100k images: wall time, peak RSS, and planted-group precision / recall.

    .venv/bin/python bench/bench_duplicates_100k.py                 # 100k, 1,000 planted groups
    .venv/bin/python bench/bench_duplicates_100k.py --n 20000 --groups 200 --out /tmp/d.json
    .venv/bin/python bench/bench_duplicates_100k.py --pythonpath /tmp/before/src --out /tmp/before.json

The collection is built once through the store API (no images decoded; cached under
``--root``, default /tmp/cbir-dup100k): catalog rows with synthetic CNN-like float16 features
from bench_index.FeatureModel (the generator bench/bench_cold.py uses), among which
``--groups`` near-duplicate groups of 2-4 images are planted: each group is one generated
photo plus copies ``x + sigma * noise`` (sigma 0.004-0.008, cosine to the original ~0.95-0.99,
what resized / re-encoded copies score with the real backbone), placed at random rows; one
group in ten also has a byte-identical copy (same sha256, same vector). The index is built as
``cbir index`` leaves it (HNSW at 100k, see cbir.index.choose_index) by bench_cold.build_index.

Measured: ``cbir -c DIR duplicates --json`` with the default threshold, ``--repeat`` times as a
fresh process (wall, peak RSS via GNU time, page cache warm), and once in-process split into
its phases (k-NN pairs from the index, exact groups, grouping + keepers). From the JSON:

* pair recall: planted pairs (any two members of one planted group) that end up in one group;
* group recall: planted groups found whole as one group with nothing else in it;
* precision: co-grouped pairs that are planted pairs. The generator's own nearest neighbours
  reach ~0.9 (max over 20k rows: 0.896), so at 100k a few unplanted pairs pass the threshold:
  groups outside the plant are checked against the vectors (linked: every member reaches the
  others through pairs >= the threshold, i.e. real near pairs of the data, not false matches);
* completeness: for ``--sample`` random images, brute force over all vectors lists every
  neighbour >= the threshold; each must be in the image's group (HNSW misses would show here).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cold import build_index, cbir_command, image_path, log, run_once  # noqa: E402
from bench_index import FeatureModel  # noqa: E402

BUILD_MARK = "bench-built.json"
CHUNK = 50_000


def plant(n: int, n_groups: int, seed: int) -> list[list[int]]:
    """Row numbers of each planted group (the original first), disjoint, sizes 2-4."""
    rng = np.random.default_rng(seed + 11)
    sizes = rng.integers(2, 5, n_groups)
    rows = rng.choice(n, int(sizes.sum()), replace=False)
    out, at = [], 0
    for s in sizes.tolist():
        out.append(sorted(rows[at:at + s].tolist()))
        at += s
    return out


def build(directory: Path, n: int, n_groups: int, seed: int) -> dict[str, Any]:
    """Create (or reuse) the catalog: ``n`` rows with the planted groups; returns its record."""
    mark = directory / BUILD_MARK
    if mark.exists():
        return json.loads(mark.read_text())
    from cbir.collection import Collection
    from cbir.store.catalog import ImageRecord

    if directory.exists():
        raise SystemExit(f"{directory} exists but was not finished by this benchmark; delete it")
    t0 = time.perf_counter()
    groups = plant(n, n_groups, seed)
    rng = np.random.default_rng(seed + 23)
    col = Collection.create_or_open(directory)
    model = FeatureModel.make(col.manifest.dim, 100, seed=seed)
    x, cls, _ = model.sample(n, seed=seed + 1)
    sha = [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in range(n)]
    exact: list[list[int]] = []
    for gi, g in enumerate(groups):
        src = g[0]
        for j, r in enumerate(g[1:]):
            if gi % 10 == 0 and j == 0:  # a byte-identical copy
                x[r], sha[r] = x[src], sha[src]
                exact.append([src, r])
                continue
            sigma = rng.uniform(0.004, 0.008)
            y = x[src] + sigma * rng.standard_normal(x.shape[1]).astype(np.float32)
            x[r] = y / np.linalg.norm(y)
        cls[g] = cls[src]
    f16 = x.astype(np.float16)
    labels = [("tabby", 0.61), ("tiger cat", 0.22), ("Egyptian cat", 0.08)]
    now_ns = time.time_ns()
    with col.writer_lock():
        for start in range(0, n, CHUNK):
            recs = [ImageRecord(path=image_path(i), size=50_000 + i % 7919, mtime_ns=now_ns - i,
                                sha256=sha[i], width=640 + 32 * (i % 5), height=480, labels=labels,
                                top_class=int(cls[i]), feature=f16[i])
                    for i in range(start, min(n, start + CHUNK))]
            for lo in range(0, len(recs), 5_000):
                col.catalog.commit_batch(recs[lo:lo + 5_000])
            log(f"n={n}: {start + len(recs)} rows ({time.perf_counter() - t0:.0f} s)")
    col.close()
    # the planted cosines (float16 rows, as the catalog keeps them)
    xf = f16.astype(np.float32)
    xf /= np.linalg.norm(xf, axis=1, keepdims=True)
    cos = [float(xf[a] @ xf[b]) for g in groups for a, b in itertools.combinations(g, 2)]
    info = {"n": n, "groups": groups, "exact_pairs": exact, "seed": seed,
            "planted_images": sum(len(g) for g in groups),
            "planted_pairs": sum(len(g) * (len(g) - 1) // 2 for g in groups),
            "planted_cosine": {"min": round(min(cos), 4), "median": round(statistics.median(cos), 4),
                               "max": round(max(cos), 4)},
            "catalog_build_s": round(time.perf_counter() - t0, 1)}
    mark.write_text(json.dumps(info) + "\n")
    return info


def row_of(path: str) -> int:
    return int(Path(path).stem[3:])  # /synthetic/00012/img0012345.jpg -> 12345


def score(found: list[list[str]], planted: list[list[int]], directory: Path, threshold: float,
          sample: int, seed: int) -> dict[str, Any]:
    """Pair / group recall against the plant, precision of co-grouped pairs, the unplanted groups
    checked against the vectors, and a brute-force check of ``sample`` random images."""
    from cbir.collection import Collection

    found_rows = [sorted(row_of(p) for p in g) for g in found]
    group_of = {r: gi for gi, g in enumerate(found_rows) for r in g}
    truth = {(a, b) for g in planted for a, b in itertools.combinations(g, 2)}
    got = {(a, b) for g in found_rows for a, b in itertools.combinations(g, 2)}
    tp = len(truth & got)
    whole = sum(1 for g in planted if g[0] in group_of and found_rows[group_of[g[0]]] == g)
    in_plant = {r for g in planted for r in g}
    with Collection.open(directory) as col:
        id_of = {row_of(p): int(i) for p, i in col.catalog.db.execute("SELECT path, id FROM images")}
        rows = np.array(sorted(id_of), dtype=np.int64)
        ids, feats = col.catalog.features(np.array([id_of[r] for r in rows], dtype=np.int64))
    x = feats.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    at = {int(i): j for j, i in enumerate(ids.tolist())}
    vec = {int(r): x[at[id_of[int(r)]]] for r in rows}
    # a group outside the plant is right when its members are linked by pairs >= the threshold
    other = [g for g in found_rows if not in_plant & set(g)]
    linked = 0
    for g in other:
        m = np.stack([vec[r] for r in g])
        s = m @ m.T
        np.fill_diagonal(s, -1)
        comp = {0}
        grow = True
        while grow:
            nxt = comp | {int(j) for i in comp for j in np.flatnonzero(s[i] >= threshold)}
            grow, comp = nxt != comp, nxt
        linked += len(comp) == len(g)
    # brute force for a sample: every neighbour >= threshold must share the image's group
    rng = np.random.default_rng(seed + 31)
    pick = rng.choice(len(rows), min(sample, len(rows)), replace=False)
    row_by_id = {i: r for r, i in id_of.items()}
    missed = checked = 0
    for lo in range(0, len(pick), 500):
        q = [int(rows[j]) for j in pick[lo:lo + 500]]
        sims = x[[at[id_of[r]] for r in q]] @ x.T
        for qi, r in enumerate(q):
            for nb in np.flatnonzero(sims[qi] >= threshold).tolist():
                rn = row_by_id[int(ids[nb])]
                if rn == r:
                    continue
                checked += 1
                missed += int(r not in group_of or group_of.get(rn) != group_of[r])
    return {
        "found_groups": len(found_rows), "found_images": sum(len(g) for g in found_rows),
        "pair_recall": round(tp / len(truth), 4) if truth else None,
        "group_recall": round(whole / len(planted), 4) if planted else None,
        "precision": round(tp / len(got), 4) if got else None,
        "unplanted_pairs": len(got - truth), "unplanted_groups": len(other),
        "unplanted_groups_linked": linked,
        "sample": {"images": len(pick), "pairs_at_threshold": checked, "missed": missed}}


def phases(directory: Path, threshold: float) -> dict[str, float]:
    """One in-process run of find_duplicates' parts (index loaded first, timed apart)."""
    from cbir.collection import Collection
    from cbir.duplicates import components, exact_groups, similar_pairs

    with Collection.open(directory) as col:
        t = time.perf_counter()
        col.index()
        load = time.perf_counter() - t
        t = time.perf_counter()
        pairs = similar_pairs(col, threshold)
        knn = time.perf_counter() - t
        t = time.perf_counter()
        ex = exact_groups(col)
        exact = time.perf_counter() - t
        t = time.perf_counter()
        comps = components([*pairs, *((g[0], o) for g in ex for o in g[1:])])
        grouping = time.perf_counter() - t
    return {"index_load_s": round(load, 2), "knn_pairs_s": round(knn, 2), "exact_groups_s": round(exact, 3),
            "components_s": round(grouping, 3), "pairs": len(pairs), "components": len(comps)}


def main(argv: list[str] | None = None) -> int:
    from cbir.duplicates import DEFAULT_THRESHOLD

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=1_000)
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--root", type=Path, default=Path("/tmp/cbir-dup100k"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=2000,
                    help="images checked against brute force (every neighbour >= threshold grouped)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/duplicates_100k.json"))
    ap.add_argument("--pythonpath", default=None,
                    help="run `cbir duplicates` with this src first on the path (the 'before' figures: "
                         "git archive COMMIT src | tar -x -C /tmp/before; --pythonpath /tmp/before/src)")
    args = ap.parse_args(argv)

    directory = args.root / f"n{args.n}-g{args.groups}-s{args.seed}"
    args.root.mkdir(parents=True, exist_ok=True)
    built = build(directory, args.n, args.groups, args.seed)
    index = build_index(directory, args.n, "auto", rebuild=False)
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(args.root / "pycache")}
    if args.pythonpath:  # time another checkout's cbir (e.g. the code before a change)
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    load_before = round(os.getloadavg()[0], 2)
    cmd = [*cbir_command(), "-c", str(directory), "duplicates", "--json",
           "--threshold", str(args.threshold)]
    walls, rss, out = [], [], ""
    for i in range(args.repeat):
        w, r, code, out = run_once(cmd, env)
        if code != 0:
            raise SystemExit(f"cbir duplicates exited {code}")
        walls.append(w)
        rss.append(r)
        log(f"run {i + 1}: {w:.2f} s, {r:.0f} MiB")
    found = [[m["path"] for m in g["members"]] for g in json.loads(out)["groups"]]
    quality = score(found, built["groups"], directory, args.threshold, args.sample, args.seed)
    # in this process, so with this checkout's cbir: not for another one's
    parts = None if args.pythonpath else phases(directory, args.threshold)
    result = {
        "n": args.n, "planted_groups": args.groups, "planted_images": built["planted_images"],
        "planted_pairs": built["planted_pairs"], "planted_cosine": built["planted_cosine"],
        "threshold": args.threshold, "index": index.get("index"),
        "wall_s": round(statistics.median(walls), 2), "wall_first_s": round(walls[0], 2),
        "max_rss_mib": round(max(rss), 1), "runs": args.repeat, **quality, "phases": parts,
        "catalog_build_s": built["catalog_build_s"], "index_build_s": index.get("index_build_s"),
        "command": f"cbir -c DIR duplicates --json --threshold {args.threshold}",
        "pythonpath": args.pythonpath, "load_average_before": load_before,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    smp = quality["sample"]
    print(f"\n| images | planted groups (pairs) | index | wall (median of {args.repeat}) | peak RSS "
          "| pair recall | group recall | precision | unplanted groups (linked) "
          "| brute-force sample missed |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.n:,} | {args.groups:,} ({built['planted_pairs']:,}) | {result['index']} "
          f"| {result['wall_s']:.1f} s | {result['max_rss_mib']:,.0f} MiB | {quality['pair_recall']} "
          f"| {quality['group_recall']} | {quality['precision']} | {quality['unplanted_groups']} "
          f"({quality['unplanted_groups_linked']}) | {smp['missed']} of {smp['pairs_at_threshold']} "
          f"({smp['images']:,} images) |")
    print(f"\nin-process phases: {parts}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
