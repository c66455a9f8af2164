"""Scoring recordings with a trained model: per-clip scores, alarms with timestamps, timelines.

One settings object and one entry point, for one video or many:

- :mod:`anomaly.scoring.job`: :class:`ScoringJob` (extraction settings, window, alarm rule) and
  :func:`scoring_job`, which builds it from a checkpoint (the training store's clip settings, else
  the backbone's) and overrides;
- :mod:`anomaly.scoring.pipeline`: :func:`score`, the entry point: one video or many on Ray Data,
  reusing extraction's stages and tracker;
- :mod:`anomaly.scoring.windows`: how a scorer trained on 32-segment bags scores one clip;
- :mod:`anomaly.scoring.workers`: the scoring task (clip table -> head -> scores part, alarms, timelines)
  and the scoring rule both paths run (``score_range``);
- :mod:`anomaly.scoring.outputs`: ``OUT/scores``, ``alarms.parquet``/``.csv``, timelines;
- :mod:`anomaly.scoring.single`: :func:`score_video`, a thin in-process convenience for one video
  (library use, the demo) with the same job and rule, and one video's CSV/PNG/MP4.

The alarm rules live in :mod:`anomaly.alarms` (shared with evaluation; re-exported here). The names
below are loaded on first use, so importing this package does not pull in torch, PyAV or the backbones.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_THRESHOLD": "anomaly.alarms",
    "Alarm": "anomaly.alarms",
    "AlarmSettings": "anomaly.alarms",
    "find_alarms": "anomaly.alarms",
    "ScoringJob": "anomaly.scoring.job",
    "scoring_job": "anomaly.scoring.job",
    "ScoringReport": "anomaly.scoring.pipeline",
    "score": "anomaly.scoring.pipeline",
    "VideoScores": "anomaly.scoring.single",
    "clip_features": "anomaly.scoring.single",
    "score_video": "anomaly.scoring.single",
    "write_annotated_video": "anomaly.scoring.single",
    "write_outputs": "anomaly.scoring.single",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
