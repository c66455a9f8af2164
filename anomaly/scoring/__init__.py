"""Scoring recordings with a trained model: per-clip scores, alarms with timestamps, timelines.

- :mod:`anomaly.scoring.windows`: how a scorer trained on 32-segment bags scores one clip;
- :mod:`anomaly.alarms`: threshold, merge gap, minimum duration (the one alarm threshold,
  :data:`~anomaly.alarms.DEFAULT_THRESHOLD`; numpy only, cheap to import from anywhere);
- :mod:`anomaly.scoring.pipeline`: many videos on Ray Data, reusing extraction's stages and tracker;
- :mod:`anomaly.scoring.workers`: the scoring task (clip table -> head -> scores part, alarms, timelines);
- :mod:`anomaly.scoring.outputs`: ``OUT/scores``, ``alarms.parquet``/``.csv``, timelines;
- :mod:`anomaly.scoring.single`: one video in-process (library use, the demo), its CSV/PNG/MP4.

The names below are loaded on first use, so ``from anomaly.alarms import DEFAULT_THRESHOLD``
does not pull in torch, PyAV or the backbones.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_THRESHOLD": "alarms",
    "Alarm": "alarms",
    "AlarmSettings": "alarms",
    "find_alarms": "alarms",
    "ScoringSettings": "single",
    "VideoScores": "single",
    "clip_features": "single",
    "score_video": "single",
    "settings_from_checkpoint": "single",
    "write_annotated_video": "single",
    "write_outputs": "single",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
