"""``cbir train`` and ``cbir models``: train classifiers on stored features and maintain them.

```
cbir train ./classes --name shoes-v1 [--head linear|mlp] [--epochs N] [--val-split 0.2] [--json]
cbir -c NEWDIR train ./classes --name shoes-ft --finetune [--finetune-blocks 1] [--finetune-lr 1e-4]
cbir -c NEWDIR index ./photos --extractor finetuned:shoes-ft   # the fine-tuned model's features
cbir models list | show NAME | delete NAME | curves NAME --out curve.png | label NAME
cbir models use NAME | --none        # the model's classes partition the collection's index
cbir models search NAME IMAGE... | --like PATH  [--beta 0.5] [--partitioned]
```

Models live in ``<collection>/models`` unless ``--models DIR`` is given. A fine-tuned model
(``--finetune``) brings its own backbone, so it labels collections indexed with
``--extractor finetuned:NAME`` only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cbir.commands.common import (
    add_filenames_option,
    open_collection,
    output_mode,
    positive_int,
    print_json,
    print_paths,
    show_progress,
)
from cbir.errors import InvalidRequest

EXIT_OK = 0


def _float_in(lo: float, hi: float) -> Any:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected a number between {lo} and {hi}, got {v}")
        return v

    return parse


def _registry(args: argparse.Namespace) -> Any:
    from cbir.train.registry import ModelRegistry, default_models_dir

    return ModelRegistry(args.models or default_models_dir(args.collection))


def _collection_extractor(args: argparse.Namespace) -> str | None:
    """The extractor of the collection (None if there is no collection yet)."""
    from cbir.collection import default_collection_dir
    from cbir.store.manifest import MANIFEST_NAME, read_manifest

    directory = Path(args.collection or default_collection_dir())
    if not (directory / MANIFEST_NAME).exists():
        return None
    return read_manifest(directory).extractor


def _warn(message: str) -> None:
    print(f"cbir: warning: {message}", file=sys.stderr)


# -- cbir train ---------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from cbir.train import train_from_folder

    dataset = Path(args.dataset)
    if not dataset.is_dir():
        raise InvalidRequest(f"{dataset}: no such folder (expected one sub-folder of images per class)")
    extractor = args.extractor
    if args.finetune:
        return _train_finetune(args, dataset)
    if args.models is None:  # the model goes to the collection: it must fit its extractor
        have = _collection_extractor(args)
        if have and extractor and extractor != have:
            raise InvalidRequest(f"the collection uses extractor {have!r}; a model on {extractor!r} "
                                 "features could not be used with it (give --models DIR to keep it "
                                 "elsewhere)")
        extractor = extractor or have
    cfg = _train_config(args, finetune=False)
    with _EpochBar(not show_progress(args), "training") as bar:
        res = train_from_folder(dataset, name=args.name, registry=_registry(args), extractor=extractor,
                                config=cfg, trained_by=args.trained_by, overwrite=args.overwrite,
                                progress=show_progress(args), on_epoch=bar, warn=_warn)
    return _report(args, res)


def _train_config(args: argparse.Namespace, *, finetune: bool) -> Any:
    from cbir.train import TrainConfig
    from cbir.train.finetune import FINETUNE_EPOCHS, FINETUNE_PATIENCE

    epochs = args.epochs or (FINETUNE_EPOCHS if finetune else 100)
    patience = args.patience or (FINETUNE_PATIENCE if finetune else 8)
    cfg = TrainConfig(head=args.head, hidden=args.hidden, dropout=args.dropout, epochs=epochs,
                      patience=patience, val_split=args.val_split, batch_size=args.batch_size,
                      lr=args.lr, balance=args.balance, monitor=args.monitor, seed=args.seed,
                      threads=args.threads)
    cfg.validate()
    return cfg


class _EpochBar:
    """``on_epoch`` for the trainers: a tqdm bar of epochs with loss/accuracy (on a terminal or
    with --progress, never with --quiet); with ``per_epoch`` one line per epoch instead (fine-tuning
    epochs take minutes; none with --quiet)."""

    def __init__(self, quiet: bool, desc: str, per_epoch: bool = False):
        self.quiet, self.desc, self.per_epoch = quiet, desc, per_epoch
        self.bar: Any = None

    def __enter__(self) -> _EpochBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            if exc[0] is None and self.bar.n < self.bar.total:  # early stopping: end at the epochs run
                self.bar.total = self.bar.n
                self.bar.refresh()
            self.bar.close()

    def __call__(self, s: Any) -> None:
        if self.quiet:
            return
        post = {"loss": f"{s.train_loss:.3f}", "acc": f"{s.train_acc:.3f}"}
        if s.val_loss is not None:
            post |= {"val_loss": f"{s.val_loss:.3f}", "val_acc": f"{s.val_acc:.3f}"}
        if self.per_epoch:
            text = ", ".join(f"{k} {v}" for k, v in post.items())
            print(f"epoch {s.epoch}/{s.max_epochs}: {text}, {s.epoch_seconds:.1f} s"
                  f"{' (best so far)' if s.best else ''}", file=sys.stderr)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=s.max_epochs, unit="epoch", desc=self.desc, file=sys.stderr,
                            dynamic_ncols=True)
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)


def _train_finetune(args: argparse.Namespace, dataset: Path) -> int:
    from cbir.extract.base import canonical_extractor_name
    from cbir.extract.finetuned import BASE, extractor_name
    from cbir.train.finetune import FinetuneConfig, finetune_from_folder

    if args.extractor is not None and canonical_extractor_name(args.extractor) != BASE:
        raise InvalidRequest(f"--finetune trains the last block of {BASE} (fp32); it cannot start "
                             f"from --extractor {args.extractor!r} (leave --extractor out)")
    own = extractor_name(args.name)
    if args.models is None:  # the model goes to the collection: it must be able to label it
        have = _collection_extractor(args)
        if have and have != own:
            raise InvalidRequest(
                f"a fine-tuned model computes its own features, so it cannot label this collection "
                f"(extractor {have!r}); train it for a new collection (`cbir -c NEWDIR train ... "
                f"--finetune`, then `cbir -c NEWDIR index FOLDER --extractor {own}`) or give "
                "--models DIR")
        if have == own:
            _warn(f"the collection was indexed with the previous backbone of {args.name!r}; the "
                  "retrained model cannot label it: index the images into a new collection")
    cfg = _train_config(args, finetune=True)
    ft = FinetuneConfig(blocks=args.finetune_blocks, lr=args.finetune_lr, flip=not args.no_flip)
    ft.validate()
    with _EpochBar(args.quiet, "fine-tuning", per_epoch=True) as bar:
        res = finetune_from_folder(dataset, name=args.name, registry=_registry(args), config=cfg,
                                   finetune=ft, trained_by=args.trained_by, overwrite=args.overwrite,
                                   progress=show_progress(args), on_epoch=bar, warn=_warn)
    code = _report(args, res)
    if not args.json:
        from cbir.collection import default_collection_dir

        col = "NEWDIR" if args.models is not None else str(args.collection or default_collection_dir())
        models = "" if args.models is None else f" --models {args.models}"
        print(f"next: index images with its features, `cbir -c {col} index FOLDER --extractor {own}`, "
              f"then e.g. `cbir -c {col} models label {args.name}{models}`", file=sys.stderr)
    return code


def _report(args: argparse.Namespace, res: Any) -> int:
    m = res.model.meta
    summary = {k: m.get(k) for k in ("name", "classes", "head", "extractor", "finetuned", "epochs",
                                      "best_epoch", "stopped_early", "val_accuracy", "val_loss",
                                      "train_accuracy", "training_seconds", "trained_by", "trained_at",
                                      "warnings")}
    if m.get("finetuned"):
        summary["backbone"] = m.get("backbone")
        summary["warmup"] = m.get("warmup")
        summary["total_seconds"] = m.get("total_seconds")
    summary["path"] = str(_registry(args).meta_path(args.name))
    if args.json:
        print_json(summary)
    else:
        acc = "n/a" if m["val_accuracy"] is None else f"{m['val_accuracy']:.1%}"
        what = f"{m['head']['type']} head"
        seconds = m["training_seconds"]
        if m.get("finetuned"):
            what += f" + the last {m['backbone']['blocks']} backbone block(s)"
            seconds = m.get("total_seconds") or seconds
        print(f"trained {m['name']}: {what}, {len(m['classes'])} classes, "
              f"{m['epochs']} epochs (kept {m['best_epoch']}"
              f"{', stopped early' if m['stopped_early'] else ''}), validation accuracy {acc}, "
              f"{seconds:.1f} s -> {summary['path']}")
    return EXIT_OK


# -- cbir models ----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    rows = reg.list()
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"no models in {reg.directory}; train one with `cbir train FOLDER --name NAME`",
              file=sys.stderr)
    else:
        print(f"{'name':<24} {'head':<6} {'ft':<3} {'classes':>7} {'epochs':>6} {'val_acc':>7}  "
              f"{'trained_by':<12} trained_at")
        for r in rows:
            if "error" in r:
                print(f"{r['name']:<24} error: {r['error']}")
                continue
            acc = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.3f}"
            ft = "yes" if r.get("finetuned") else "no"
            print(f"{r['name']:<24} {r['head']:<6} {ft:<3} {r['classes']:>7} {r['epochs']:>6} {acc:>7}  "
                  f"{r['trained_by']:<12} {r['trained_at']}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    meta = _registry(args).meta(args.name)
    if args.json:
        print_json(meta)
        return EXIT_OK
    for key, value in meta.items():
        if key == "curve":
            value = f"{len(value)} epochs (see `cbir models curves {args.name}`)"
        elif isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        print(f"{key:>16}: {value}")
    return EXIT_OK


def _open_collection(args: argparse.Namespace) -> Any:
    return open_collection(args.collection)


def _maybe_collection(args: argparse.Namespace) -> Any:
    from cbir.collection import default_collection_dir
    from cbir.store.manifest import MANIFEST_NAME

    directory = Path(args.collection or default_collection_dir())
    return open_collection(directory) if (directory / MANIFEST_NAME).exists() else None


def cmd_delete(args: argparse.Namespace) -> int:
    from cbir.train.apply import delete_model

    reg = _registry(args)
    finetuned = reg.exists(args.name) and bool(reg.meta(args.name).get("finetuned"))
    col = _maybe_collection(args)
    try:
        if col is None:
            res = delete_model(reg, args.name)
        else:
            with col.writer_lock():
                res = delete_model(reg, args.name, col)
    finally:
        if col is not None:
            col.close()
    if args.json:
        print_json(res)
    else:
        note = "; the collection's index goes back to ImageNet classes" \
            if res["collection_stopped_using_it"] else ""
        print(f"deleted model {args.name}{note}")
    if finetuned:
        print(f"cbir: note: collections indexed with --extractor finetuned:{args.name} keep their "
              "features but can no longer embed new images or query files", file=sys.stderr)
    return EXIT_OK


def cmd_curves(args: argparse.Namespace) -> int:
    from cbir.train.curves import curves, plot_curves

    meta = _registry(args).meta(args.name)
    if args.out is None and not args.json:
        raise InvalidRequest("give --out FILE.png for the plot, or --json for the numbers")
    if args.out is not None:
        plot_curves(meta, Path(args.out))
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print_json(curves(meta))
    return EXIT_OK


def cmd_label(args: argparse.Namespace) -> int:
    from cbir.train.apply import label_collection

    model = _registry(args).load(args.name)
    with _open_collection(args) as col:
        rows = label_collection(col, model, top=args.top)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("the collection has no images", file=sys.stderr)
    for r in rows:
        print(f"{r['label']:<20} {r['prob']:>7.2%}  {r['path']}")
    return EXIT_OK


def cmd_use(args: argparse.Namespace) -> int:
    from cbir.train.apply import stop_using, use_model

    if bool(args.name) == bool(args.none):
        raise InvalidRequest("give a model NAME, or --none to go back to ImageNet classes")
    with _open_collection(args) as col, col.writer_lock():
        if args.none:
            was = stop_using(col)
            if args.json:
                print_json({"model": None, "was_using_a_model": was})
            else:
                print("the class-partitioned index uses ImageNet classes"
                      + ("" if was else " (it already did)"))
        else:
            use_model(col, _registry(args), args.name)
            if args.json:
                print_json({"model": args.name})
            else:
                print(f"recorded {args.name} as the model whose classes partition the collection")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from cbir.search import query_from_images, query_from_members
    from cbir.train.apply import search_with_model

    if bool(args.images) == bool(args.like):
        raise InvalidRequest("give query image(s), or --like PATH for an image in the collection")
    output = output_mode(args)
    model = _registry(args).load(args.name)
    with _open_collection(args) as col:
        query = query_from_members(col, args.like) if args.like else \
            query_from_images(col, [Path(p) for p in args.images])
        hits = search_with_model(col, model, query, k=args.k, beta=args.beta, depth=args.depth,
                                 partitioned=args.partitioned, n_partitions=args.nprobe)
    if output == "json":
        print_json({"hits": [h.as_dict() for h in hits]})
        return EXIT_OK
    if output == "filenames":
        return print_paths([h.hit.path for h in hits])
    if not hits:
        print("no results", file=sys.stderr)
    else:
        print(f"{'rank':>4}  {'score':>7}  {'cosine':>7}  {'class':<16} {'p':>6}  path")
    for h in hits:
        print(f"{h.hit.rank:>4}  {h.score:>7.4f}  {h.hit.cosine:>7.4f}  {h.label:<16} "
              f"{h.prob:>6.1%}  {h.hit.path}")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------
def register(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``train`` and ``models`` to the ``cbir`` sub-command parser ``sub``."""
    from cbir.extract import EXTRACTORS
    from cbir.train.model import HEADS
    from cbir.train.trainer import BALANCE, MONITOR

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="model registry folder (default: <collection>/models)")

    s = sub.add_parser("train", parents=[common],
                       help="train a classifier from a folder with one sub-folder of images per class")
    s.add_argument("dataset", help="folder with one sub-folder per class (at least 2 classes, "
                   "5+ images each; 100+ recommended)")
    s.add_argument("--name", required=True, help="model name (letters, digits, '.', '_', '-')")
    s.add_argument("--head", choices=HEADS, default="mlp",
                   help="linear, or mlp (one hidden layer; default)")
    s.add_argument("--hidden", type=positive_int, default=512, help="mlp hidden units (default 512)")
    s.add_argument("--dropout", type=_float_in(0.0, 0.95), default=0.3,
                   help="mlp dropout rate, 0 to 0.95 (default 0.3)")
    s.add_argument("--epochs", type=positive_int, default=None,
                   help="maximum epochs; early stopping usually ends sooner (default 100, "
                   "with --finetune 15)")
    s.add_argument("--patience", type=positive_int, default=None,
                   help="stop after this many epochs without a better validation score "
                   "(default 8, with --finetune 4)")
    s.add_argument("--monitor", choices=MONITOR, default="val_loss",
                   help="validation score for early stopping and the kept checkpoint")
    s.add_argument("--val-split", type=_float_in(0.0, 0.5), default=0.2,
                   help="held-out share per class for validation (stratified, seeded; default 0.2)")
    s.add_argument("--balance", choices=BALANCE, default="weights",
                   help="class balancing: weighted loss (default), balanced sampler, or none")
    s.add_argument("--batch-size", type=positive_int, default=64, help="examples per step (default 64)")
    s.add_argument("--lr", type=_float_in(1e-7, 10.0), default=1e-3,
                   help="learning rate (AdamW; with --finetune, of the head's warm-up)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and order "
                   "(default 0)")
    s.add_argument("--extractor", choices=EXTRACTORS.names(), default=None,
                   help="feature extractor (default: the collection's); finetuned:NAME trains a "
                   "head on a fine-tuned model's features")
    s.add_argument("--trained-by", default=None, help="who trained it (default: your user name)")
    s.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    s.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads while training (default 1: leaves the other cores free)")
    s.add_argument("--finetune", action="store_true",
                   help="also fine-tune the last backbone block(s) with torch (slow on a CPU); the "
                   "model gets its own extractor, finetuned:NAME, to index a new collection with")
    s.add_argument("--finetune-blocks", type=positive_int, default=1, metavar="N",
                   help="with --finetune: the last N MBConv blocks are trained, with the conv head "
                   "(1 to 5; default 1)")
    s.add_argument("--finetune-lr", type=_float_in(1e-7, 1.0), default=1e-4,
                   help="with --finetune: learning rate of the backbone block(s) and the head while "
                   "fine-tuning (default 1e-4)")
    s.add_argument("--no-flip", action="store_true",
                   help="with --finetune: no mirrored copies (halves the backbone pass; less data)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("models", help="trained models: list, show, delete, curves, label, use, search")
    msub = s.add_subparsers(dest="models_command", required=True, parser_class=parser_class,
                            metavar="COMMAND", help="what to do with the trained models")
    model_name = "the model's name (see `cbir models list`)"
    m = msub.add_parser("list", parents=[common], help="the trained models")
    m.set_defaults(func=cmd_list)
    m = msub.add_parser("show", parents=[common], help="a model's record (who, when, classes, accuracy)")
    m.add_argument("name", help=model_name)
    m.set_defaults(func=cmd_show)
    m = msub.add_parser("delete", parents=[common],
                        help="delete a model (the collection stops partitioning by it)")
    m.add_argument("name", help=model_name)
    m.set_defaults(func=cmd_delete)
    m = msub.add_parser("curves", parents=[common], help="training curves as PNG and/or JSON "
                        "(--json: the per-epoch numbers on stdout)")
    m.add_argument("name", help=model_name)
    m.add_argument("--out", default=None, metavar="FILE.png", help="write the plot here")
    m.set_defaults(func=cmd_curves)
    m = msub.add_parser("label", parents=[common], help="label the collection's images with a model")
    m.add_argument("name", help=model_name)
    m.add_argument("--top", type=positive_int, default=3, help="classes listed per image in --json")
    m.set_defaults(func=cmd_label)
    m = msub.add_parser("use", parents=[common],
                        help="partition the collection's class-partitioned index by a model's classes")
    m.add_argument("name", nargs="?", default=None, help=model_name + "; or give --none")
    m.add_argument("--none", action="store_true", help="go back to ImageNet top-1 classes")
    m.set_defaults(func=cmd_use)
    m = msub.add_parser("search", parents=[common],
                        help="search, re-ranked by a model: cosine + beta * p(query class | hit)")
    m.add_argument("name", help=model_name)
    m.add_argument("images", nargs="*", help="query image file(s)")
    m.add_argument("--like", nargs="+", metavar="PATH", help="query by image(s) in the collection")
    m.add_argument("-k", type=positive_int, default=10, help="number of results (default 10)")
    m.add_argument("--beta", type=_float_in(0.0, 100.0), default=0.5,
                   help="weight of the class agreement (0 = plain cosine order; default 0.5)")
    m.add_argument("--depth", type=positive_int, default=100, help="candidates re-ranked")
    m.add_argument("--partitioned", action="store_true",
                   help="candidates from tables of the model's predicted classes only")
    m.add_argument("--nprobe", type=positive_int, default=1,
                   help="with --partitioned: classes scanned (default 1)")
    add_filenames_option(m)
    m.set_defaults(func=cmd_search)
