"""Benchmark trained-model scene (concept) queries on synthetic collections (issue 11, part 4).

    python bench/bench_scene.py [--sizes 10000,100000] [--vectors word2vec|none]
                                [--root /tmp/cbir-scene] [--out bench/results/scene.json]
    python bench/bench_scene.py --sizes 1000000          # optional; slow to build and train

For each size N: a real collection (SQLite catalog, extractor efficientnet-lite0-int8, as
bench_cold builds it through ``Catalog.commit_batch``, no image decoding) whose images carry
clustered L2-normalised 1280-d float16 features (bench_index.FeatureModel, 60 clusters),
stored top-16 ImageNet class probabilities (the cluster's class first, so the built-in
concepts have something to read; 8 % of the images put most mass on a dog class), and, on
30 % of the images, user tags: 2-3 scene words per cluster (of 24; each kept with p 0.8,
plus another word with p 0.15). A concept model is trained on them with ``train_concepts``
(``--vectors word2vec`` by default: skip-gram on the collection's own tags, so the text
branch is trained and queried without GloVe/MiniLM downloads; ``none`` gives a visual-only
model; the visual classifier is capped at ``--epochs`` 15 with batch 256, the text branch
keeps its defaults). The catalog and the model are cached under ``--root`` (reruns only
measure; ``--retrain`` trains again). Then:

- ``first``: the first query after training, in process (reads every record, computes the
  posteriors of all N images from the stored features, writes ``concepts/<name>.posteriors``);
- ``warm p50/p99``: ``--queries`` random 1-, 2- and 3-concept queries of trained words
  through ``scene_search`` (k 20) in the same process (posteriors cached in memory), also
  split by query size; ``merged``: ``--merged`` queries of a trained word + "dog" (the
  trained and built-in vocabularies together, ``_merged_search``);
- ``reload``: one query in process after dropping the in-memory caches (store read back,
  memory-mapped: what a new process pays, without the interpreter start and imports);
- ``cli``: ``cbir -c DIR scene WORD -k 20 --json`` (and ``WORD dog``) as fresh processes,
  store already written: median wall time over ``--repeat`` runs and max RSS (GNU time).

Prints a table and writes JSON (with the load average at start and end: the machine is
shared). Targets (issue 11): warm p50 < 50 ms at 100k images, cold CLI < 1 s at 10k.
"Before" figures of another checkout: ``PYTHONPATH=/tmp/before/src python bench/bench_scene.py``
(``git archive REV src | tar -x -C /tmp/before``; the children inherit the path). A first run
at 100k takes ~5 min on 2 shared cores (training ~3.5 min, most of it the text branch); later
runs reuse the cached collection and model (~1.5 min). 1M (not measured yet): ~2.5 GB
catalog, a posterior store of 8 GB or more (8.2 kB per image at 100k: the V* heads, 1049 concept
sets there, grow with the collection), and train_concepts holds every image's float32 features
(~5 GB): an option, not a default.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import FeatureModel  # noqa: E402

WORDS = ["sky", "water", "beach", "mountain", "snow", "forest", "city", "night", "sunset", "grass",
         "desert", "lake", "river", "road", "bridge", "garden", "field", "cloud", "rock", "street",
         "tree", "sand", "harbor", "waterfall"]
CLUSTERS = 60
DOG_CLASSES = (207, 208, 209, 210, 211)  # golden retriever, Labrador, ... (ImageNet)
CHUNK = 50_000
MARK = "bench-built.json"
MODEL_MARK = "bench-model.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cluster_words(seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed + 101)
    return [[WORDS[i] for i in rng.choice(len(WORDS), size=int(rng.integers(2, 4)), replace=False)]
            for _ in range(CLUSTERS)]


def class_probs(rng: np.random.Generator, cls: np.ndarray, dog: np.ndarray) -> list[bytes]:
    """Top-16 (uint16 index, float16 probability) blobs as the catalog stores them."""
    from cbir.store.catalog import CLASS_PROBS_K

    m = len(cls)
    top = np.argsort(rng.random((m, 1000)), axis=1)[:, :CLASS_PROBS_K].astype("<u2")
    top[:, 0] = np.where(dog, np.asarray(DOG_CLASSES)[rng.integers(0, len(DOG_CLASSES), m)], cls)
    p = np.sort(rng.dirichlet(np.full(CLASS_PROBS_K, 0.3), size=m), axis=1)[:, ::-1].astype("<f2")
    return [top[i].tobytes() + p[i].tobytes() for i in range(m)]


def build(directory: Path, n: int, seed: int, tagged: float) -> dict[str, Any]:
    """Create (or reuse) a catalog of ``n`` synthetic images with features, class probabilities
    and, on a ``tagged`` fraction, scene-word tags correlated with the feature clusters."""
    mark = directory / MARK
    if mark.exists():
        return json.loads(mark.read_text())
    from cbir.collection import Collection
    from cbir.store.catalog import ImageRecord

    if directory.exists():
        raise SystemExit(f"{directory} exists but was not finished by this benchmark; delete it")
    t0 = time.perf_counter()
    col = Collection.create_or_open(directory, "efficientnet-lite0-int8")
    model = FeatureModel.make(col.manifest.dim, CLUSTERS, seed=seed)
    words = cluster_words(seed)
    imagenet_class = np.random.default_rng(seed + 3).choice(1000, CLUSTERS, replace=False)
    rng = np.random.default_rng(seed + 7)
    now_ns = time.time_ns()
    n_tagged = 0
    with col.writer_lock():
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x, cls, _ = model.sample(m, seed=seed + 1 + start)
            f16 = x.astype(np.float16)
            is_tagged = rng.random(m) < tagged
            dog = rng.random(m) < 0.08
            blobs = class_probs(rng, imagenet_class[cls], dog)
            recs = []
            for j in range(m):
                i = start + j
                tags: list[str] = []
                if is_tagged[j]:
                    tags = [w for w in words[cls[j]] if rng.random() < 0.8]
                    if rng.random() < 0.15:
                        tags.append(WORDS[int(rng.integers(len(WORDS)))])
                    tags = list(dict.fromkeys(tags))
                    n_tagged += bool(tags)
                recs.append(ImageRecord(
                    path=f"/synthetic/{i // 1000:05d}/img{i:07d}.jpg", size=50_000 + i % 7919,
                    mtime_ns=now_ns, sha256=hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
                    width=640, height=480, labels=[("tabby", 0.61)], top_class=int(imagenet_class[cls[j]]),
                    tags=tags, feature=f16[j], class_probs=blobs[j]))
            for lo in range(0, m, 5_000):
                col.catalog.commit_batch(recs[lo:lo + 5_000])
            log(f"n={n}: {start + m} rows ({time.perf_counter() - t0:.0f} s)")
    col.close()
    info = {"n": n, "tagged_images": n_tagged, "catalog_build_s": round(time.perf_counter() - t0, 1)}
    mark.write_text(json.dumps(info) + "\n")
    return info


def train(directory: Path, vectors: str, epochs: int, retrain: bool) -> dict[str, Any]:
    mark = directory / MODEL_MARK
    if mark.exists() and not retrain:
        info = json.loads(mark.read_text())
        if info.get("vectors") == vectors and info.get("epochs") == epochs:
            return info
    from cbir.collection import Collection
    from cbir.scenes import train_concepts

    with Collection.open(directory) as col, col.writer_lock():
        t0 = time.perf_counter()
        model = train_concepts(col, vectors=vectors, overwrite=True, log=lambda s: log("  " + s),
                               classifier_kw={"epochs": epochs, "batch_size": 256})
        train_s = time.perf_counter() - t0
    info = {"vectors": vectors, "epochs": epochs, "train_s": round(train_s, 1),
            "concepts": len(model.concepts), "concept_sets": int(model.vocabulary.n_itemsets),
            "text_branch": model.text is not None, "logodds": model.logodds is not None}
    mark.write_text(json.dumps(info) + "\n")
    return info


def queries(model: Any, n: int, seed: int) -> list[list[str]]:
    known = [w for w in WORDS if w in model.concepts]
    rng = np.random.default_rng(seed)
    return [list(rng.choice(known, size=1 + i % 3, replace=False)) for i in range(n)]


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2)


def in_process(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    from cbir import scenes, words
    from cbir.collection import Collection

    out: dict[str, Any] = {}
    store = directory / "concepts" / "scenes.posteriors"
    store.unlink(missing_ok=True)
    scenes._POSTERIORS.clear()
    scenes._LOADED.clear()
    words._CACHE.clear()
    with Collection.open(directory) as col:
        model = scenes.load_concept_model(col)
        qs = queries(model, args.queries, args.seed)
        scenes.scene_search(col, "dog", k=20, model_name="builtin")  # resolver caches, not timed
        words._CACHE.clear()
        t0 = time.perf_counter()
        res = scenes.scene_search(col, " ".join(qs[0]), k=20)
        out["first_s"] = round(time.perf_counter() - t0, 3)
        out["first_model"] = res.model
        out["store_mib"] = round(store.stat().st_size / 2**20, 1) if store.exists() else None
        lat: dict[int, list[float]] = {1: [], 2: [], 3: []}
        models = set()
        for q in qs:
            t0 = time.perf_counter()
            res = scenes.scene_search(col, " ".join(q), k=20)
            lat[len(q)].append((time.perf_counter() - t0) * 1e3)
            models.add(res.model)
        every = [x for v in lat.values() for x in v]
        out.update(warm_p50_ms=pct(every, 50), warm_p99_ms=pct(every, 99), warm_models=sorted(models),
                   **{f"warm_{k}w_p50_ms": pct(v, 50) for k, v in lat.items() if v})
        if args.merged:
            ml = []
            for q in qs[: args.merged]:
                t0 = time.perf_counter()
                res = scenes.scene_search(col, f"{q[0]} dog", k=20)
                ml.append((time.perf_counter() - t0) * 1e3)
            out.update(merged_p50_ms=pct(ml, 50), merged_p99_ms=pct(ml, 99), merged_model=res.model)
        scenes._POSTERIORS.clear()
        scenes._LOADED.clear()
        words._CACHE.clear()
        gc.collect()
        t0 = time.perf_counter()
        scenes.scene_search(col, " ".join(qs[1]), k=20)
        out["reload_s"] = round(time.perf_counter() - t0, 3)
    scenes._POSTERIORS.clear()
    words._CACHE.clear()
    return out


TIME = "/usr/bin/time"


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one fresh child (GNU time for the RSS, as
    bench_cold: ru_maxrss of a child forked from here would inherit this process's peak)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        use_time = os.path.exists(TIME)
        full = [TIME, "-q", "-o", tf.name, "-f", "%M", *cmd] if use_time else cmd
        t0 = time.perf_counter()
        p = subprocess.run(full, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"exit {p.returncode}: {' '.join(cmd)}\n{p.stderr[-2000:]}")
        rss = float(tf.read().strip().splitlines()[-1]) / 1024 if use_time else float("nan")
    return wall, rss, p.stdout


def cli(directory: Path, query: str, repeat: int, env: dict[str, str]) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("cbir")
    cmd = [str(exe), "-c", str(directory), "scene", *query.split(), "-k", "20", "--json"]
    walls, rss, out = [], [], ""
    for _ in range(repeat):
        w, r, out = run_once(cmd, env)
        walls.append(w)
        rss.append(r)
    res = json.loads(out)
    return {"wall_s": round(statistics.median(walls), 3), "wall_first_s": round(walls[0], 3),
            "max_rss_mib": round(max(rss), 1), "model": res["model"], "hits": len(res["hits"])}


COLS = [("images", "images"), ("train s", "train_s"), ("first s", "first_s"), ("store MiB", "store_mib"),
        ("warm p50", "warm_p50_ms"), ("warm p99", "warm_p99_ms"), ("1w p50", "warm_1w_p50_ms"),
        ("2w p50", "warm_2w_p50_ms"), ("3w p50", "warm_3w_p50_ms"), ("merged p50", "merged_p50_ms"),
        ("reload s", "reload_s"), ("cli s", "cli_s"), ("cli MiB", "cli_rss_mib"),
        ("cli+dog s", "cli_merged_s")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated; 1000000 allowed")
    ap.add_argument("--root", type=Path, default=Path("/tmp/cbir-scene"))
    ap.add_argument("--vectors", default="word2vec", choices=["word2vec", "none", "glove", "minilm"])
    ap.add_argument("--epochs", type=int, default=15, help="visual classifier epochs (cap)")
    ap.add_argument("--tagged", type=float, default=0.3, help="fraction of images with tags")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--merged", type=int, default=30, help="trained word + 'dog' queries (0: none)")
    ap.add_argument("--repeat", type=int, default=3, help="cold CLI runs per command")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/scene.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-compiled modules, as an installed cbir has
    env["PYTHONPYCACHEPREFIX"] = str(args.root / "pycache")
    meta = {"command": " ".join(["python", *sys.argv]), "cores": os.cpu_count(),
            "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "loadavg_start": os.getloadavg(), "vectors": args.vectors, "epochs": args.epochs,
            "tagged": args.tagged, "queries": args.queries,
            "page_cache": "warm page cache, cold process (not dropped: needs root)"}
    rows = []
    for n in sizes:
        d = args.root / f"n{n}-s{args.seed}"
        row: dict[str, Any] = {"images": n, **build(d, n, args.seed, args.tagged)}
        row.update(train(d, args.vectors, args.epochs, args.retrain))
        log(f"n={n}: {row}")
        row.update(in_process(d, args))
        log(f"n={n}: in process {row}")
        c1 = cli(d, WORDS[0], args.repeat, env)
        c2 = cli(d, f"{WORDS[0]} dog", args.repeat, env)
        row.update(cli_s=c1["wall_s"], cli_first_s=c1["wall_first_s"], cli_rss_mib=c1["max_rss_mib"],
                   cli_model=c1["model"], cli_merged_s=c2["wall_s"], cli_merged_rss_mib=c2["max_rss_mib"],
                   cli_merged_model=c2["model"])
        log(f"n={n}: {row}")
        rows.append(row)
        meta["loadavg_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(" | ".join(h for h, _ in COLS))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for _, k in COLS))
    print("(times in ms unless 's'; warm/merged: in-process scene_search, k 20; cli: median of "
          f"{args.repeat} fresh `cbir scene` processes)")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
