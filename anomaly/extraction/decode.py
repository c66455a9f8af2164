"""The decode stage: plan a video's windows, decode one window into clip rows. No torch here.

Reusable by any Ray Data pipeline (extraction, scoring)::

    windows = [w for video in videos for w in plan_video(video, sampling=s)]   # header reads only
    ds = ray.data.from_items(windows, override_num_blocks=len(windows))
    ds = ds.flat_map(decode_window, fn_kwargs={"sampling": s}, num_cpus=s.threads)

- :func:`plan_video` reads a container's header (rate, duration, declared
  frames; no frame is decoded) and splits a video longer than 1.5 windows into
  time windows (:class:`~anomaly.video.reader.FrameSpan`), each its own task;
  the last window runs to the end of the file whatever the header says.
- :func:`decode_window` decodes one window once and yields one row per clip it
  owns (clips whose first frame lies in the window; the last clip may read a
  few frames into the next window), then one **end row** (``kind == "end"``)
  saying how many clips it yielded, whether it reached the end of the video
  and, if so, the video's frame count — the count comes from the decode
  itself, never from a second pass. It never raises for bad input: an error
  is an end row with a one-line ``error``.

Windows of a single-window video number frames in decode order (exact for any
frame rate); windows of a split video number frames by timestamp, so each task
seeks to its own window (exact for constant-rate recordings; a variable-rate
one has repeated timestamps dropped and gaps filled by repeating a frame).
AVI files are never split: their frames carry no presentation timestamps
(B-frames come out of order), so a task could not number frames after a seek.
Frame folders are one window (their exact frame count needs no header).

Importing this module must not import torch (a decode worker stays ~100 MiB):
it depends only on numpy, PyAV and :mod:`anomaly.video`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from anomaly.crops import ten_crop
from anomaly.errors import AnomalyError
from anomaly.grid import tile_clip
from anomaly.video.factory import open_video
from anomaly.video.reader import FrameSpan, resized_shape

logger = logging.getLogger(__name__)

# Columns of every row between the decode stage and the writer ("clip" before the model,
# "features" after it). "cell" is -1 for the full-frame clip, 0..G*G-1 for a grid run's cells.
ROW_COLUMNS = (
    "video_id",
    "uri",
    "window",
    "num_windows",
    "kind",
    "clip_index",
    "cell",
    "start_frame",
    "num_frames",
    "eof",
    "fps",
    "error",
    "window_clips",
)

# A video is split only when it is longer than this many windows (a 6-minute video stays one task).
SPLIT_FACTOR = 1.5


@dataclass(frozen=True)
class ClipSampling:
    """What the decode stage needs to know, torch-free (a backbone spec imports torch)."""

    clip_len: int
    stride: int
    crop: tuple[int, int]
    resize: tuple[int, ...]
    grid: int = 1
    fps_default: float | None = None
    threads: int = 1  # FFmpeg threads: the CPUs a decode task reserved
    window_seconds: float = 300.0
    crops: int = 1  # 10: ten crops per clip (anomaly.crops), the clip column is (10, T, h, w, 3)

    def zero_clip(self) -> np.ndarray:
        shape = (self.clip_len, *self.crop, 3)
        return np.zeros(shape if self.crops == 1 else (self.crops, *shape), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- windows


def plan_windows(header, *, stride: int, window_seconds: float) -> list[FrameSpan]:
    """The windows of a video from its header: one span unless it is clearly longer than a window."""
    fps, frames = header.fps, header.estimated_frames
    window = int(round(window_seconds * fps)) if fps and window_seconds > 0 else 0
    window = max(window, stride) if window else 0
    if header.exact or not header.timestamps or not window or frames <= SPLIT_FACTOR * window:
        return [FrameSpan()]
    count = math.ceil(frames / window)
    return [
        FrameSpan(
            start=i * window,
            stop=None if i == count - 1 else (i + 1) * window,
            by_time=True,
            fps=fps,
            t0=header.start_time,
        )
        for i in range(count)
    ]


def plan_video(row: dict, *, sampling: ClipSampling) -> list[dict]:
    """One row per window of the video in ``row`` (``video_id``, ``uri``); never raises.

    A video whose header cannot be read gets one window row carrying the ``error``,
    so the failure reaches the commit stage like any other.
    """
    base = {"video_id": row["video_id"], "uri": row["uri"], "error": ""}
    try:
        reader = open_video(row["uri"], fps=sampling.fps_default, video_id=row["video_id"])
        header = reader.header()
        spans = plan_windows(header, stride=sampling.stride, window_seconds=sampling.window_seconds)
    except AnomalyError as exc:
        return [{**base, **_span_columns(FrameSpan()), "window": 0, "num_windows": 1, "error": exc.what}]
    except Exception as exc:  # one bad video must not end a job over thousands
        logger.exception("%s: unexpected error while reading the header", row["uri"])
        reason = f"unexpected {type(exc).__name__}: {_first_line(exc)}"
        return [{**base, **_span_columns(FrameSpan()), "window": 0, "num_windows": 1, "error": reason}]
    if len(spans) > 1:
        logger.info("%s: %d windows of %d frames", row["uri"], len(spans), spans[0].stop)
    return [
        {**base, **_span_columns(span), "window": i, "num_windows": len(spans), "header_fps": header.fps}
        for i, span in enumerate(spans)
    ]


def _span_columns(span: FrameSpan) -> dict:
    return {
        "start": span.start,
        "stop": -1 if span.stop is None else span.stop,
        "by_time": span.by_time,
        "span_fps": span.fps,
        "t0": span.t0,
        "header_fps": 0.0,
    }


def _span(row: dict) -> FrameSpan:
    stop = int(row["stop"])
    return FrameSpan(
        start=int(row["start"]),
        stop=None if stop < 0 else stop,
        by_time=bool(row["by_time"]),
        fps=float(row["span_fps"]),
        t0=float(row["t0"]),
    )


# ------------------------------------------------------------------------------------------- decode


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def decode_window(row: dict, *, sampling: ClipSampling) -> Iterator[dict]:
    """Ray Data ``flat_map`` generator: one window row -> its clip rows, then one end row. Never raises.

    With ``grid > 1`` every clip row (``cell`` -1) is followed by its ``G*G``
    cells (``cell`` 0..G*G-1), cut from the same decoded frames.
    """
    zero = sampling.zero_clip()
    base = {
        "video_id": row["video_id"],
        "uri": row["uri"],
        "window": int(row["window"]),
        "num_windows": int(row["num_windows"]),
    }

    def end(error: str = "", *, clips: int = 0, eof: bool = False, frames: int = -1, fps: float = 0.0):
        return {
            **base,
            "kind": "end",
            "clip_index": -1,
            "cell": -1,
            "start_frame": -1,
            "num_frames": frames,
            "eof": eof,
            "fps": fps,
            "error": error,
            "window_clips": clips,
            "clip": zero,
        }

    if row.get("error"):
        yield end(str(row["error"]))
        return
    fps = float(row.get("header_fps") or 0.0)
    try:
        reader = open_video(
            row["uri"], fps=sampling.fps_default, threads=sampling.threads, video_id=row["video_id"]
        )
        h, w = sampling.crop
        resize = lambda height, width: resized_shape(sampling.resize, height, width)  # noqa: E731
        # Ten crops are cut from the whole resized frame; one crop is the reader's centre window.
        views = [(resize, sampling.crop if sampling.crops == 1 else None)]
        if sampling.grid > 1:
            views.append(((sampling.grid * h, sampling.grid * w), None))
        clips = 0
        for index, start, frames in reader.iter_clip_views(
            clip_len=sampling.clip_len, stride=sampling.stride, views=views, span=_span(row)
        ):
            clip_row = {
                **base,
                "kind": "clip",
                "clip_index": index,
                "start_frame": start,
                "num_frames": -1,
                "eof": False,
                "fps": fps,
                "error": "",
                "window_clips": 0,
            }
            clip = frames[0] if sampling.crops == 1 else ten_crop(frames[0], sampling.crop)
            yield {**clip_row, "cell": -1, "clip": clip}
            if sampling.grid > 1:
                for k, tile in enumerate(tile_clip(frames[1], sampling.grid)):
                    yield {**clip_row, "cell": k, "clip": tile}
            clips += 1
        if not fps and getattr(reader, "fps", 0):  # frame folders: the rate setting
            fps = float(reader.fps)
        yield end(clips=clips, eof=reader.eof, frames=reader.num_frames or -1, fps=fps)
    except AnomalyError as exc:
        yield end(exc.what)
    except Exception as exc:  # one bad video must not end a job over thousands
        logger.exception("%s: unexpected error while decoding", row["uri"])
        yield end(f"unexpected {type(exc).__name__}: {_first_line(exc)}")


def decode_video(row: dict, *, sampling: ClipSampling) -> Iterator[dict]:
    """All windows of one video in this process: clip rows then end rows (tests, benchmarks, scoring)."""
    for window in plan_video(row, sampling=sampling):
        yield from decode_window(window, sampling=sampling)
