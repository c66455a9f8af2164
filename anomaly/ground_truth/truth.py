"""What a frame-folder data set says about each of its videos: :class:`DatasetTruth`.

``DatasetTruth.describe`` has the shape of
:meth:`anomaly.ground_truth.ucf_crime.GroundTruth.describe` (split, label, class,
intervals, frame count, plus data set name and pixel-mask location), so the
extractor treats UCF-Crime and the frame-folder data sets alike.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.ground_truth.discovery import base_name

ANOMALY_CLASS = "Anomaly"


@dataclass
class DatasetVideo:
    """One video of a data set and what the store records about it."""

    video_id: str
    uri: str
    dataset: str
    source_split: str  # "train" | "test": the data set's own folder
    name: str
    num_frames: int | None = None
    intervals: list[tuple[int, int]] = field(default_factory=list)
    mask_uri: str | None = None
    split: str = ""

    def __post_init__(self) -> None:
        self.split = self.split or self.source_split

    @property
    def label(self) -> int:
        return 1 if self.intervals else 0


@dataclass
class DatasetTruth:
    """Videos and ground truth of one or more frame-folder data sets; ``describe`` like ``GroundTruth``."""

    videos: dict[str, DatasetVideo] = field(default_factory=dict)
    fps: float | None = None  # the recording's frame rate where the data set states one

    @property
    def names(self) -> list[str]:
        return sorted({v.dataset for v in self.videos.values()})

    def video_uris(self) -> dict[str, str]:
        """``{video id: URI}``: what the extractor is given."""
        return {vid: video.uri for vid, video in sorted(self.videos.items())}

    def describe(self, video_id: str) -> dict:
        video = self.videos.get(video_id)
        if video is None:
            raise AnomalyError(video_id, f"not a video of the data set(s) {', '.join(self.names)}")
        return {
            "split": video.split,
            "label": video.label,
            "anomaly_class": ANOMALY_CLASS if video.label else "Normal",
            "anomaly_intervals": [list(iv) for iv in video.intervals],
            "num_frames": video.num_frames,
            "dataset": video.dataset,
            "mask_uri": video.mask_uri,
        }

    def merged(self, other: DatasetTruth) -> DatasetTruth:
        clash = sorted(set(self.videos) & set(other.videos))
        if clash:
            raise AnomalyError(clash[0], f"{len(clash)} video ids appear in two data sets")
        return DatasetTruth({**self.videos, **other.videos}, fps=self.fps or other.fps)

    def with_train_list(self, uri: str) -> DatasetTruth:
        """The videos named in the list file are the training split, every other video is test."""
        text = uris.read_bytes(uri).decode("utf-8", errors="replace")
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [e for e in entries if e]
        if not entries:
            raise AnomalyError(uri, "train list is empty")
        by_name: dict[str, list[str]] = {}
        for vid, video in self.videos.items():
            by_name.setdefault(video.name, []).append(vid)
            by_name.setdefault(f"{video.source_split}/{video.name}", []).append(vid)
        chosen: set[str] = set()
        unknown, ambiguous = [], []
        for entry in entries:
            key = entry if entry in by_name else posixpath.splitext(base_name(entry))[0]  # a path: its stem
            if entry in self.videos:
                chosen.add(entry)
            elif len(by_name.get(key, [])) == 1:
                chosen.add(by_name[key][0])
            elif key in by_name:
                ambiguous.append(entry)
            else:
                unknown.append(entry)
        if ambiguous:
            raise AnomalyError(
                uri,
                f"{len(ambiguous)} names match several videos (e.g. {ambiguous[0]!r}); use ids or train/NAME",
            )
        if unknown:
            raise AnomalyError(
                uri, f"{len(unknown)} entries name no video of the data set (e.g. {unknown[0]!r})"
            )
        videos = {
            vid: replace(video, split="train" if vid in chosen else "test")
            for vid, video in self.videos.items()
        }
        return DatasetTruth(videos, fps=self.fps)

    def summary(self) -> str:
        parts = []
        for name in self.names:
            videos = [v for v in self.videos.values() if v.dataset == name]
            counts = {
                (split, label): sum(1 for v in videos if v.split == split and v.label == label)
                for split in ("train", "test")
                for label in (0, 1)
            }
            masks = sum(1 for v in videos if v.mask_uri)
            parts.append(
                f"{name}: train {counts['train', 0]} normal + {counts['train', 1]} anomalous, "
                f"test {counts['test', 0]} normal + {counts['test', 1]} anomalous, {masks} with pixel masks"
            )
        return "; ".join(parts)
