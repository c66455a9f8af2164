"""Videos -> clip features -> the feature store, scaled out with Ray Data (see :mod:`.pipeline`).

- :mod:`.settings`: :class:`ExtractionSettings`, :class:`ExtractionReport`, ``_store.json`` contents;
- :mod:`.decode`: the torch-free decode stage (window planning, one decode pass per window);
- :mod:`.commit`: the clip-table writer, the driver's per-video tracker, the pooling task;
- :mod:`.pipeline`: :func:`extract`, the one entry point.

Names are loaded on first use, so ``import anomaly.extraction.decode`` (what a
decode worker imports) does not import torch.
"""

from __future__ import annotations

import importlib

from anomaly.listing import VIDEO_EXTENSIONS, list_videos


def sanity_check(video_uris, root=None):
    """Ids of listed URIs (stems without ``root``): kept for callers of the old name; see anomaly.listing."""
    from anomaly.listing import assign_ids

    return assign_ids(video_uris, root)


_LAZY = {
    "ExtractionSettings": "settings",
    "ExtractionReport": "settings",
    "store_settings": "settings",
    "ClipSampling": "decode",
    "decode_video": "decode",
    "decode_window": "decode",
    "plan_video": "decode",
    "VideoTracker": "commit",
    "commit_videos": "commit",
    "write_clip_rows": "commit",
    "build_pipeline": "pipeline",
    "model_stage": "pipeline",
    "weights_tag": "settings",
    "_weights_tag": "settings",
    "extract": "pipeline",
    "sampling_of": "pipeline",
    "resolve_ids": "pipeline",
}

__all__ = ["VIDEO_EXTENSIONS", "list_videos", "sanity_check", *_LAZY, "SegmentAccumulator"]


def __getattr__(name: str):
    if name == "SegmentAccumulator":
        from anomaly.segments import SegmentAccumulator

        return SegmentAccumulator
    if name in _LAZY:
        module = importlib.import_module(f"anomaly.extraction.{_LAZY[name]}")
        return getattr(module, {"_weights_tag": "weights_tag"}.get(name, name))
    raise AttributeError(f"module 'anomaly.extraction' has no attribute {name!r}")
