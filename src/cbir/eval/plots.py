"""PNG plots of evaluation results: precision-recall curves and generic line curves.

matplotlib is optional (``pip install 'cbir[plots]'``) and imported inside the functions.
Figures are drawn with the object-oriented API on an Agg canvas (no pyplot, no global
backend switch, no display needed), so plotting is safe in servers and threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cbir.errors import BackendUnavailable, InvalidRequest

__all__ = ["plot_curves", "plot_pr_curves"]

Series = Sequence[float] | np.ndarray | tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]


def _new_figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """(figure, axes) on an Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise BackendUnavailable("plots need matplotlib: pip install 'cbir[plots]'") from None
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_pr_curves(
    results: Mapping[str, Mapping[Any, Any]],
    path: Path,
    *,
    bits: int | None = None,
    curve: Literal["radius", "rank"] = "radius",
    precision: Literal["precision", "precision_nonempty"] = "precision",
    title: str | None = None,
) -> Path:
    """Precision-recall curves of several methods at one code length, written as a PNG.

    results: {method: metrics dict of :func:`cbir.eval.hashing.evaluate_codes` /
    ``evaluate_float``}, or {method: {bits: metrics dict}} with ``bits`` naming the
    column to plot (methods without that bit length are skipped; a method with one
    entry only, such as a float ceiling under any key, is used as is).
    curve: ``"radius"`` plots the Hamming-radius curve (``pr_curve``; methods without
    one, e.g. float features, fall back to their rank curve, drawn dashed); ``"rank"``
    plots ``pr_rank`` (precision/recall at rank cut-offs) for every method.
    precision: which radius-curve precision to plot (empty retrievals as 0, or averaged
    over the queries retrieving something). Returns ``path``.
    """
    fig, ax = _new_figure((6.0, 4.5))
    drawn = 0
    for method, res in results.items():
        metrics = res
        if bits is not None and "queries" not in res:
            if bits in res:
                metrics = res[bits]
            elif len(res) == 1:
                metrics = next(iter(res.values()))
            else:
                continue
        if not isinstance(metrics, Mapping):
            raise InvalidRequest(f"results[{method!r}] is not a metrics dict; pass bits= for nested results")
        if curve == "radius" and "pr_curve" in metrics:
            c = metrics["pr_curve"]
            ax.plot(c["recall"], c[precision], marker=".", markersize=3, label=method)
        elif "pr_rank" in metrics:
            c = metrics["pr_rank"]
            style = "--" if curve == "radius" else "-"
            ax.plot(c["recall"], c["precision"], linestyle=style, label=method)
        else:
            continue
        drawn += 1
    if drawn == 0:
        raise InvalidRequest(
            "no method has a precision-recall curve to plot (evaluate with pr_curve / pr_points)"
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    default = "precision-recall" + (f" @ {bits} bits" if bits is not None else "")
    ax.set_title(title if title is not None else default)
    return _save(fig, path)


def plot_curves(
    series: Mapping[str, Series],
    path: Path,
    *,
    xlabel: str = "epoch",
    ylabel: str = "",
    title: str = "",
    logy: bool = False,
    markers: bool = False,
    size: tuple[float, float] = (6.0, 4.0),
) -> Path:
    """Line plot of named series (training loss, validation accuracy, time...) as a PNG.

    series: {name: y values} (x = 1, 2, ...) or {name: (x values, y values)}; values
    are 1-D sequences of numbers, NaN points are left as gaps. logy: logarithmic y axis.
    Returns ``path``.
    """
    if not series:
        raise InvalidRequest("plot_curves needs at least one series")
    fig, ax = _new_figure(size)
    for name, s in series.items():
        if isinstance(s, tuple) and len(s) == 2:
            x = np.asarray(s[0], dtype=np.float64).ravel()
            y = np.asarray(s[1], dtype=np.float64).ravel()
        else:
            y = np.asarray(s, dtype=np.float64).ravel()
            x = np.arange(1, len(y) + 1, dtype=np.float64)
        if x.shape != y.shape:
            raise InvalidRequest(f"series {name!r}: {len(x)} x values but {len(y)} y values")
        ax.plot(x, y, marker="o" if markers else None, markersize=3, label=str(name))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    return _save(fig, path)
