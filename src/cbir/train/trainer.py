"""Train a classification head on stored backbone features (the paper's model-training module).

Training never decodes an image twice: the folder-per-class dataset is indexed into a cached
collection (:func:`cbir.eval.folder.load_labelled_features`) and the head learns from the
stored vectors. A seeded, stratified split holds out a validation set; the checkpoint with
the best validation loss (or accuracy) is kept and training stops after ``patience`` epochs
without improvement. Class imbalance is offset by a weighted loss (``n / (C * n_c)`` per
class) or a class-balanced sampler. ``on_epoch`` receives an :class:`EpochStats` after each
epoch (the CLI draws a progress bar from it; a service can stream it); setting ``stop``
ends training after the current epoch, keeping the best checkpoint so far.

Fine-tuning the last backbone block(s) as well (``train_from_folder(..., finetune=True)``)
lives in :mod:`cbir.train.finetune` and shares this module's epoch loop (:func:`fit_loop`).
"""

from __future__ import annotations

import getpass
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir import __version__
from cbir.errors import BackendUnavailable, InvalidRequest
from cbir.train.model import FORMAT_VERSION, HEADS, ClassifierModel

if TYPE_CHECKING:
    from cbir.train.finetune import FinetuneConfig
    from cbir.train.registry import ModelRegistry

#: below this many images a class is refused; below RECOMMENDED_PER_CLASS it is warned about
MIN_PER_CLASS = 5
#: the paper asks for at least 100 images per class
RECOMMENDED_PER_CLASS = 100
BALANCE = ("weights", "sampler", "none")
MONITOR = ("val_loss", "val_acc")


class SmallClassWarning(UserWarning):
    """A class has fewer images than the paper's recommended 100."""


@dataclass
class TrainConfig:
    """Hyper-parameters. ``epochs`` is the maximum; early stopping usually ends sooner."""

    head: str = "mlp"
    hidden: int = 512
    dropout: float = 0.3
    epochs: int = 100
    patience: int = 8
    val_split: float = 0.2
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    balance: str = "weights"
    monitor: str = "val_loss"
    seed: int = 0
    min_per_class: int = MIN_PER_CLASS
    #: torch threads while training (the head is small; one thread leaves the other core free)
    threads: int = 1

    def validate(self) -> None:
        """Raise InvalidRequest naming the first bad value and what is allowed."""
        checks = [
            (self.head in HEADS, f"head must be one of {', '.join(HEADS)}; got {self.head!r}"),
            (self.hidden >= 1, f"hidden must be >= 1; got {self.hidden}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1); got {self.dropout}"),
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.patience >= 1, f"patience must be >= 1; got {self.patience}"),
            (0.0 <= self.val_split <= 0.5, f"val-split must be between 0 and 0.5; got {self.val_split}"),
            (self.batch_size >= 1, f"batch size must be >= 1; got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0; got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0; got {self.weight_decay}"),
            (self.balance in BALANCE, f"balance must be one of {', '.join(BALANCE)}; got {self.balance!r}"),
            (self.monitor in MONITOR, f"monitor must be one of {', '.join(MONITOR)}; got {self.monitor!r}"),
            (self.min_per_class >= 2, f"min_per_class must be >= 2; got {self.min_per_class}"),
            (self.threads >= 1, f"threads must be >= 1; got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequest(message)


@dataclass
class EpochStats:
    """One epoch's progress. ``seconds`` is the time since training began (the time curve).

    ``val_loss``/``val_acc`` are None without a validation split; ``best`` marks the
    checkpoint kept so far.
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    seconds: float
    epoch_seconds: float
    max_epochs: int
    best: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: ClassifierModel
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    warnings: list[str] = field(default_factory=list)


EpochFn = Callable[[EpochStats], None]
WarnFn = Callable[[str], None]


def _default_warn(message: str) -> None:
    warnings.warn(message, SmallClassWarning, stacklevel=3)


def check_class_counts(counts: Sequence[int], classes: Sequence[str], *,
                       min_per_class: int = MIN_PER_CLASS,
                       recommended: int = RECOMMENDED_PER_CLASS) -> list[str]:
    """Refuse < 2 classes or a class below ``min_per_class``; return warnings below ``recommended``."""
    if len(classes) < 2:
        raise InvalidRequest(f"training needs at least 2 classes (one folder each); got {len(classes)}")
    small = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < min_per_class]
    if small:
        listed = ", ".join(f"{c} ({n})" for c, n in small[:10]) + (" ..." if len(small) > 10 else "")
        raise InvalidRequest(
            f"every class needs at least {min_per_class} usable images to train and validate; "
            f"too few in: {listed}. Add images or remove those class folders")
    few = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < recommended]
    if not few:
        return []
    listed = ", ".join(f"{c} ({n})" for c, n in few[:10]) + (" ..." if len(few) > 10 else "")
    return [f"{len(few)} of {len(classes)} classes have fewer than {recommended} images "
            f"(the recommended minimum); the model may be unreliable: {listed}"]


def stratified_split(labels: np.ndarray, val_split: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): ``round(val_split * n_c)`` of each class (>= 1 if val_split > 0,
    always leaving >= 1 for training), chosen by a seeded permutation; both sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        n_val = 0 if val_split <= 0 else min(len(rows) - 1, max(1, round(val_split * len(rows))))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced loss weights ``n / (C * n_c)`` (float32 (C,)); 0 for a class with no sample."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable("training needs torch: pip install torch==2.13.0 'cbir[train]' "
                                 "(the CPU build; no GPU needed)") from e
    return torch


def build_head(torch: Any, cfg: TrainConfig, dim: int, n_classes: int) -> Any:
    nn = torch.nn
    if cfg.head == "linear":
        return nn.ModuleDict({"drop": nn.Dropout(cfg.dropout), "fc": nn.Linear(dim, n_classes)})
    return nn.ModuleDict({"fc1": nn.Linear(dim, cfg.hidden), "drop": nn.Dropout(cfg.dropout),
                          "fc2": nn.Linear(cfg.hidden, n_classes)})


def forward_head(torch: Any, head: Any, kind: str, z: Any) -> Any:
    if kind == "linear":
        return head["fc"](head["drop"](z))
    return head["fc2"](head["drop"](torch.relu(head["fc1"](z))))


def _user(trained_by: str | None) -> str:
    if trained_by:
        return trained_by
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 — no login name (containers): record it as unknown
        return "unknown"


def train_classifier(features: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     config: TrainConfig | None = None, *, name: str = "",
                     extractor: str = "features", trained_by: str | None = None,
                     on_epoch: EpochFn | None = None, stop: threading.Event | None = None,
                     warn: WarnFn | None = None, extra_meta: dict[str, Any] | None = None
                     ) -> TrainResult:
    """Train a head on (n, d) float features with (n,) int labels into ``classes``.

    Returns the best checkpoint as a :class:`ClassifierModel` whose ``meta`` is the full
    record the registry stores (who, when, classes, epochs, validation accuracy, curve...).
    """
    cfg = config or TrainConfig()
    cfg.validate()
    x = np.ascontiguousarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or y.ndim != 1:
        raise InvalidRequest(f"features must be (n, d) and labels (n,); got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise InvalidRequest("features contain NaN or infinite values")
    n_classes = len(classes)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise InvalidRequest(f"labels must be class indices in 0..{n_classes - 1}")
    counts = np.bincount(y, minlength=n_classes)
    notes = check_class_counts(counts, classes, min_per_class=cfg.min_per_class)
    for note in notes:
        (warn or _default_warn)(note)

    tr, va = stratified_split(y, cfg.val_split, cfg.seed)
    mean = x[tr].mean(axis=0)
    std = x[tr].std(axis=0)
    std = np.maximum(std, 0.1 * float(std.mean()) + 1e-8).astype(np.float32)
    z = (x - mean) / std

    torch = _import_torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            head, history, best_epoch, stopped = fit_head(torch, cfg, z, y, tr, va, n_classes,
                                                          on_epoch, stop)
    finally:
        torch.set_num_threads(threads)

    weights = {"norm.mean": mean.astype(np.float32), "norm.std": std, **head_weights(head)}
    meta = build_meta(cfg, name=name, trained_by=trained_by, classes=classes, y=y, tr=tr, va=va,
                      extractor=extractor, dim=int(x.shape[1]), history=history,
                      best_epoch=best_epoch, stopped=stopped, notes=notes, extra=extra_meta)
    return TrainResult(ClassifierModel(weights, meta), history, best_epoch, stopped, notes)


def head_weights(head: Any) -> dict[str, np.ndarray]:
    """The head's tensors as float32 arrays, named as ClassifierModel expects."""
    return {key: t.detach().cpu().numpy().astype(np.float32) for key, t in head.state_dict().items()}


def build_meta(cfg: TrainConfig, *, name: str, trained_by: str | None, classes: Sequence[str],
               y: np.ndarray, tr: np.ndarray, va: np.ndarray, extractor: str, dim: int,
               history: list[EpochStats], best_epoch: int, stopped: bool, notes: list[str],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's JSON record (the registry adds the weights' file name and sha256)."""
    n_classes = len(classes)
    best = history[best_epoch - 1]
    return {
        "format": "cbir-classifier",
        "format_version": FORMAT_VERSION,
        "name": name,
        "trained_by": _user(trained_by),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": list(classes),
        "class_counts": {"train": np.bincount(y[tr], minlength=n_classes).tolist(),
                         "val": np.bincount(y[va], minlength=n_classes).tolist()},
        "head": {"type": cfg.head, "hidden": cfg.hidden if cfg.head == "mlp" else None,
                 "dropout": cfg.dropout},
        "extractor": {"name": extractor, "dim": dim},
        "epochs": len(history),
        "best_epoch": best_epoch,
        "stopped_early": stopped,
        "val_accuracy": best.val_acc,
        "val_loss": best.val_loss,
        "train_accuracy": best.train_acc,
        "training_seconds": round(history[-1].seconds, 3),
        "curve": [{k: v for k, v in asdict(s).items() if k not in ("max_epochs", "best")}
                  for s in history],
        "hyperparameters": asdict(cfg),
        "finetuned": False,
        "warnings": notes,
        "cbir_version": __version__,
        **(extra or {}),
    }


def fit_head(torch: Any, cfg: TrainConfig, z: np.ndarray, y: np.ndarray, tr: np.ndarray,
             va: np.ndarray, n_classes: int, on_epoch: EpochFn | None,
             stop: threading.Event | None) -> tuple[Any, list[EpochStats], int, bool]:
    """Train a head on features ``z``; returns (best head, history, best epoch (1-based), stopped early)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    head = build_head(torch, cfg, z.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    zt = torch.from_numpy(z)

    def logits(rows: Any, training: bool) -> Any:
        return forward_head(torch, head, cfg.head, zt[rows])

    history, best_epoch, stopped = fit_loop(torch, cfg, head, opt, logits, y, tr, va, n_classes,
                                            on_epoch, stop, gen)
    return head, history, best_epoch, stopped


LogitsFn = Callable[[Any, bool], Any]


def fit_loop(torch: Any, cfg: TrainConfig, module: Any, opt: Any, logits: LogitsFn, y: np.ndarray,
             tr: np.ndarray, va: np.ndarray, n_classes: int, on_epoch: EpochFn | None,
             stop: threading.Event | None, gen: Any, *, set_mode: Callable[[bool], None] | None = None,
             eval_batch: int | None = None, label_smoothing: float = 0.0
             ) -> tuple[list[EpochStats], int, bool]:
    """The epoch loop shared by head training and fine-tuning.

    ``logits(rows, training)`` maps a tensor of dataset rows to (len(rows), C) logits;
    ``set_mode(training)`` (default ``module.train(training)``) switches the module. Class
    balancing, the seeded order, validation (in ``eval_batch`` chunks if given), the best
    checkpoint (``module``'s state, restored at the end) and early stopping are handled here.
    ``label_smoothing`` applies to the training loss only (validation is scored as usual).
    Returns (history, best epoch (1-based), stopped early).
    """
    import copy

    set_mode = set_mode or module.train
    cw = torch.from_numpy(class_weights(y[tr], n_classes))
    weight = cw if cfg.balance == "weights" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    train_loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing) \
        if label_smoothing else loss_fn
    rt = torch.from_numpy(np.asarray(tr, dtype=np.int64))
    rv = torch.from_numpy(np.asarray(va, dtype=np.int64))
    yt, yv = torch.from_numpy(y[tr]), torch.from_numpy(y[va])
    sample_w = cw[yt]  # class-balanced sampling: each class drawn equally often
    history: list[EpochStats] = []
    best_key: tuple[float, float] | None = None
    best_state, best_epoch, since_best = None, 0, 0
    t0 = time.perf_counter()

    def done(stopped: bool) -> tuple[list[EpochStats], int, bool]:
        if best_state is not None:
            module.load_state_dict(best_state)
        set_mode(False)
        return history, best_epoch, stopped

    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        set_mode(True)
        order = (torch.multinomial(sample_w, len(tr), replacement=True, generator=gen)
                 if cfg.balance == "sampler" else torch.randperm(len(tr), generator=gen))
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(tr), cfg.batch_size):
            pos = order[start:start + cfg.batch_size]
            out = logits(rt[pos], True)
            loss = train_loss_fn(out, yt[pos])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(pos)
            correct += int((out.argmax(1) == yt[pos]).sum())
            seen += len(pos)
        val_loss = val_acc = None
        if len(va):
            set_mode(False)
            with torch.no_grad():
                if eval_batch is None:
                    out = logits(rv, False)
                else:
                    out = torch.cat([logits(rv[i:i + eval_batch], False)
                                     for i in range(0, len(va), eval_batch)])
                val_loss = float(loss_fn(out, yv))
                val_acc = float((out.argmax(1) == yv).float().mean())
        # lower is better for both parts of the key
        if val_loss is None:
            key = (float(epoch) * -1.0, 0.0)  # no validation: the last epoch is the best
        elif cfg.monitor == "val_acc":
            key = (-val_acc, val_loss)
        else:
            key = (val_loss, -val_acc)
        improved = best_key is None or key < best_key
        if improved:
            best_key, best_epoch, since_best = key, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            since_best += 1
        now = time.perf_counter()
        stats = EpochStats(epoch=epoch, train_loss=round(total / max(seen, 1), 6),
                           train_acc=round(correct / max(seen, 1), 6), val_loss=_r(val_loss),
                           val_acc=_r(val_acc), seconds=round(now - t0, 4),
                           epoch_seconds=round(now - te, 4),
                           max_epochs=cfg.epochs, best=improved)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if len(va) and since_best >= cfg.patience:
            return done(True)
        if stop is not None and stop.is_set():
            return done(epoch < cfg.epochs)
    return done(False)


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


def train_from_folder(dataset: Path, *, name: str, registry: ModelRegistry,
                      extractor: str | None = None, config: TrainConfig | None = None,
                      trained_by: str | None = None, cache_dir: Path | None = None,
                      overwrite: bool = False, progress: bool = True,
                      on_epoch: EpochFn | None = None, stop: threading.Event | None = None,
                      warn: WarnFn | None = None, finetune: bool | FinetuneConfig = False
                      ) -> TrainResult:
    """Index ``dataset`` (one sub-folder per class; cached) and train, then save as ``name``.

    The name and the class counts are checked before any image is decoded, so a bad
    request fails at once. ``cache_dir``: the dataset's collection (default: the eval cache).
    ``finetune`` (True or a :class:`cbir.train.finetune.FinetuneConfig`): also fine-tune the
    last backbone block(s) with torch; the model then brings its own extractor,
    ``finetuned:NAME`` (see :mod:`cbir.train.finetune`).
    """
    from cbir import extras
    from cbir.eval.folder import eval_collection_dir, load_labelled_features
    from cbir.extract import DEFAULT_EXTRACTOR
    from cbir.extract.base import is_finetuned_name
    from cbir.io.datasets import read_class_folders

    # before any image is decoded: fine-tuning needs the whole extra, a head torch alone
    extras.require("fine-tuning" if finetune else "training a classifier", "train",
                   None if finetune else ["torch"])
    cfg = config or TrainConfig()
    cfg.validate()
    if finetune:
        from cbir.extract.base import canonical_extractor_name
        from cbir.extract.finetuned import BASE
        from cbir.train.finetune import FinetuneConfig, finetune_from_folder

        if extractor is not None and canonical_extractor_name(extractor) != BASE:
            raise InvalidRequest(f"fine-tuning trains the last block of {BASE} (fp32); it cannot "
                                 f"start from extractor {extractor!r} (leave --extractor out)")
        ft = finetune if isinstance(finetune, FinetuneConfig) else FinetuneConfig()
        return finetune_from_folder(Path(dataset), name=name, registry=registry, config=cfg,
                                    finetune=ft, trained_by=trained_by, overwrite=overwrite,
                                    progress=progress, on_epoch=on_epoch, stop=stop, warn=warn)
    registry.check_new(name, overwrite=overwrite)
    extractor = extractor or DEFAULT_EXTRACTOR
    extra: dict[str, Any] = {}
    if is_finetuned_name(extractor):
        # a fine-tuned backbone retrained under the same name makes other features: record which
        # one (apply.check_model compares it with a collection's) and key the dataset's cached
        # collection by it (keeping ':' out of the folder name)
        from cbir.extract import create_extractor

        backbone = create_extractor(extractor).preprocessing["backbone"]
        extra["features_backbone"] = backbone
        if cache_dir is None:
            key = f"{extractor.replace(':', '-')}-{backbone['onnx_sha256'][:12]}"
            cache_dir = eval_collection_dir(Path(dataset), key)
    _, found, classes = read_class_folders(Path(dataset))
    check_class_counts(np.bincount(found, minlength=len(classes)), classes,
                       min_per_class=cfg.min_per_class)
    feats, labels, classes, failed = load_labelled_features(
        Path(dataset), extractor=extractor, collection_dir=cache_dir, progress=progress)
    extra["dataset"] = {"path": str(Path(dataset).resolve()), "images": int(len(labels)),
                        "failed": int(failed)}
    result = train_classifier(feats, labels, classes, cfg, name=name, extractor=extractor,
                              trained_by=trained_by, on_epoch=on_epoch, stop=stop, warn=warn,
                              extra_meta=extra)
    registry.save(result.model, overwrite=overwrite)
    return result
