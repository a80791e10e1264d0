"""Training curves for maintenance: loss and accuracy per epoch, and epochs against time.

The paper's maintenance module plots "the number of iterations against training time";
``plot_curves`` draws that beside the loss and accuracy curves (matplotlib, Agg backend,
imported only here).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from cbir.errors import BackendUnavailable, InvalidRequest


def curves(meta: dict[str, Any]) -> dict[str, Any]:
    """The curve of a model record as columns: epoch, seconds, losses and accuracies."""
    rows = meta.get("curve") or []
    cols = ["epoch", "seconds", "epoch_seconds", "train_loss", "train_acc", "val_loss", "val_acc"]
    return {"name": meta.get("name"), "best_epoch": meta.get("best_epoch"),
            **{c: [r.get(c) for r in rows] for c in cols}}


def plot_curves(meta: dict[str, Any], out: Path) -> Path:
    """Write a PNG (three panels: loss, accuracy, epochs vs seconds) to ``out`` atomically."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InvalidRequest(f"the curves are written as PNG; give a file name ending in .png, not {out}")
    if not out.parent.is_dir():
        raise InvalidRequest(f"folder {out.parent} does not exist")
    c = curves(meta)
    if not c["epoch"]:
        raise InvalidRequest(f"model {meta.get('name')!r} has no training curve")
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise BackendUnavailable("plotting curves needs matplotlib: pip install 'cbir[plots]'") from e

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ep = c["epoch"]
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(ep, c[f"train_{key}"], label="train", marker=".")
        if any(v is not None for v in c[f"val_{key}"]):
            ax.plot(ep, c[f"val_{key}"], label="validation", marker=".")
        if c["best_epoch"]:
            ax.axvline(c["best_epoch"], color="grey", linestyle=":", label="kept")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(c["seconds"], ep, marker=".")
    axes[2].set_xlabel("seconds since start")
    axes[2].set_ylabel("epochs done")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_title("training time")
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"model {meta.get('name')}: {meta.get('head', {}).get('type')} head, "
                 f"{len(meta.get('classes', []))} classes, val acc {meta.get('val_accuracy')}")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out
