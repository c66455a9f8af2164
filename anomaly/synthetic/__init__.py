"""Synthetic data with known anomalies, for tests, benchmarks and the demo.

One import line per module; add a module's public names here and to ``__all__``.
"""

from anomaly.synthetic.videos import (
    EVENT_CLASSES,
    EVENTS,
    NORMAL_CLASS,
    SyntheticVideo,
    make_video,
    make_video_set,
    write_annotations,
)

__all__ = [
    # videos
    "EVENTS",
    "EVENT_CLASSES",
    "NORMAL_CLASS",
    "SyntheticVideo",
    "make_video",
    "make_video_set",
    "write_annotations",
]
