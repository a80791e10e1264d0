"""Does a trained classifier help retrieval? Plain backbone features vs. the trained model.

For each dataset a head is trained on a train split (early stopping on a validation split
carved out of the train split; the test split is never seen), then every test image queries
the other test images (leave-one-out) and P@1/5/10 are compared for:

* ``plain``: cosine on the stored EfficientNet-Lite0 features (the baseline);
* ``embed``: cosine in the model's penultimate space (``ClassifierModel.embed``: the hidden
  layer of the mlp head, the logits of the linear head);
* ``rerank``: the top ``--depth`` plain candidates re-scored as
  ``cosine + beta * p(class_q | hit)`` (``cbir.train.apply.rerank_scores``, beta fixed a priori);
* ``partition``: the paper's one table per predicted class, with the model's classes
  (n_partitions = 1: only the query's predicted class is scanned), ranked by cosine.

Datasets (extract the tars to /tmp, never into the repository):

* Wang/Corel-1K: ``tar xf wang1k.tar -C /tmp/wang`` -> ``--wang /tmp/wang`` (seeded 50/50
  stratified split: 500 train, 500 test);
* CIFAR-10 subset: ``--cifar DIR`` with ``DIR/train/<class>/`` (e.g. the first 500 images
  per class) and ``DIR/test/<class>/`` (the first 100 per class).

    python bench/bench_train.py --wang /tmp/wang --cifar /tmp/cifar-sub
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cbir.eval.folder import load_labelled_features
from cbir.eval.protocols import format_table, leave_one_out_retrieval
from cbir.train import TrainConfig, stratified_split, train_classifier
from cbir.train.apply import rerank_scores

KS = (1, 5, 10)


def _p_at_k(ranked: np.ndarray, labels: np.ndarray, q_labels: np.ndarray) -> dict[str, float]:
    """P@k for (nq, >= max k) ranked database rows (-1 = no result counts as not relevant)."""
    rel = (ranked >= 0) & (labels[np.maximum(ranked, 0)] == q_labels[:, None])
    return {f"P@{k}": float(rel[:, :k].mean()) for k in KS}


def rerank_loo(feats: np.ndarray, labels: np.ndarray, probs: np.ndarray, beta: float,
               depth: int) -> dict[str, float]:
    """Leave-one-out P@k after re-ranking each query's top ``depth`` cosine candidates."""
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    cand = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
    ranked = np.empty((len(feats), max(KS)), dtype=np.int64)
    for q in range(len(feats)):
        c = cand[q]
        score = rerank_scores(sims[q, c], probs[q], probs[c], beta)
        order = np.lexsort((c, -score))  # ties by database index, like the eval protocol
        ranked[q] = c[order[:max(KS)]]
    return _p_at_k(ranked, labels, labels)


def partition_loo(feats: np.ndarray, labels: np.ndarray, pred: np.ndarray) -> tuple[dict[str, float], float]:
    """Leave-one-out P@k scanning only the query's predicted class; also the share scanned."""
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    sims[pred[:, None] != pred[None, :]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :max(KS)]
    ranked = np.where(np.take_along_axis(sims, order, axis=1) > -np.inf, order, -1)
    share = float(np.mean([(pred == p).sum() - 1 for p in pred])) / (len(pred) - 1)
    return _p_at_k(ranked, labels, labels), share


def evaluate(name: str, tr: tuple[np.ndarray, np.ndarray], te: tuple[np.ndarray, np.ndarray],
             classes: list[str], args: argparse.Namespace) -> list[dict]:
    (xtr, ytr), (xte, yte) = tr, te
    rows = []
    base = leave_one_out_retrieval(xte, yte, ks=KS, full_map=False)
    common = {"dataset": name, "train": len(ytr), "test": len(yte)}
    rows.append({**common, "method": "plain features", **{f"P@{k}": base[f"P@{k}"] for k in KS},
                 "test_acc": None, "epochs": None, "train_s": None})
    for head in args.heads:
        t0 = time.perf_counter()
        res = train_classifier(xtr, ytr, classes, TrainConfig(head=head, seed=args.seed),
                               name=f"{name}-{head}", extractor="efficientnet-lite0",
                               warn=lambda m: print(f"  note: {m}", file=sys.stderr))
        secs = time.perf_counter() - t0
        model = res.model
        probs = model.predict(xte)
        acc = float((probs.argmax(1) == yte).mean())
        info = {"test_acc": acc, "epochs": f"{res.best_epoch}/{len(res.history)}", "train_s": secs}
        emb = leave_one_out_retrieval(model.embed(xte), yte, ks=KS, full_map=False)
        rows.append({**common, "method": f"{head}: embed", **{f"P@{k}": emb[f"P@{k}"] for k in KS},
                     **info})
        rr = rerank_loo(xte, yte, probs, args.beta, args.depth)
        rows.append({**common, "method": f"{head}: rerank b={args.beta}", **rr, **info})
        part, share = partition_loo(xte, yte, probs.argmax(1))
        rows.append({**common, "method": f"{head}: partition n=1 ({share:.0%} scanned)", **part,
                     **info})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wang", type=Path, default=None, help="folder-per-class Wang/Corel-1K")
    ap.add_argument("--cifar", type=Path, default=None, help="folder with train/<class> and test/<class>")
    ap.add_argument("--collections", type=Path, default=None,
                    help="where to cache the datasets' collections (default: the eval cache)")
    ap.add_argument("--heads", default="linear,mlp")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    args = ap.parse_args()
    args.heads = args.heads.split(",")
    if not args.wang and not args.cifar:
        ap.error("give --wang and/or --cifar")

    def load(root: Path, key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        cdir = args.collections / key if args.collections else None
        t0 = time.perf_counter()
        f, y, c, failed = load_labelled_features(root, collection_dir=cdir, progress=True)
        print(f"{key}: {len(y)} images, {len(c)} classes, {failed} failed, "
              f"{time.perf_counter() - t0:.1f} s (indexing is cached)", file=sys.stderr)
        return f, y, c

    rows: list[dict] = []
    if args.wang:
        f, y, c = load(args.wang, "wang")
        tr, te = stratified_split(y, 0.5, args.seed)  # 50 train + 50 held-out test per class
        rows += evaluate("wang1k", (f[tr], y[tr]), (f[te], y[te]), c, args)
    if args.cifar:
        ftr, ytr, c = load(args.cifar / "train", "cifar-train")
        fte, yte, c2 = load(args.cifar / "test", "cifar-test")
        if c != c2:
            raise SystemExit("train and test have different class folders")
        rows += evaluate("cifar10-sub", (ftr, ytr), (fte, yte), c, args)
    cols = ["dataset", "train", "test", "method", *[f"P@{k}" for k in KS], "test_acc", "epochs", "train_s"]
    print(format_table(rows, cols, floatfmt=".3f"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "beta": args.beta,
                                    "depth": args.depth, "seed": args.seed, "rows": rows}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
