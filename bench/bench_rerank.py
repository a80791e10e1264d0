"""Re-ranking (alpha-QE, k-reciprocal, DBA) against plain features, side by side in one run.

Per dataset, seeded queries each rank every other image (itself excluded); relevant = same
class. The first search is exact cosine; a re-ranking re-scores the top ``depth`` candidates
and keeps the rest in first-search order. DBA rewrites the database vectors before the
search; to keep a query from leaking into its neighbours' augmented vectors, the DBA rows
hold the queries out: the database is every other image, augmented among themselves, and
the query vector is left as it is (an outside photo searched against an augmented library).
Reported: mAP over the full ranking, P@10, and the re-ranking's own cost per query (the
candidates' features are in memory, as after a search); per row, the paired gain over
``plain`` on the same queries with a 95 % interval and the share of queries whose AP dropped
(printed as the rows run, and in the JSON).

``--trained`` adds a trained model's embedding on Wang-1K: a seeded half of each class
(``--train-share``) trains a model as ``cbir train FOLDER --name N --finetune`` does (the
project's fine-tuning with its CLI defaults: the last MBConv block + conv head and an mlp
head, early-stopped on a 20 % validation split of that half), and the other half is indexed
with the model's extractor ``finetuned:N``, the vectors ``cbir -c DIR search --rerank`` then
works on. Queries and database are that held-out half only, so no image the model was trained
on is queried or retrieved. Two columns: ``wang-heldout`` (the stock features of the same
held-out images, same queries: the control) and ``wang-finetuned``. Everything (split,
training, queries) follows ``--seed``; the model and its collection live in a temporary folder.

    .venv/bin/python bench/bench_rerank.py [--wang /tmp/wang/dataset] [--corel /tmp/corel5k]
        [--cifar /tmp/cifar/test --cifar-collection /tmp/cifarwords] [--queries 1000]
        [--trained [--train-share 0.5]] [--out bench/results/rerank.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cbir.eval.metrics import average_precision
from cbir.rerank import RerankParams, database_augmentation, rerank

ROWS = ("plain", "qe", "kr", "dba", "dba+qe")


def load(name: str, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray] | None:
    if name == "wang" and args.wang and Path(args.wang).is_dir():
        from cbir.eval.folder import load_labelled_features

        f, lab, _, _ = load_labelled_features(Path(args.wang), progress=False)
        return f, lab
    if name == "cifar10" and args.cifar and Path(args.cifar).is_dir():
        from cbir.eval.folder import load_labelled_features

        cdir = Path(args.cifar_collection) if args.cifar_collection else None
        f, lab, _, _ = load_labelled_features(Path(args.cifar), collection_dir=cdir, progress=False)
        return f, lab
    if name == "corel5k" and args.corel and Path(args.corel).is_dir():
        from cbir.eval.hashing_benchmark import prepare

        ds, feats = prepare("corel5k", Path(args.corel), regions=False, progress=False)
        return feats.features, np.asarray(ds.labels)
    return None


def load_trained(args: argparse.Namespace, work: Path) -> dict[str, object] | None:
    """Fine-tune on a seeded share of each Wang class; the held-out images' stock and trained
    features: {"stock": (n, d), "trained": (n, d), "labels": (n,), "training": record}."""
    if not (args.wang and Path(args.wang).is_dir()):
        return None
    from cbir.eval.folder import load_labelled_features
    from cbir.extract.finetuned import MODELS_ENV, extractor_name, remove_pointer
    from cbir.io.datasets import read_class_folders
    from cbir.train import TrainConfig
    from cbir.train.finetune import FINETUNE_EPOCHS, FINETUNE_PATIENCE, FinetuneConfig, finetune_from_folder
    from cbir.train.registry import ModelRegistry

    paths, labels, classes = read_class_folders(Path(args.wang))
    stock, stock_labels, _, failed = load_labelled_features(Path(args.wang), progress=False)
    if failed or len(stock) != len(paths) or not np.array_equal(stock_labels, labels):
        raise SystemExit(f"{args.wang}: {failed} unreadable image(s); the split needs every image")
    rng = np.random.default_rng(args.seed)
    held = np.zeros(len(paths), dtype=bool)
    for c in range(len(classes)):
        rows = np.flatnonzero(labels == c)
        n_train = int(round(args.train_share * len(rows)))
        held[rng.permutation(rows)[n_train:]] = True
    # the two halves as folder-per-class trees of links to the original files (named by their
    # row, so no two collide and each held-out link maps back to its row)
    index_of = {}
    for i, p in enumerate(paths):
        link = work / ("heldout" if held[i] else "train") / classes[int(labels[i])] / f"{i:05d}-{p.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p.resolve())
        index_of[os.path.abspath(link)] = i
    name = f"bench-rerank-s{args.seed}"
    models = work / "models"
    registry = ModelRegistry(models)
    notes: list[str] = []
    cfg = TrainConfig(epochs=FINETUNE_EPOCHS, patience=FINETUNE_PATIENCE, seed=args.seed, threads=1)
    old_env = os.environ.get(MODELS_ENV)
    os.environ[MODELS_ENV] = str(models)  # the extractor finetuned:NAME finds the model here
    try:
        t0 = time.perf_counter()
        res = finetune_from_folder(work / "train", name=name, registry=registry, config=cfg,
                                   finetune=FinetuneConfig(), progress=False, warn=notes.append)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        trained, t_labels, _, t_failed = load_labelled_features(
            work / "heldout", extractor=extractor_name(name), collection_dir=work / "collection",
            progress=False)
        index_s = time.perf_counter() - t0
    finally:
        remove_pointer(name, models)  # the registry's pointer to this temporary folder
        if old_env is None:
            os.environ.pop(MODELS_ENV, None)
        else:
            os.environ[MODELS_ENV] = old_env
    h_paths, _, _ = read_class_folders(work / "heldout")
    rows = np.array([index_of[os.path.abspath(p)] for p in h_paths])
    if t_failed or len(trained) != len(rows) or not np.array_equal(labels[rows], t_labels):
        raise SystemExit("the held-out images' trained features do not line up with their labels")
    m = res.model.meta
    record = {"train_images": int((~held).sum()), "heldout_images": int(held.sum()),
              "train_share": args.train_share, "model": {k: m.get(k) for k in (
                  "head", "epochs", "best_epoch", "stopped_early", "val_accuracy", "val_loss",
                  "train_accuracy", "warmup")},
              "blocks": m["backbone"]["blocks"], "train_seconds": round(train_s, 1),
              "index_seconds": round(index_s, 1), "warnings": notes}
    return {"stock": stock[rows], "trained": trained, "labels": labels[rows], "training": record}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def evaluate(x: np.ndarray, labels: np.ndarray, queries: np.ndarray, method: str,
             params: RerankParams, qx: np.ndarray | None = None,
             exclude: np.ndarray | None = None) -> dict[str, float]:
    """``qx`` (len(queries), d): query vectors searched against ``x`` (default x[queries]);
    ``exclude``: rows no query may retrieve (default: only itself)."""
    aps, p10, cost = [], [], []
    drop = np.zeros(len(x), dtype=bool)
    if exclude is not None:
        drop[exclude] = True
    for n, qi in enumerate(queries):
        qv = x[qi] if qx is None else qx[n]
        sims = x @ qv
        sims[qi] = -np.inf
        sims[drop] = -np.inf
        order = np.argsort(-sims, kind="stable")[: len(x) - max(1, int(drop.sum()))]
        if method in ("qe", "kr"):
            top = order[: params.depth]
            t0 = time.perf_counter()
            new = rerank(method, qv, x[top], params)
            cost.append(time.perf_counter() - t0)
            order = np.concatenate([top[np.argsort(-new, kind="stable")], order[params.depth:]])
        rel = labels[order] == labels[qi]
        aps.append(float(average_precision(rel[None, :])[0]))
        p10.append(float(rel[:10].mean()))
    out = {"mAP": float(np.mean(aps)), "P@10": float(np.mean(p10)),
           "_per_query": np.array([aps, p10])}
    if cost:
        out["ms_per_query"] = 1000 * float(np.median(cost))
    return out


def run_rows(name: str, feats: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
             params: RerankParams) -> dict:
    """Every row of ROWS on one feature set: seeded queries, each against all other images."""
    x, labels = _unit(feats), np.asarray(labels)
    rng = np.random.default_rng(args.seed)
    n_q = min(args.queries, len(x) // 2)  # DBA needs a database besides the queries
    q = np.sort(rng.choice(len(x), size=n_q, replace=False))
    db = np.setdiff1d(np.arange(len(x)), q)
    xd = x.copy()
    xd[db] = database_augmentation(x[db])  # the held-out queries are no one's neighbour
    res = {}
    for row in ROWS:
        method = "qe" if row.endswith("qe") else ("kr" if row == "kr" else "none")
        t0 = time.perf_counter()
        if row.startswith("dba"):  # queries searched against the augmented others only
            res[row] = evaluate(xd, labels, q, method, params, qx=x[q], exclude=q)
        else:
            res[row] = evaluate(x, labels, q, method, params)
        res[row]["seconds"] = round(time.perf_counter() - t0, 1)
        if row != "plain":  # the same queries: the gain per query, paired
            res[row]["vs_plain"] = paired_gain(res[row]["_per_query"], res["plain"]["_per_query"])
        g = res[row].get("vs_plain")
        print(f"{name:8s} {row:7s} mAP {res[row]['mAP']:.4f}  P@10 {res[row]['P@10']:.4f}"
              + (f"  {res[row]['ms_per_query']:.2f} ms/query" if "ms_per_query" in res[row] else "")
              + (f"  vs plain: mAP {g['mAP'][0]:+.4f} [{g['mAP'][1]:+.4f}, {g['mAP'][2]:+.4f}], "
                 f"P@10 {g['P@10'][0]:+.4f} [{g['P@10'][1]:+.4f}, {g['P@10'][2]:+.4f}], "
                 f"AP worse for {g['ap_worse']:.0%} of queries" if g else ""),
              flush=True)
    for r in res.values():
        del r["_per_query"]
    return {"images": len(x), "queries": len(q), "rows": res}


def paired_gain(new: np.ndarray, base: np.ndarray) -> dict[str, object]:
    """Mean per-query gain over ``base`` with a 95 % normal-approximation interval, for AP and
    P@10 ((2, n_queries) arrays, same queries), and the share of queries whose AP dropped."""
    out: dict[str, object] = {}
    for k, key in enumerate(("mAP", "P@10")):
        d = new[k] - base[k]
        half = 1.96 * float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        out[key] = [round(float(d.mean()), 5), round(float(d.mean()) - half, 5),
                    round(float(d.mean()) + half, 5)]
    out["ap_worse"] = round(float((new[0] < base[0] - 1e-12).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wang", default="/tmp/wang/dataset")
    ap.add_argument("--corel", default="/tmp/corel5k")
    ap.add_argument("--cifar", default="/tmp/cifar/test")
    ap.add_argument("--cifar-collection", default="/tmp/cifarwords")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/rerank.json")
    ap.add_argument("--trained", action="store_true",
                    help="also a fine-tuned model's embedding on Wang-1K (held-out half; see above)")
    ap.add_argument("--train-share", type=float, default=0.5,
                    help="with --trained: share of each Wang class the model trains on (default 0.5)")
    args = ap.parse_args(argv)
    if not 0.0 < args.train_share < 1.0:
        ap.error("--train-share must be between 0 and 1")
    params = RerankParams(depth=args.depth)
    results: dict[str, dict] = {}
    for name in ("wang", "corel5k", "cifar10"):
        got = load(name, args)
        if got is None:
            print(f"{name}: not found, skipped", file=sys.stderr)
            continue
        results[name] = run_rows(name, got[0], got[1], args, params)
    if args.trained:
        with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
            got_t = load_trained(args, Path(tmp))
        if got_t is None:
            print("wang-finetuned: Wang-1K not found, skipped", file=sys.stderr)
        else:
            training = got_t["training"]
            mt = training["model"]
            print(f"trained on {training['train_images']} images in {training['train_seconds']} s "
                  f"({mt['epochs']} epochs, kept {mt['best_epoch']}, validation accuracy "
                  f"{mt['val_accuracy']:.3f}); held-out {training['heldout_images']} indexed in "
                  f"{training['index_seconds']} s", flush=True)
            results["wang-heldout"] = run_rows("wang-heldout", got_t["stock"], got_t["labels"], args,
                                               params)
            results["wang-finetuned"] = run_rows("wang-finetuned", got_t["trained"], got_t["labels"],
                                                 args, params)
            results["wang-finetuned"]["training"] = training
    if not results:
        print("no dataset found; see the docstring", file=sys.stderr)
        return 1
    head = "| re-ranking | " + " | ".join(f"{n} mAP | {n} P@10" for n in results) + " | ms/query (depth " \
        f"{args.depth}) |"
    lines = [head, "|---" * (2 * len(results) + 2) + "|"]
    for row in ROWS:
        cells = []
        for n in results:
            r = results[n]["rows"][row]
            cells += [f"{r['mAP']:.3f}", f"{r['P@10']:.3f}"]
        ms = [results[n]["rows"][row].get("ms_per_query") for n in results]
        ms_s = "/".join(f"{m:.1f}" for m in ms if m is not None) or "-"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {ms_s} |")
    table = "\n".join(lines)
    print(table)
    out = {"params": params.__dict__, "seed": args.seed, "datasets": results, "table": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
