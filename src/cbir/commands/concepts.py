"""``cbir concepts``, ``cbir scene`` and ``cbir tags``: search by combinations of concepts (SSIR).

```
cbir concepts train [--vocab keywords|folders] [--name scenes] [--vectors glove|word2vec|minilm|none]
cbir concepts list | show [NAME] | delete NAME
cbir scene "sky water boats" [-k 20] [--model NAME] [--json]
cbir tags photo.jpg [more.jpg ...] [--top 10] [--json]
cbir eval scenes corel5k [--settings visual,noisy-tags] [--k-rc 2,4,8,16] [--out F.json]
cbir eval scenes corel5k --protocol mixed [--tagged-fraction 0.3]
```
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cbir.commands.common import (
    add_filenames_option,
    add_filter_options,
    filter_notes,
    filters_from_args,
    log_for,
    open_collection,
    output_mode,
    positive_int,
    print_json,
    print_paths,
    show_progress,
)

EXIT_OK = 0


def _open(args: argparse.Namespace) -> Any:
    return open_collection(args.collection)


def cmd_concepts_train(args: argparse.Namespace) -> int:
    from cbir.scenes import MIN_TRAINING_IMAGES, train_concepts, weak_concepts

    with _open(args) as col:
        model = train_concepts(col, name=args.name, vocab=args.vocab, vectors=args.vectors,
                               overwrite=args.overwrite, log=log_for(args), min_count=args.min_count,
                               max_size=args.max_size, min_support=args.min_support, k_rc=args.k_rc,
                               seed=args.seed)
    summary = {"name": model.name, "concepts": len(model.concepts),
               "concept_sets": model.vocabulary.n_itemsets, "text_branch": model.text is not None,
               "weights": [round(float(w), 4) for w in model.weights], "k_rc": model.k_rc,
               "train_seconds": model.meta.get("train_seconds"),
               "logodds": None if model.logodds is None else model.logodds.to_dict(),
               "weak_concepts": weak_concepts(model)}
    if args.json:
        print_json(summary)
    else:
        fusion = "linear, a = ({})".format(", ".join(f"{x:.3f}" for x in summary["weights"]))
        if model.logodds is not None:
            fusion = "log-odds, visual w1 {:.2f} w2 {:.2f}".format(*model.logodds.visual[1:])
            if model.logodds.joint is not None:
                fusion += f", tagged u_v {model.logodds.joint[1]:.2f}"
        print(f"concept model {model.name!r}: {summary['concepts']} concepts, {summary['concept_sets']} "
              f"concept sets, text branch {'yes' if summary['text_branch'] else 'no (no usable tags)'}; "
              f"fusion {fusion}; {summary['train_seconds']} s")
        weak = summary["weak_concepts"]
        if weak:
            print(f"note: {len(weak)} concept(s) learnt from fewer than {MIN_TRAINING_IMAGES} images "
                  f"(e.g. {', '.join(weak[:5])}): searches read those words with the built-in "
                  "concepts when they know them (`cbir concepts show` flags them)")
    return EXIT_OK


def cmd_concepts_list(args: argparse.Namespace) -> int:
    from cbir.scenes import list_concept_models

    with _open(args) as col:
        rows = list_concept_models(col)
    if args.json:
        print_json(rows)
    elif not rows:
        print("no concept model; train one with `cbir concepts train`")
    else:
        for r in rows:
            if "error" in r:
                print(f"{r['name']}: unreadable: {r['error']}")
                continue
            print(f"{r['name']}: {r['concepts']} concepts ({r['vocab']}), {r['concept_sets']} concept sets, "
                  f"text {'yes' if r['text_branch'] else 'no'}, K_rc {r['k_rc']}, trained {r['trained_at']}")
    return EXIT_OK


def cmd_concepts_show(args: argparse.Namespace) -> int:
    from cbir.scenes import MIN_TRAINING_IMAGES, load_concept_model, weak_concepts

    with _open(args) as col:
        m = load_concept_model(col, args.name)
    info = {"name": m.name, "vocab": m.meta.get("vocab"), "k_rc": m.k_rc,
            "weights": dict(zip(m.meta.get("components", []), [float(w) for w in m.weights], strict=False)),
            "text_branch": m.text is not None, "tag_vectors": m.tag_vectors,
            "concepts": {c: int(n) for c, n in zip(m.concepts, m.vocabulary.concept_counts, strict=True)},
            "concept_sets": m.vocabulary.n_itemsets, "trained_at": m.meta.get("trained_at"),
            "fusion": m.meta.get("fusion", {}).get("queries"), "few_images": weak_concepts(m)}
    if args.json:
        print_json(info)
    else:
        print(f"{m.name}: {len(m.concepts)} concepts from {info['vocab']}, "
              f"{info['concept_sets']} concept sets, K_rc {m.k_rc}, text branch "
              f"{'yes (' + str(m.tag_vectors) + ')' if m.text else 'no'}")
        print("fusion weights: " + ", ".join(f"{k} {v:.3f}" for k, v in info["weights"].items()))
        print("concepts (training images): " + ", ".join(f"{c} ({n})" for c, n in info["concepts"].items()))
        if info["few_images"]:
            print(f"warning: learnt from fewer than {MIN_TRAINING_IMAGES} images, so queries lean on the "
                  f"built-in concepts: {', '.join(info['few_images'])}")
    return EXIT_OK


def cmd_concepts_delete(args: argparse.Namespace) -> int:
    from cbir.errors import InvalidRequest
    from cbir.scenes import delete_concept_model

    with _open(args) as col:
        if not delete_concept_model(col, args.name):
            raise InvalidRequest(f"no concept model named {args.name!r}")
    if args.json:
        print_json({"deleted": args.name})
    else:
        print(f"deleted concept model {args.name!r}")
    return EXIT_OK


def cmd_scene(args: argparse.Namespace) -> int:
    from cbir.scenes import scene_search

    output = output_mode(args)
    flt = filters_from_args(args)
    with _open(args) as col:
        res = scene_search(col, " ".join(args.query), k=args.k, model_name=args.model, filters=flt)
        res.notes = [*filter_notes(col, flt), *res.notes]
    if output == "json":
        print_json(res.as_dict())
        return EXIT_OK
    if output == "filenames":
        return print_paths([h.path for h in res.hits])
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"scene: {' + '.join(res.query)}  (model {res.model})")
    for h in res.hits:
        ev = "  ".join(f"{c} {e['visual']:.2f}" + (f"/{e['text']:.2f}" if e["text"] is not None else "")
                       for c, e in h.evidence.items())
        print(f"{h.rank:>3}  {h.score:.4f}  {h.path}  [{ev}]")
    return EXIT_OK


def cmd_tags(args: argparse.Namespace) -> int:
    from cbir.scenes import predict_concepts

    with _open(args) as col:
        rows = predict_concepts(col, [Path(p) for p in args.images], model_name=args.model, top=args.top,
                                min_probability=args.min_probability)
    if args.json:
        print_json(rows)
        return EXIT_OK
    for r in rows:
        print(r["path"] + (f"  (tags read: {', '.join(r['tags_read'])})" if r["tags_read"] else ""))
        for c in r["concepts"]:
            print(f"  {c['probability']:.3f}  {c['concept']}")
    return EXIT_OK


def cmd_eval_scenes(args: argparse.Namespace) -> int:
    from cbir.errors import InvalidRequest
    from cbir.eval.hashing_benchmark import write_json
    from cbir.eval.scenes import run, run_collection

    settings = ["mixed"] if args.protocol == "mixed" else [s for s in args.settings.split(",") if s]
    if args.labels is not None:  # any collection (-c) with a labels file or its own tags as truth
        from cbir.paths import default_collection_dir

        if args.dataset is not None:
            raise InvalidRequest("give either a benchmark name or --labels (with -c COLLECTION), not both")
        args.dataset = str(args.collection or default_collection_dir())
        result = run_collection(Path(args.dataset), args.labels, settings=settings, k_rcs=args.k_rc,
                                per_size=args.queries, seed=args.seed, vectors=args.vectors,
                                log=log_for(args), tagged_fraction=args.tagged_fraction)
    else:
        if args.dataset is None:
            raise InvalidRequest("give a benchmark (corel5k) or --labels FILE|tags for the collection (-c)")
        result = run(args.dataset, args.root or Path(".data") / args.dataset,
                     settings=settings, k_rcs=args.k_rc,
                     per_size=args.queries, seed=args.seed, vectors=args.vectors, log=log_for(args),
                     progress=show_progress(args), tagged_fraction=args.tagged_fraction)
    if args.out:
        write_json(result, args.out)
    if args.json:
        print_json(result)
    else:
        for setting, table in result["tables"].items():
            s = result["settings"][setting.split(" (")[0]]
            print(f"\n== {args.dataset}, setting {setting}: MAP by query length "
                  f"({s['vocabulary']['concepts']} concepts, {s['vocabulary']['itemsets']} concept sets) ==")
            print(table)
    return EXIT_OK


def _ints(text: str) -> list[int]:
    return [positive_int(x) for x in text.split(",") if x]


def add_eval_parser(esub: Any) -> None:
    """``cbir eval scenes`` (called by cli.py, which owns the ``eval`` group)."""
    from cbir.eval.scenes import SETTINGS

    e = esub.add_parser("scenes", help="the SSIR paper's MAP table by query length (1-4 concepts)")
    e.add_argument("dataset", nargs="?", choices=["corel5k"], default=None,
                   help="the benchmark (Corel-5K); or leave out and give --labels for your collection")
    e.add_argument("--labels", default=None, metavar="CSV|tags",
                   help="evaluate the collection (-c) instead: a CSV of 'path,label1;label2' lines (paths "
                        "relative to the CSV), or 'tags' to take the images' own tags as the truth; a seeded "
                        "20%% of the labelled images are ranked, the others train the model")
    e.add_argument("--root", type=Path, default=None, help="the extracted dataset (default .data/DATASET)")
    e.add_argument("--settings", default=",".join(SETTINGS),
                   help="visual (the real data) and/or noisy-tags (simulated user tags); comma-separated")
    e.add_argument("--protocol", choices=["paper", "mixed"], default="paper",
                   help="paper: the --settings tables; mixed: a library where only --tagged-fraction of "
                        "the images keep their keywords as tags (MAP overall and of the untagged images)")
    e.add_argument("--tagged-fraction", type=float, default=0.3,
                   help="--protocol mixed: share of images that keep their keywords as tags (default 0.3)")
    e.add_argument("--k-rc", type=_ints, default=[2, 4, 8, 16], help="K_rc values for the ablation")
    e.add_argument("--queries", type=positive_int, default=500, help="random queries per length 2-4")
    e.add_argument("--vectors", choices=["glove", "word2vec", "minilm"], default="glove",
                   help="tag vectors for the text branch (default glove)")
    e.add_argument("--seed", type=int, default=0, help="seed of the random queries (default 0)")
    e.add_argument("--out", type=Path, default=None, help="write all numbers as JSON here")
    e.set_defaults(func=cmd_eval_scenes)


def register(sub: Any, parser_class: Any) -> None:
    s = sub.add_parser("concepts", help="concept models for scene queries (train, list, show, delete)")
    csub = s.add_subparsers(dest="concepts_command", required=True, parser_class=parser_class,
                            metavar="COMMAND", help="what to do with concept models")
    c = csub.add_parser("train", help="learn concept classifiers, the co-occurrence context and the "
                        "fusion weights from the collection's tags (or folder names)")
    c.add_argument("--vocab", choices=["keywords", "folders"], default="keywords",
                   help="concepts: the images' cleaned tags (keywords) or their folder names")
    c.add_argument("--name", default="scenes", help="the model's name (default scenes)")
    c.add_argument("--vectors", choices=["glove", "word2vec", "minilm", "none"], default="glove",
                   help="tag vectors for the text branch and for synonyms in queries")
    c.add_argument("--min-count", type=positive_int, default=2, help="images a concept needs (default 2)")
    c.add_argument("--max-size", type=positive_int, default=4, help="largest concept set in V* (t)")
    c.add_argument("--min-support", type=positive_int, default=3, help="images a concept set needs (s)")
    c.add_argument("--k-rc", type=positive_int, default=8, help="size of the query context R_rc")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    c.set_defaults(func=cmd_concepts_train)
    c = csub.add_parser("list", help="the collection's concept models")
    c.set_defaults(func=cmd_concepts_list)
    c = csub.add_parser("show", help="a model's concepts, fusion weights and settings")
    c.add_argument("name", nargs="?", default=None,
                   help="the model's name (default: the only one / 'scenes')")
    c.set_defaults(func=cmd_concepts_show)
    c = csub.add_parser("delete", help="delete a concept model")
    c.add_argument("name", help="the model's name (see `cbir concepts list`)")
    c.set_defaults(func=cmd_concepts_delete)

    s = sub.add_parser("scene", help="images that show ALL the given concepts, best first")
    s.add_argument("query", nargs="+", help='concepts, e.g. "sky water boats" or "sky, water, boat"')
    s.add_argument("-k", type=positive_int, default=20, help="number of results (default 20)")
    s.add_argument("--model", default=None, help="concept model name (default: the only one / 'scenes')")
    add_filter_options(s)
    add_filenames_option(s)
    s.set_defaults(func=cmd_scene)

    s = sub.add_parser("tags", help="predicted concepts with probabilities for image files")
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--model", default=None, help="concept model name (default: the only one / 'scenes')")
    s.add_argument("--top", type=positive_int, default=10, help="concepts listed per image (default 10)")
    s.add_argument("--min-probability", type=float, default=0.0,
                   help="leave out concepts less probable than this (default 0)")
    s.set_defaults(func=cmd_tags)
