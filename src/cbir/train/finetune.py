"""Fine-tune the last backbone block(s) of EfficientNet-Lite0 together with a classification head.

``cbir train FOLDER --name NAME --finetune`` (or :func:`finetune_from_folder`):

1. Build the stock torch EfficientNet-Lite0 exactly as the extractor's export does
   (``cbir.extract.finetuned.load_torch_backbone``) and split it: the frozen trunk (stem and
   all but the last ``blocks`` MBConv blocks) and the trainable tail (those blocks, the 1x1
   conv head and its BN). BN running statistics stay frozen (BN in eval mode; its scale and
   shift are trained): batches of 32 are too small to re-estimate them.
2. Decode every image once (the extractor's preprocessing, through the indexing pipeline's
   decode threads), run the trunk once -- exported to ONNX in memory, checked against torch
   and run by onnxruntime, about 4x faster than torch on a CPU -- and cache its output (the
   tail's input, (192, 7, 7) for 1 to 4 blocks) as float16, in memory or, above
   ``cache_mb``, in an unlinked temp file. With ``flip`` the mirrored image's activations
   are cached too, and each epoch picks one of the two per image (the only augmentation
   cached activations allow).
3. Warm up: train the head alone on the stock features of the cached activations (the
   head-only trainer, same split and settings), so the backbone's first gradients come from
   a sensible head.
4. Fine-tune tail + head (AdamW, both at ``FinetuneConfig.lr``: measured on a CIFAR-10
   subset, the head at the warm-up's 1e-3 overfits within an epoch) with the head-only
   trainer's loop: the same seeded stratified validation split, class balancing, early
   stopping and per-epoch :class:`EpochStats`. If no epoch beats the warm-up's validation
   loss, a warning says so (a head-only model would do as well).
   The head sees ``(L2-normalise(pool(tail(x))) - mean) / std`` with mean/std fixed from the
   warm-up features, exactly what :class:`ClassifierModel` computes on stored features.
5. Export the fine-tuned network to ONNX (checked against torch) and save the model: the
   head and the tail's tensors (``backbone.*``) as safetensors, the record with
   ``finetuned: true``, and ``NAME.backbone.onnx`` -- the extractor ``finetuned:NAME``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir.errors import BackendUnavailable, InvalidRequest
from cbir.extract.base import Embedding
from cbir.extract.finetuned import (
    BASE,
    MAX_BLOCKS,
    check_blocks,
    export_finetuned,
    extractor_name,
    import_torch,
    load_torch_backbone,
    make_tail,
    split_at,
    tail_weights,
    trained_parts,
    trunk_forward,
    trunk_session,
)
from cbir.train.model import ClassifierModel
from cbir.train.trainer import (
    EpochFn,
    TrainConfig,
    TrainResult,
    WarnFn,
    _default_warn,
    build_head,
    build_meta,
    check_class_counts,
    fit_head,
    fit_loop,
    forward_head,
    head_weights,
    stratified_split,
)

if TYPE_CHECKING:
    from cbir.train.registry import ModelRegistry

#: defaults of ``cbir train --finetune`` (an epoch costs seconds to minutes, not milliseconds)
FINETUNE_EPOCHS = 15
FINETUNE_PATIENCE = 4


@dataclass
class FinetuneConfig:
    """Fine-tuning settings (the head's and the loop's are in :class:`TrainConfig`)."""

    #: trailing MBConv blocks trained with the conv head (1 = the last stage, 192->320 at 7x7)
    blocks: int = 1
    #: learning rate of the backbone part while fine-tuning (TrainConfig.lr is the warm-up's)
    lr: float = 1e-4
    #: learning rate of the head while fine-tuning (None: ``lr``)
    head_lr: float | None = None
    #: label smoothing of the fine-tuning loss (0 = none)
    label_smoothing: float = 0.0
    #: also cache the mirrored images' activations; each epoch uses one of the two per image
    flip: bool = True
    #: epochs of head-only warm-up on the stock features (early-stopped; 0 = none)
    warmup_epochs: int = 100
    #: activation caches larger than this many MiB go to a temporary file
    cache_mb: int = 1024
    #: images per trunk batch in the backbone pass
    trunk_batch: int = 16
    #: max |onnx - torch| at export
    atol: float = 1e-3

    def validate(self) -> None:
        check_blocks(self.blocks)
        checks = [
            (self.lr > 0, f"fine-tuning learning rate must be > 0; got {self.lr}"),
            (self.head_lr is None or self.head_lr > 0, f"head learning rate must be > 0; got {self.head_lr}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1); got {self.label_smoothing}"),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0; got {self.warmup_epochs}"),
            (self.cache_mb >= 1, f"cache_mb must be >= 1; got {self.cache_mb}"),
            (self.trunk_batch >= 1, f"trunk_batch must be >= 1; got {self.trunk_batch}"),
            (self.atol > 0, f"atol must be > 0; got {self.atol}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequest(message)


# -- the activation cache -----------------------------------------------------------------------
class ActivationCache:
    """float16 trunk outputs, (copies, n, C, H, W): copy 0 the image, copy 1 its mirror image."""

    def __init__(self, n: int, shape: tuple[int, ...], copies: int, limit_bytes: int):
        full = (copies, n, *shape)
        self.nbytes = int(np.prod(full)) * 2
        self._file = None
        if self.nbytes <= limit_bytes:
            self.storage = "memory"
            self.a = np.zeros(full, dtype=np.float16)
        else:
            self.storage = "temporary file"
            self._file = tempfile.TemporaryFile(prefix="cbir-finetune-")  # noqa: SIM115 - unlinked at once
            self.a = np.memmap(self._file, dtype=np.float16, mode="w+", shape=full)

    def close(self) -> None:
        self.a = None  # type: ignore[assignment]
        if self._file is not None:
            self._file.close()
            self._file = None

    def rows(self, rows: np.ndarray, copy: np.ndarray | None = None) -> np.ndarray:
        """float32 (len(rows), C, H, W): copy 0, or per row ``copy[i]``."""
        if copy is None:
            return self.a[0, rows].astype(np.float32)
        return self.a[copy, rows].astype(np.float32)


class _TrunkRunner:
    """Looks like a FeatureExtractor to ``embed_files``: the extractor's preprocessing, then
    the frozen trunk through onnxruntime (and on the mirror image); ``features`` carry the
    flattened float16 activations."""

    def __init__(self, net: Any, start: int, flip: bool, threads: int):
        from cbir.extract.efficientnet import EfficientNetLite0

        self._pre = EfficientNetLite0()  # for preprocess only: no onnxruntime session is made
        self.name, self.dim = "finetune-trunk", 0
        self.preprocessing = self._pre.preprocessing
        self.class_names: list[str] = []
        self.input_size = self._pre.input_size
        self.flip = flip
        self.session = trunk_session(net, start, threads=threads)
        self.seconds = 0.0

    def preprocess(self, image: Any) -> np.ndarray:
        return self._pre.preprocess(image)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, 224, 224) -> float16 (n, copies, C, H, W)."""
        t0 = time.perf_counter()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.flip:
            x = np.concatenate([x, x[:, :, :, ::-1]])
        a = self.session.run(None, {"input": np.ascontiguousarray(x)})[0].astype(np.float16)
        n = len(batch)
        self.seconds += time.perf_counter() - t0
        return np.stack([a[:n], a[n:]], axis=1) if self.flip else a[:, None]

    def embed(self, batch: np.ndarray, *, regions: bool = False) -> Embedding:
        return Embedding(features=self.run(batch).reshape(len(batch), -1))


# -- estimates ------------------------------------------------------------------------------------
def _fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _measure(torch: Any, runner: _TrunkRunner, tail: Any, batch: int) -> tuple[float, float]:
    """(seconds per image of the trunk, seconds per image of a tail training step), measured."""
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    flip, runner.flip = runner.flip, False
    runner.run(x[:1])
    t0 = time.perf_counter()
    a = torch.from_numpy(runner.run(x)[:, 0].astype(np.float32))
    t_trunk = (time.perf_counter() - t0) / len(x)
    runner.flip, runner.seconds = flip, 0.0
    b = max(2, min(batch, 16))
    a = a.repeat((b + 3) // 4, 1, 1, 1)[:b].clone()
    tail.train()
    _bn_eval(torch, tail)
    tail(a[:2]).mean().backward()  # warm-up
    t0 = time.perf_counter()
    tail(a).mean().backward()
    t_step = (time.perf_counter() - t0) / b
    for p in tail.parameters():
        p.grad = None
    tail.eval()
    return t_trunk, t_step


def _bn_eval(torch: Any, module: Any) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


# -- training ---------------------------------------------------------------------------------------
def finetune_from_folder(dataset: Path, *, name: str, registry: ModelRegistry,
                         config: TrainConfig | None = None, finetune: FinetuneConfig | None = None,
                         trained_by: str | None = None, overwrite: bool = False, progress: bool = True,
                         on_epoch: EpochFn | None = None, stop: threading.Event | None = None,
                         warn: WarnFn | None = None) -> TrainResult:
    """Fine-tune on ``dataset`` (one sub-folder per class) and save ``name`` with its backbone."""
    from cbir import extras
    from cbir.io.datasets import read_class_folders

    extras.require("fine-tuning", "train")  # torch, onnx and the stock network: fail now
    cfg = config or TrainConfig()
    ft = finetune or FinetuneConfig()
    cfg.validate()
    ft.validate()
    warn = warn or _default_warn
    registry.check_new(name, overwrite=overwrite)
    paths, found, classes = read_class_folders(Path(dataset))
    check_class_counts(np.bincount(found, minlength=len(classes)), classes,
                       min_per_class=cfg.min_per_class)
    torch = import_torch()
    try:
        import onnx  # noqa: F401 - fail now, not after an hour of training
    except ImportError as e:
        raise BackendUnavailable("fine-tuning exports the backbone with onnx: "
                                 "pip install torch==2.13.0 'cbir[train]'") from e

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _finetune(torch, cfg, ft, Path(dataset), paths, found, classes, name=name,
                             registry=registry, trained_by=trained_by, overwrite=overwrite,
                             progress=progress, on_epoch=on_epoch, stop=stop, warn=warn)
    finally:
        torch.set_num_threads(threads)


def _finetune(torch: Any, cfg: TrainConfig, ft: FinetuneConfig, dataset: Path, paths: list[Path],
              found: np.ndarray, classes: list[str], *, name: str, registry: ModelRegistry,
              trained_by: str | None, overwrite: bool, progress: bool, on_epoch: EpochFn | None,
              stop: threading.Event | None, warn: WarnFn) -> TrainResult:
    t_start = time.perf_counter()
    net = load_torch_backbone()
    for p in net.parameters():
        p.requires_grad_(False)
    start = split_at(net, ft.blocks)
    tail = make_tail(net, ft.blocks)
    for p in tail.parameters():
        p.requires_grad_(True)

    n = len(paths)
    copies = 2 if ft.flip else 1
    n_tr_est = n - round(cfg.val_split * n)
    runner = _TrunkRunner(net, start, ft.flip, cfg.threads)
    t_trunk, t_step = _measure(torch, runner, tail, cfg.batch_size)
    pass_s = n * copies * t_trunk * 1.15  # + decoding
    epoch_s = n_tr_est * t_step + (n - n_tr_est) * t_step / 3
    warn(f"fine-tuning trains EfficientNet-Lite0 in torch on {cfg.threads} CPU thread(s) and is slow: "
         f"about {_fmt_seconds(pass_s)} to run the frozen layers once over {n} images"
         f"{' and their mirror images' if ft.flip else ''}, then about {_fmt_seconds(epoch_s)} "
         f"per epoch (at most {cfg.epochs} epochs: {_fmt_seconds(pass_s + cfg.epochs * epoch_s)}; "
         "early stopping usually ends sooner)")

    # -- 1. the backbone pass: decode once, run the trunk once, cache its output
    with torch.no_grad():
        shape = tuple(trunk_forward(net, torch.zeros(1, 3, 224, 224), start).shape[1:])
    cache = ActivationCache(n, shape, copies, ft.cache_mb << 20)
    try:
        ok, pass_seconds, trunk_seconds = _backbone_pass(runner, cache, paths, ft, cfg, progress)
        return _train_and_save(torch, cfg, ft, dataset, paths, found, classes, net, tail, cache, ok,
                               name=name, registry=registry, trained_by=trained_by,
                               overwrite=overwrite, on_epoch=on_epoch, stop=stop, warn=warn,
                               timing={"backbone_pass_seconds": round(pass_seconds, 3),
                                       "trunk_seconds": round(trunk_seconds, 3),
                                       "estimated_pass_seconds": round(pass_s, 1),
                                       "estimated_epoch_seconds": round(epoch_s, 1)},
                               t_start=t_start)
    finally:
        cache.close()


def _backbone_pass(runner: _TrunkRunner, cache: ActivationCache, paths: list[Path], ft: FinetuneConfig,
                   cfg: TrainConfig, progress: bool) -> tuple[np.ndarray, float, float]:
    """Fill the cache; returns (ok mask (n,), seconds, seconds in the trunk)."""
    from cbir.extract.pipeline import embed_files

    ok = np.zeros(len(paths), dtype=bool)
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="backbone pass", file=sys.stderr,
                   dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        items = ((i, p) for i, p in enumerate(paths))
        for res in embed_files(items, runner, batch_size=ft.trunk_batch, decode_workers=cfg.threads,
                               infer_workers=1):
            if res.ok:
                cache.a[:, res.key] = res.features.reshape(cache.a.shape[0], *cache.a.shape[2:])
                ok[res.key] = True
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return ok, time.perf_counter() - t0, runner.seconds


def _train_and_save(torch: Any, cfg: TrainConfig, ft: FinetuneConfig, dataset: Path, paths: list[Path],
                    found: np.ndarray, classes: list[str], net: Any, tail: Any, cache: ActivationCache,
                    ok: np.ndarray, *, name: str, registry: ModelRegistry, trained_by: str | None,
                    overwrite: bool, on_epoch: EpochFn | None, stop: threading.Event | None,
                    warn: WarnFn, timing: dict[str, float], t_start: float) -> TrainResult:
    from cbir.extract.onnx_export import sha256_file, weights_path

    rows = np.flatnonzero(ok)  # cache rows of the usable images; dataset row i = rows[i]
    y = found[rows].astype(np.int64)
    n_classes = len(classes)
    notes = check_class_counts(np.bincount(y, minlength=n_classes), classes,
                               min_per_class=cfg.min_per_class)
    for note in notes:
        warn(note)
    tr, va = stratified_split(y, cfg.val_split, cfg.seed)

    # -- 2. the stock features (tail as shipped) -> fixed standardisation + warm-up of the head
    def pooled(x: Any) -> Any:
        v = tail(x).mean(dim=(2, 3))
        return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)

    tail.eval()
    with torch.no_grad():
        f0 = np.concatenate([pooled(torch.from_numpy(cache.rows(rows[i:i + 64]))).numpy()
                             for i in range(0, len(rows), 64)])
    mean = f0[tr].mean(axis=0)
    std = f0[tr].std(axis=0)
    std = np.maximum(std, 0.1 * float(std.mean()) + 1e-8).astype(np.float32)
    mean = mean.astype(np.float32)
    z0 = ((f0 - mean) / std).astype(np.float32)
    warm: dict[str, Any] = {"epochs": 0}
    if ft.warmup_epochs:
        warm_cfg = replace(cfg, epochs=ft.warmup_epochs, patience=max(cfg.patience, 8))
        head, hist, best, stopped = fit_head(torch, warm_cfg, z0, y, tr, va,
                                         n_classes, None, stop)
        b = hist[best - 1]
        warm = {"epochs": len(hist), "best_epoch": best, "stopped_early": stopped,
                "val_accuracy": b.val_acc, "val_loss": b.val_loss, "train_accuracy": b.train_acc}
    else:
        head = build_head(torch, cfg, z0.shape[1], n_classes)

    # -- 3. fine-tune tail + head on the cached activations
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    module = torch.nn.ModuleDict({"tail": tail, "head": head})
    head_lr = ft.lr if ft.head_lr is None else ft.head_lr
    opt = torch.optim.AdamW([{"params": list(tail.parameters()), "lr": ft.lr},
                             {"params": list(head.parameters()), "lr": head_lr}],
                            lr=ft.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    flip_rng = np.random.default_rng(cfg.seed + 1)

    def set_mode(training: bool) -> None:
        module.train(training)
        _bn_eval(torch, module)  # BN keeps its running statistics

    def logits(r: Any, training: bool) -> Any:
        idx = rows[r.numpy()]
        copy = flip_rng.integers(0, 2, len(idx)) if training and ft.flip else None
        z = (pooled(torch.from_numpy(cache.rows(idx, copy))) - mean_t) / std_t
        return forward_head(torch, head, cfg.head, z)

    history, best_epoch, stopped = fit_loop(torch, cfg, module, opt, logits, y, tr, va, n_classes,
                                            on_epoch, stop, gen, set_mode=set_mode, eval_batch=64,
                                            label_smoothing=ft.label_smoothing)
    best = history[best_epoch - 1]
    if warm.get("val_loss") is not None and best.val_loss is not None:
        warm["finetuning_improved_val_loss"] = best.val_loss < warm["val_loss"]
        if best.val_loss >= warm["val_loss"]:
            warn(f"fine-tuning did not improve on the head alone: validation loss {best.val_loss:.3f} "
                 f"(accuracy {best.val_acc:.1%}) after fine-tuning, {warm['val_loss']:.3f} "
                 f"({warm['val_accuracy']:.1%}) with the stock backbone; a head-only model (`cbir "
                 "train` without --finetune) should do as well without an extractor of its own")

    # -- 4. export the fine-tuned backbone (checked against torch, also on two real images)
    net.eval()
    check = _preprocessed(paths, rows[:2])
    onnx_bytes, diffs = export_finetuned(net, name, atol=ft.atol, seed=cfg.seed, check_inputs=check)

    weights = {"norm.mean": mean, "norm.std": std, **head_weights(head), **tail_weights(tail)}
    extra = {
        "dataset": {"path": str(dataset.resolve()), "images": int(len(rows)),
                    "failed": int(len(paths) - len(rows))},
        "finetuned": True,
        "backbone": {
            "base": BASE,
            "base_weights_sha256": sha256_file(weights_path(BASE)),
            "blocks": ft.blocks,
            "trained": trained_parts(net, ft.blocks),
            "batchnorm": "running statistics frozen; scale and shift trained",
            "lr": ft.lr,
            "flip": ft.flip,
            "activation_cache": {"shape": list(cache.a.shape[2:]), "dtype": "float16",
                                 "copies": int(cache.a.shape[0]), "bytes": cache.nbytes,
                                 "storage": cache.storage},
            "onnx_max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
            "outputs": {"features": "(n, 1280) pooled head features, L2-normalised",
                        "regions": "(n, 49, 1280) the 7x7 head feature map"},
        },
        "warmup": warm,
        "finetune_hyperparameters": asdict(ft),
        **timing,
        "total_seconds": round(time.perf_counter() - t_start, 3),
    }
    meta = build_meta(cfg, name=name, trained_by=trained_by, classes=classes, y=y, tr=tr, va=va,
                      extractor=extractor_name(name), dim=int(f0.shape[1]), history=history,
                      best_epoch=best_epoch, stopped=stopped, notes=notes, extra=extra)
    model = ClassifierModel(weights, meta)
    registry.save(model, overwrite=overwrite, backbone=onnx_bytes)
    return TrainResult(model, history, best_epoch, stopped, notes)


def _preprocessed(paths: list[Path], rows: np.ndarray) -> np.ndarray | None:
    """The extractor's input for a few images (to check the export on real data)."""
    from cbir.extract.efficientnet import EfficientNetLite0
    from cbir.io.images import load_image

    pre = EfficientNetLite0()
    arrs = []
    for r in rows:
        try:
            arrs.append(pre.preprocess(load_image(paths[int(r)], target_size=pre.input_size)))
        except Exception:  # noqa: BLE001 - the random batch still checks the export
            continue
    return np.stack(arrs) if arrs else None


__all__ = ["FINETUNE_EPOCHS", "FINETUNE_PATIENCE", "MAX_BLOCKS", "ActivationCache", "FinetuneConfig",
           "finetune_from_folder"]
