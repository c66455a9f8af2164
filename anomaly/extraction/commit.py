"""Workers write, the driver keeps score: the clip table writer, the per-video tracker, the pooling task.

- :func:`write_clip_rows` (a Ray Data ``map_batches`` task after the model)
  writes a batch's clip features into the store's clip table
  (``STORE/_clips/part-<hash>.parquet``, atomic, named after its clip keys so a
  retried task overwrites its own file) and returns only a few *summary rows*:
  per (video, window, cell) the runs of clip indices it wrote and the file, and
  every window's end row. No feature leaves the workers.
- :class:`VideoTracker` (the driver) merges those runs per video. A video is
  complete when every window's end row is in, one of them reached the end of
  the video (so the clip count is known from the decode), and the runs cover
  every clip of every cell; a window's error fails the video. Its memory per
  video is a few intervals, whatever D or the clip count.
- :func:`commit_videos` (a Ray task per ``flush_every`` complete videos) reads
  their clip rows back from the clip table in record batches, folds them into
  32 segments (:class:`~anomaly.segments.SegmentAccumulator`: duplicates count
  once, ``(32, D)`` sums per video) and writes one atomic part file of bags.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from anomaly import store as feature_store
from anomaly.segments import SegmentAccumulator
from anomaly.video.reader import clip_starts

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "kind",  # "clips": a run of clip indices written to `file`; "end": a window's end row
    "video_id",
    "uri",
    "window",
    "num_windows",
    "cell",
    "lo",
    "hi",  # inclusive
    "file",
    "num_frames",
    "eof",
    "fps",
    "error",
    "window_clips",
)


def _runs(index: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique ints -> inclusive runs ``[(lo, hi), …]``."""
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [index.size - 1]])
    return [(int(index[s]), int(index[e])) for s, e in zip(starts, ends, strict=True)]


def write_clip_rows(
    batch: dict[str, np.ndarray],
    *,
    store: str,
    clip_len: int,
    fps_default: float | None,
    run: str = "",
) -> dict:
    """Ray Data ``map_batches`` function: clip rows -> the clip table (``_clips/RUN``); summary rows out.

    ``clip_len``: frames per clip, for ``last_frame`` (the model stage drops the clips themselves,
    so the length cannot be read off the batch; it is not the stride either).
    """
    kind = np.asarray(batch["kind"]).astype(str)
    clips = np.flatnonzero(kind == "clip")
    out: dict[str, list] = {name: [] for name in SUMMARY_COLUMNS}

    def add(**values) -> None:
        for name in SUMMARY_COLUMNS:
            out[name].append(values.get(name, _DEFAULTS[name]))

    if clips.size:
        start = np.asarray(batch["start_frame"])[clips].astype(np.int64)
        fps = np.asarray(batch["fps"], dtype=np.float64)[clips]
        if fps_default:
            fps = np.where(fps > 0, fps, fps_default)
        columns = {
            "video_id": np.asarray(batch["video_id"]).astype(str)[clips],
            "window": np.asarray(batch["window"])[clips],
            "clip_index": np.asarray(batch["clip_index"])[clips],
            "cell": np.asarray(batch["cell"])[clips],
            "first_frame": start,
            "last_frame": start + clip_len - 1,
            "time": np.where(fps > 0, start / np.where(fps > 0, fps, 1.0), np.nan),
            # ten crops: (B, 10, D) -> (B, 10 * D), crop-major; commit_videos splits them again
            "features": np.asarray(batch["features"])[clips].reshape(clips.size, -1),
        }
        table = feature_store.clips_to_table(columns)
        path = feature_store.write_clip_file(store, table, run)
        uris_ = np.asarray(batch["uri"]).astype(str)[clips]
        nwin = np.asarray(batch["num_windows"])[clips]
        keys = np.rec.fromarrays([columns["video_id"], columns["window"], columns["cell"]])
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            first = rows[0]
            for lo, hi in _runs(np.unique(columns["clip_index"][rows].astype(np.int64))):
                add(
                    kind="clips",
                    video_id=str(key[0]),
                    uri=str(uris_[first]),
                    window=int(key[1]),
                    num_windows=int(nwin[first]),
                    cell=int(key[2]),
                    lo=lo,
                    hi=hi,
                    file=path,
                )
    for row in np.flatnonzero(kind == "end"):
        add(
            kind="end",
            video_id=str(batch["video_id"][row]),
            uri=str(batch["uri"][row]),
            window=int(batch["window"][row]),
            num_windows=int(batch["num_windows"][row]),
            num_frames=int(batch["num_frames"][row]),
            eof=bool(batch["eof"][row]),
            fps=float(batch["fps"][row]),
            error=str(batch["error"][row]),
            window_clips=int(batch["window_clips"][row]),
        )
    return {name: np.asarray(values) for name, values in out.items()}


_DEFAULTS = {
    "kind": "",
    "video_id": "",
    "uri": "",
    "window": -1,
    "num_windows": 0,
    "cell": -1,
    "lo": -1,
    "hi": -1,
    "file": "",
    "num_frames": -1,
    "eof": False,
    "fps": 0.0,
    "error": "",
    "window_clips": 0,
}


# ------------------------------------------------------------------------------------------ the driver


@dataclass
class TrackedVideo:
    """What the driver knows of one video in flight: intervals and end rows, never features."""

    uri: str
    num_windows: int = 0
    ends: dict[int, dict] = field(default_factory=dict)
    runs: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # cell -> runs of clip indices
    files: set[str] = field(default_factory=set)

    def add_runs(self, cell: int, lo: int, hi: int, path: str) -> None:
        self.runs.setdefault(cell, []).append((lo, hi))
        self.files.add(path)
        if len(self.runs[cell]) > 64:
            self.runs[cell] = _merge(self.runs[cell])

    @property
    def num_frames(self) -> int | None:
        counts = [end["num_frames"] for end in self.ends.values() if end["eof"] and end["num_frames"] > 0]
        return max(counts) if counts else None

    @property
    def fps(self) -> float:
        return max((end["fps"] for end in self.ends.values()), default=0.0)

    def covered(self, cell: int, num_clips: int) -> int:
        total = 0
        for lo, hi in _merge(self.runs.get(cell, [])):
            lo, hi = max(lo, 0), min(hi, num_clips - 1)
            total += max(0, hi - lo + 1)
        return total


def _merge(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(runs):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


class VideoTracker:
    """Driver side: summary rows in, complete and failed videos out (see the module docstring)."""

    def __init__(self, *, clip_len: int, stride: int, cells: int) -> None:
        self.clip_len, self.stride = clip_len, stride
        self.cells = [-1, *range(cells)]
        self.videos: dict[str, TrackedVideo] = {}
        self.done: set[str] = set()  # completed or failed: later rows are ignored

    def consume(
        self, batch: dict[str, np.ndarray]
    ) -> tuple[list[tuple[str, TrackedVideo]], list[tuple[str, str, str]]]:
        """Returns ``(complete [(id, video)], failed [(id, uri, reason)])`` newly decided by this batch."""
        touched: dict[str, None] = {}
        failed: list[tuple[str, str, str]] = []
        kinds = np.asarray(batch["kind"]).astype(str)
        for i, kind in enumerate(kinds):
            video_id = str(batch["video_id"][i])
            if video_id in self.done:
                continue
            video = self.videos.setdefault(video_id, TrackedVideo(uri=str(batch["uri"][i])))
            video.num_windows = int(batch["num_windows"][i])
            if kind == "clips":
                video.add_runs(
                    int(batch["cell"][i]), int(batch["lo"][i]), int(batch["hi"][i]), str(batch["file"][i])
                )
            else:
                error = str(batch["error"][i])
                if error:
                    self.done.add(video_id)
                    self.videos.pop(video_id, None)
                    touched.pop(video_id, None)
                    failed.append((video_id, video.uri, error))
                    continue
                video.ends[int(batch["window"][i])] = {
                    "num_frames": int(batch["num_frames"][i]),
                    "eof": bool(batch["eof"][i]),
                    "fps": float(batch["fps"][i]),
                }
            touched[video_id] = None
        complete = []
        for video_id in touched:
            video = self.videos[video_id]
            state = self.state(video)
            if state == "complete":
                complete.append((video_id, self.videos.pop(video_id)))
                self.done.add(video_id)
            elif state:
                failed.append((video_id, video.uri, state))
                self.videos.pop(video_id)
                self.done.add(video_id)
        return complete, failed

    def num_clips(self, video: TrackedVideo) -> int:
        return len(clip_starts(video.num_frames or 0, self.clip_len, self.stride))

    def state(self, video: TrackedVideo) -> str:
        """``"complete"``, ``""`` (waiting for rows) or a failure reason."""
        if not video.num_windows or len(video.ends) < video.num_windows:
            return ""
        if video.num_frames is None:
            return "no window reached the end of the video (no decodable frames)"
        need = self.num_clips(video)
        if all(video.covered(cell, need) == need for cell in self.cells):
            return "complete"
        return ""

    def finish(self, todo: Iterable[str]) -> list[tuple[str, str, str]]:
        """End of the stream: what is still open misses clips; ids never seen had no output."""
        failed = []
        for video_id, video in list(self.videos.items()):
            if len(video.ends) < video.num_windows:
                reason = f"incomplete: {len(video.ends)} of {video.num_windows} windows ended"
            else:
                need = self.num_clips(video)
                reason = f"incomplete: {video.covered(-1, need)} of {need} clips"
            failed.append((video_id, video.uri, reason))
            self.done.add(video_id)
        self.videos.clear()
        for video_id in todo:
            if video_id not in self.done:
                failed.append((video_id, "", "no output from the decode stage"))
                self.done.add(video_id)
        return failed


# ------------------------------------------------------------------------------------------ pooling


def commit_videos(store: str, videos: Sequence[dict], dim: int, crops: int = 1) -> dict:
    """Pool complete videos from the clip table into bags; write them as one atomic part file.

    ``videos``: per video ``{"row": the bag row without features, "num_clips",
    "cells", "files"}``. Returns ``{"part": uri or None, "committed": [ids],
    "failed": [(id, uri, reason)]}``. Runs as a Ray task (or in-process).
    ``crops > 1``: clip rows hold ``crops * dim`` values; each crop is pooled
    (and L2-normalised) on its own into ``features_crops``, ``features`` is their mean.
    """
    width = dim * crops
    ids = [video["row"]["video_id"] for video in videos]
    files = sorted({path for video in videos for path in video["files"]})
    acc: dict[tuple[str, int], SegmentAccumulator] = {}
    for video in videos:
        for cell in [-1, *range(video["cells"])]:
            acc[(video["row"]["video_id"], cell)] = SegmentAccumulator(video["num_clips"], width)
    for batch in feature_store.iter_clip_batches(
        store, files, ids, columns=["video_id", "cell", "clip_index", "features"]
    ):
        vids = np.asarray(batch.column("video_id").to_pylist(), dtype=object)
        cells = batch.column("cell").to_numpy()
        index = batch.column("clip_index").to_numpy()
        flat = batch.column("features").flatten().to_numpy(zero_copy_only=False)
        feats = flat.reshape(len(batch), -1) if len(batch) else flat.reshape(0, width)
        for key in {(v, int(c)) for v, c in zip(vids, cells, strict=True)}:
            target = acc.get(key)
            if target is None:
                continue
            rows = np.flatnonzero((vids == key[0]) & (cells == key[1]))
            inside = index[rows] < target.num_clips
            target.add(index[rows][inside], feats[rows][inside])
    rows, failed = [], []
    for video in videos:
        row = dict(video["row"])
        video_id = row["video_id"]
        parts = [acc[(video_id, cell)] for cell in [-1, *range(video["cells"])]]
        missing = [p for p in parts if not p.complete]
        if missing:
            failed.append(
                (
                    video_id,
                    row["source_uri"],
                    f"incomplete: {missing[0].count} of {missing[0].num_clips} clips in the clip table",
                )
            )
            continue
        if crops > 1:
            row["features_crops"] = parts[0].pooled(groups=crops).transpose(1, 0, 2)  # (crops, 32, D)
            row["features"] = row["features_crops"].mean(axis=0)
        else:
            row["features"] = parts[0].pooled()
        row["features_grid"] = np.stack([p.pooled() for p in parts[1:]]) if video["cells"] else None
        rows.append(row)
    part = feature_store.write_rows(store, rows) if rows else None
    return {"part": part, "committed": [row["video_id"] for row in rows], "failed": failed}
