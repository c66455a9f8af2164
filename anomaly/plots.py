"""PNG plots people look at: ROC curves, score timelines, training curves, tune sweeps, cell heat maps."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from anomaly import uris
from anomaly.alarms import DEFAULT_THRESHOLD
from anomaly.grid import cell_bounds, grid_of


def _save(fig, uri: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    uris.write_bytes_atomic(uri, buffer.getvalue())
    return uri


def roc_plot(
    fpr: np.ndarray, tpr: np.ndarray, auc: float, uri: str, *, title: str = "Frame-level ROC"
) -> str:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, lw=2, label=f"MIL scorer (AUC = {100 * auc:.2f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(
        xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01)
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, uri)


def timeline_plot(
    scores: np.ndarray,
    intervals: Sequence[tuple[int, int]],
    uri: str,
    *,
    title: str,
    fps: float | None = None,
    threshold: float | None = DEFAULT_THRESHOLD,
) -> str:
    """Score over frames (or seconds when fps is known), annotated anomalies shaded."""
    scale = 1.0 / fps if fps else 1.0
    x = np.arange(len(scores)) * scale
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for index, (start, end) in enumerate(intervals):
        ax.axvspan(
            start * scale,
            end * scale,
            color="tab:red",
            alpha=0.2,
            label="annotated anomaly" if index == 0 else None,
        )
    ax.plot(x, scores, color="tab:blue", lw=1.5, label="anomaly score")
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.set(xlabel="time (s)" if fps else "frame", ylabel="score", ylim=(-0.02, 1.02), title=title)
    ax.set_xlim(0, max(x[-1], 1e-9) if len(x) else 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, uri)


def training_curves(history: Sequence[dict], uri: str) -> str:
    epochs = [row["epoch"] for row in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [row["loss"] for row in history], color="tab:blue", label="train loss")
    ax1.set(xlabel="epoch", ylabel="loss")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [row["val_auc"] for row in history], color="tab:green", label="val AUC")
    ax2.set(ylabel="validation AUC", ylim=(0, 1))
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    ax1.grid(alpha=0.3)
    return _save(fig, uri)


def sweep_plot(
    values: dict[str, Sequence], metric: Sequence[float], uri: str, *, metric_name: str = "val AUC"
) -> str:
    """One panel per searched parameter: metric against the parameter's value."""
    names = list(values)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        column = list(values[name])
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column)
        if numeric:
            ax.scatter(column, metric)
            positive = [v for v in column if v > 0]
            if positive and max(positive) / max(min(positive), 1e-300) > 100 and len(positive) == len(column):
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in column})
            ax.scatter([labels.index(str(v)) for v in column], metric)
            ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel=name, ylabel=metric_name)
        ax.grid(alpha=0.3)
    return _save(fig, uri)


def heatmap_plot(
    frame: np.ndarray,
    cell_scores: np.ndarray,
    uri: str,
    *,
    title: str,
    mask: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> str:
    """The frame with its cell scores as a translucent heat map; cells above ``threshold`` outlined,
    the annotated anomalous pixels (``mask``) contoured in white. Written as a PNG to ``uri``."""
    scores = np.asarray(cell_scores, dtype=np.float64).reshape(-1)
    grid = grid_of(scores.size)
    height, width = frame.shape[:2]
    rows, cols = cell_bounds(height, width, grid)
    heat = np.zeros((height, width), dtype=np.float64)
    for k, score in enumerate(scores):
        i, j = divmod(k, grid)
        heat[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = score
    fig, ax = plt.subplots(figsize=(max(3.0, 5.0 * width / max(height, 1)), 5.0))
    ax.imshow(frame, interpolation="nearest")
    shown = ax.imshow(heat, cmap="inferno", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="nearest")
    for k, score in enumerate(scores):
        i, j = divmod(k, grid)
        box = (cols[j] - 0.5, rows[i] - 0.5)
        size = (cols[j + 1] - cols[j], rows[i + 1] - rows[i])
        if score > threshold:
            ax.add_patch(Rectangle(box, *size, fill=False, edgecolor="tab:red", lw=2))
        ax.text(
            (cols[j] + cols[j + 1]) / 2,
            (rows[i] + rows[i + 1]) / 2,
            f"{score:.2f}",
            color="white",
            ha="center",
            va="center",
            fontsize=8,
        )
    if mask is not None and np.asarray(mask).any():
        mask = np.asarray(mask, dtype=float)
        if mask.shape != (height, width):  # masks may be stored at another resolution
            ys = (np.arange(height) * mask.shape[0] / height).astype(int)
            xs = (np.arange(width) * mask.shape[1] / width).astype(int)
            mask = mask[np.ix_(ys, xs)]
        ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="cell anomaly score")
    ax.set(title=title, xticks=[], yticks=[])
    return _save(fig, uri)
