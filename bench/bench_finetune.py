"""Does fine-tuning the last backbone block help retrieval? plain vs head-only vs fine-tuned.

Wang/Corel-1K split 50/50 per class exactly as bench/bench_train.py (stratified_split(y, 0.5,
seed)); the train half is copied to WORK/train/<class>/, the test half to WORK/test/<class>/.
Models are trained with the CLI (`cbir train`), then every test image queries the other
test images (leave-one-out), P@1/5/10, using bench_train's rerank/partition helpers.

    python bench_finetune.py --wang .data/dataset --work /tmp/ft/wang [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
from bench_train import KS, partition_loo, rerank_loo  # noqa: E402
from cbir.eval.folder import load_labelled_features  # noqa: E402
from cbir.eval.protocols import format_table, leave_one_out_retrieval  # noqa: E402
from cbir.io.datasets import read_class_folders  # noqa: E402
from cbir.train import ModelRegistry, stratified_split  # noqa: E402


def split_dataset(root: Path, work: Path, seed: int) -> tuple[Path, Path]:
    paths, y, classes = read_class_folders(root)
    tr, te = stratified_split(y, 0.5, seed)
    for part, rows in (("train", tr), ("test", te)):
        for r in rows:
            dst = work / part / classes[y[r]] / paths[r].name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(paths[r], dst)
    return work / "train", work / "test"


def cbir(*argv: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    cmd = [str(Path(sys.executable).parent / "cbir"), *argv]
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def rows_for(method: str, feats: np.ndarray, y: np.ndarray, model, info: dict, args) -> list[dict]:
    out = []
    if model is None:
        base = leave_one_out_retrieval(feats, y, ks=KS, full_map=False)
        return [{"method": method, **{f"P@{k}": base[f"P@{k}"] for k in KS}, **info}]
    probs = model.predict(feats)
    info = {**info, "test_acc": float((probs.argmax(1) == y).mean())}
    emb = leave_one_out_retrieval(model.embed(feats), y, ks=KS, full_map=False)
    out.append({"method": f"{method}: embed", **{f"P@{k}": emb[f"P@{k}"] for k in KS}, **info})
    rr = rerank_loo(feats, y, probs, args.beta, args.depth)
    out.append({"method": f"{method}: rerank b={args.beta}", **rr, **info})
    part, share = partition_loo(feats, y, probs.argmax(1))
    out.append({"method": f"{method}: partition n=1 ({share:.0%} scanned)", **part, **info})
    return out


def cifar_subset(root: Path, work: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    """The first n_train / n_test images per class of CIFAR-10 (JPEG class folders)."""
    for part, n in (("train", n_train), ("test", n_test)):
        for cdir in sorted(p for p in (root / part).iterdir() if p.is_dir()):
            for f in sorted(cdir.iterdir())[:n]:
                dst = work / part / cdir.name / f.name
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, dst)
    return work / "train", work / "test"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wang", type=Path, default=None)
    ap.add_argument("--cifar", type=Path, default=None, help="CIFAR-10 root with train/ and test/")
    ap.add_argument("--cifar-train", type=int, default=200, help="train images per class")
    ap.add_argument("--cifar-test", type=int, default=100, help="test images per class")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--variants", default="ft1",
                    help="comma-separated fine-tune variants: ft1 (1 block), ft2, ft4 (4 blocks), "
                         "ft1-noflip")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "finetune.json")
    args = ap.parse_args()
    if args.wang:
        key = "wang1k"
        work = args.work or Path("/tmp/ft/wang")
        train_dir, test_dir = split_dataset(args.wang, work, args.seed)
    else:
        key = f"cifar10-{args.cifar_train}+{args.cifar_test}"
        work = args.work or Path("/tmp/ft/cifar")
        train_dir, test_dir = cifar_subset(args.cifar, work, args.cifar_train, args.cifar_test)
    models = work / "models"
    env = {**os.environ, "CBIR_CACHE_DIR": str(work / "cache"), "CBIR_MODELS_DIR": str(models),
           "OMP_NUM_THREADS": "1"}
    os.environ.update({k: env[k] for k in ("CBIR_CACHE_DIR", "CBIR_MODELS_DIR")})
    reg = ModelRegistry(models)
    secs: dict[str, float] = {}
    if not reg.exists("mlp"):
        secs["mlp"] = cbir("train", str(train_dir), "--name", "mlp", "--models", str(models),
                           "--extractor", "efficientnet-lite0", "-q", env=env)
    variants = {"ft1": [], "ft4": ["--finetune-blocks", "4"], "ft1-noflip": ["--no-flip"],
                "ft2": ["--finetune-blocks", "2"]}
    for v in args.variants.split(","):
        if not reg.exists(v):
            secs[v] = cbir("train", str(train_dir), "--name", v, "--models", str(models),
                           "--finetune", *variants[v], env=env)

    feats, y, classes, failed = load_labelled_features(test_dir, extractor="efficientnet-lite0",
                                                       collection_dir=work / "col-plain", progress=False)
    n_train = sum(1 for p in train_dir.rglob("*") if p.is_file())
    common = {"train": n_train, "test": len(y)}
    rows = rows_for("plain features", feats, y, None, {"epochs": None, "train_s": None}, args)
    m = reg.load("mlp")
    info = {"epochs": f"{m.meta['best_epoch']}/{m.meta['epochs']}",
            "train_s": m.meta["training_seconds"]}
    rows += rows_for("mlp head only", feats, y, m, info, args)
    for v in args.variants.split(","):
        m = reg.load(v)
        f2, y2, _, _ = load_labelled_features(test_dir, extractor=f"finetuned:{v}",
                                              collection_dir=work / f"col-{v}", progress=False)
        assert (y2 == y).all()
        info = {"epochs": f"{m.meta['best_epoch']}/{m.meta['epochs']}",
                "train_s": m.meta["total_seconds"]}
        rows += rows_for(f"{v} backbone (plain cosine)", f2, y2, None, info, args)
        rows += rows_for(f"{v} backbone + mlp", f2, y2, m, info, args)
    rows = [{"dataset": key, **common, **r} for r in rows]
    cols = ["dataset", "train", "test", "method", *[f"P@{k}" for k in KS], "test_acc", "epochs", "train_s"]
    print(format_table(rows, cols, floatfmt=".3f"))
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows, "cli_seconds": secs},
                                   indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
