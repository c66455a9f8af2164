"""Scoring recordings with a trained model: per-clip scores, alarms with timestamps, timelines.

- :mod:`anomaly.scoring.windows`: how a scorer trained on 32-segment bags scores one clip;
- :mod:`anomaly.scoring.alarms`: threshold, merge gap, minimum duration (the one alarm threshold);
- :mod:`anomaly.scoring.pipeline`: many videos on Ray Data, reusing extraction's stages;
- :mod:`anomaly.scoring.outputs`: ``OUT/scores``, ``alarms.parquet``/``.csv``, timelines;
- :mod:`anomaly.scoring.single`: one video in-process (library use, the demo), its CSV/PNG/MP4.
"""

from anomaly.scoring.alarms import DEFAULT_THRESHOLD, Alarm, AlarmSettings, find_alarms
from anomaly.scoring.single import (
    ScoringSettings,
    VideoScores,
    clip_features,
    score_video,
    settings_from_checkpoint,
    write_annotated_video,
    write_outputs,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "Alarm",
    "AlarmSettings",
    "ScoringSettings",
    "VideoScores",
    "clip_features",
    "find_alarms",
    "score_video",
    "settings_from_checkpoint",
    "write_annotated_video",
    "write_outputs",
]
