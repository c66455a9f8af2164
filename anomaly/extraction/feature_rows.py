"""The old design's feature-row stream, kept as the baseline that ``benchmarks/extract.py`` measures.

The stream of the design before the clip table: one row per clip with
``num_clips`` on every row (from a probe, i.e. a second decode), features
from the model actors, folded by the caller in the driver. No pipeline uses
it any more: extraction and scoring both write the clip table and keep only
summary rows in the driver (see :mod:`anomaly.extraction.pipeline` and
:mod:`anomaly.scoring.pipeline`); new pipelines should build on
:func:`anomaly.extraction.decode.decode_window` and its end rows instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from anomaly.errors import AnomalyError
from anomaly.extraction.decode import ClipSampling
from anomaly.video.factory import open_video
from anomaly.video.reader import clip_starts, resized_shape

logger = logging.getLogger(__name__)


def _error_row(row: dict, reason: str, zero_clip: np.ndarray) -> dict:
    return {
        "video_id": row["video_id"],
        "uri": row["uri"],
        "clip_index": -1,
        "cell": -1,
        "num_clips": 0,
        "num_frames": -1,
        "fps": float("nan"),
        "error": reason or "unknown error",
        "clip": zero_clip,
    }


def decode_probed(row: dict, *, sampling: ClipSampling) -> Iterator[dict]:
    """``flat_map``: probe, then one row per clip (the last held back until the decode ended cleanly)."""
    zero = sampling.zero_clip()
    uri = row["uri"]
    try:
        reader = open_video(uri, fps=sampling.fps_default, threads=sampling.threads, video_id=row["video_id"])
        info = reader.info
        num_clips = len(clip_starts(info.num_frames, sampling.clip_len, sampling.stride))
        base = {
            "video_id": row["video_id"],
            "uri": uri,
            "cell": -1,
            "num_clips": num_clips,
            "num_frames": info.num_frames,
            "fps": float(info.fps),
            "error": "",
        }
        size = resized_shape(sampling.resize, info.height, info.width)
        held = None
        decoded = 0
        for clip in reader.iter_clips(
            clip_len=sampling.clip_len, stride=sampling.stride, size=size, crop=sampling.crop
        ):
            if held is not None:
                yield held
            held = {**base, "clip_index": clip.index, "clip": clip.frames}
            decoded += 1
        if decoded != num_clips or held is None:
            yield _error_row(row, f"decoded {decoded} clips, the probe counted {num_clips}", zero)
            return
        yield held
    except AnomalyError as exc:
        yield _error_row(row, exc.what, zero)
    except Exception as exc:
        logger.exception("%s: unexpected error while decoding", uri)
        first = (str(exc).strip().splitlines() or [""])[0]
        yield _error_row(row, f"unexpected {type(exc).__name__}: {first}", zero)


def build_feature_rows(todo: dict[str, str], settings, spec):
    """Ray Data: one probed decode task per video -> model actors -> feature rows (to ``iter_batches``)."""
    import ray

    from anomaly.extraction.pipeline import model_stage, sampling_of

    if settings.grid > 1:
        raise AnomalyError("grid", "the feature-row stream has no grid cells; use anomaly.extraction.extract")
    items = [{"uri": uri, "video_id": video_id} for video_id, uri in todo.items()]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(
        decode_probed, fn_kwargs={"sampling": sampling_of(settings, spec)}, num_cpus=settings.decode_num_cpus
    )
    return model_stage(ds, settings, spec)
