"""Charts of a pack: per-layer capacity by task, and task accuracies.

matplotlib is optional (``pip install 'packtool[plot]'``) and imported only when a chart is
drawn. Charts use matplotlib's object API (no pyplot, no global backend change), so they are
safe to call from scripts, servers and notebooks alike. The format follows the file name's
suffix (``.png``, ``.svg``, ``.pdf``, ...); files are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PackToolError
from .fileio import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .pack import Pack

#: Row keys :func:`plot_accuracy` draws, in bar order, with their legend labels.
ACCURACY_SERIES = {
    "accuracy_before_prune": "before pruning",
    "accuracy_after_prune": "after pruning",
    "accuracy": "final",
}
FREE_COLOR = "#d9d9d9"


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PackToolError("matplotlib is not installed: pip install 'packtool[plot]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: str | os.PathLike) -> None:
    suffix = Path(path).suffix.lower().lstrip(".")
    formats = fig.canvas.get_supported_filetypes()
    if suffix not in formats:
        raise PackToolError(f"cannot write a chart to {path}: use one of "
                            f".{', .'.join(sorted(formats))}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=suffix, dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def plot_capacity(pack: Pack, path: str | os.PathLike) -> None:
    """Horizontal stacked bars, one per prunable layer: the share owned by each task, and free."""
    layers = pack.capacity()
    fig = _new_figure(8.0, 1.6 + 0.32 * len(layers))
    ax = fig.add_subplot()
    names = [layer.name.removesuffix(".weight") for layer in layers]
    positions = list(range(len(layers)))[::-1]  # first layer on top
    left = [0.0] * len(layers)
    colors = _task_colors(len(pack.tasks))
    for k, record in enumerate(pack.tasks):
        share = [layer.owned[k] / layer.total for layer in layers]
        label = f"#{record.index} {record.name}"
        ax.barh(positions, share, left=left, color=colors[k], label=label)
        left = [a + b for a, b in zip(left, share)]
    free = [layer.free / layer.total for layer in layers]
    ax.barh(positions, free, left=left, color=FREE_COLOR, label="free")
    ax.set_yticks(positions, names)
    ax.set_ylabel("layer")
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("share of the layer's weights")
    ax.set_title(f"{pack.spec.arch}: capacity per layer ({pack.free_fraction:.1%} free)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)


def plot_accuracy(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Bar chart of each row's accuracy (a fraction 0..1), one group of bars per task.

    Each row needs ``task``; every key of :data:`ACCURACY_SERIES` present in the rows becomes
    one series, so ``eval --json`` rows give one bar per task and :class:`TaskResult` dicts
    (``result.to_dict()``) give before pruning / after pruning / final.
    """
    if not rows:
        raise PackToolError("no accuracies to plot")
    series = [k for k in ACCURACY_SERIES if any(row.get(k) is not None for row in rows)]
    if not series:
        raise PackToolError("the rows have no accuracy to plot")
    width_in = 1.2 + 0.9 * len(rows) * len(series) ** 0.5 + (1.5 if len(series) > 1 else 0)
    fig = _new_figure(max(4.0, width_in), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, key in enumerate(series):
        xs = [t + (i - (len(series) - 1) / 2) * width for t in range(len(rows))]
        values = [float(row.get(key) or 0.0) for row in rows]
        bars = ax.bar(xs, values, width, label=ACCURACY_SERIES[key])
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(rows)), [str(row["task"]) for row in rows],
                  rotation=30 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylim(0, 1.1)
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per task")
    if len(series) > 1:
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def _task_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]
