"""The timeline of one scored video: a step per clip over seconds, alarms shaded, the threshold dotted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anomaly.plots import _save, plt


def clip_timeline_plot(
    start_s: np.ndarray,
    end_s: np.ndarray,
    scores: np.ndarray,
    alarms: Sequence[tuple[float, float]],
    uri: str,
    *,
    title: str,
    threshold: float | None,
    truth: Sequence[tuple[float, float]] = (),
) -> str:
    """Scores as steps over each clip's ``[start, end)``; ``truth`` (seconds) shaded grey when known."""
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for index, (start, end) in enumerate(truth):
        ax.axvspan(start, end, color="grey", alpha=0.25, label="true event" if index == 0 else None)
    for index, (start, end) in enumerate(alarms):
        ax.axvspan(start, end, color="tab:red", alpha=0.2, label="alarm" if index == 0 else None)
    x = np.concatenate([np.asarray(start_s, dtype=float), np.asarray(end_s, dtype=float)[-1:]])
    y = np.concatenate([np.asarray(scores, dtype=float), np.asarray(scores, dtype=float)[-1:]])
    ax.step(x, y, where="post", color="tab:blue", lw=1.2, label="score per clip")
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.set(xlabel="time (s)", ylabel="score", ylim=(-0.02, 1.02), title=title)
    ax.set_xlim(0, max(float(x[-1]), 1e-9) if len(x) else 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, uri)
