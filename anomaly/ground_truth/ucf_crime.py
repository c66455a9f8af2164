"""Readers for the official UCF-Crime ground-truth files.

Single documented rules, used by every importer and the extractor:
- video id = the file name's stem (``Abuse028_x264``);
- split: ``test`` when the id is listed in the temporal annotation file, else ``train``;
- label: normal (0) when the id starts with ``Normal``, else anomalous (1);
- class: the annotation's class column when listed, else the id's leading
  letters (``RoadAccidents002_x264`` -> ``RoadAccidents``; ``Normal…`` -> ``Normal``);
- intervals: the official numbers are the MATLAB evaluation's 1-based,
  inclusive frame numbers, so ``165 240`` becomes the 0-based ``[164, 240)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources

from anomaly import uris
from anomaly.errors import AnomalyError

BUNDLED_DIR = "data/ucf_crime"


@dataclass(frozen=True)
class VideoAnnotation:
    video_id: str
    anomaly_class: str
    intervals: list[tuple[int, int]] = field(default_factory=list)
    num_frames: int | None = None


def bundled_file(name: str) -> str:
    """Path of an official UCF-Crime file shipped with the package."""
    return str(resources.files("anomaly").joinpath(BUNDLED_DIR, name))


def video_id_of(name: str) -> str:
    base = os.path.basename(name.strip().replace("\\", "/"))
    stem, _ = os.path.splitext(base)
    return stem


def is_normal(video_id: str) -> bool:
    return video_id.startswith("Normal")


def class_of(video_id: str) -> str:
    if is_normal(video_id):
        return "Normal"
    match = re.match(r"[A-Za-z]+", video_id)
    return match.group(0) if match else "Unknown"


def _read_text(uri: str) -> str:
    try:
        return uris.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnomalyError(uri, f"not a text file: {exc}") from exc


def _intervals(numbers: list[int]) -> list[tuple[int, int]]:
    out = []
    for start, end in zip(numbers[0::2], numbers[1::2], strict=False):
        if start >= 0 and end >= 0:
            out.append((max(start - 1, 0), end))
    return out


def _rows(uri: str) -> Iterator[tuple[str, list[str]]]:
    """The fields of each non-blank line of a text file, with its ``URI:LINE`` for error messages."""
    for number, line in enumerate(_read_text(uri).splitlines(), start=1):
        parts = line.split()
        if parts:
            yield f"{uri}:{number}", parts


def read_temporal_annotations(uri: str) -> dict[str, VideoAnnotation]:
    """``Temporal_Anomaly_Annotation.txt``: ``name class s1 e1 s2 e2`` per test video."""
    table: dict[str, VideoAnnotation] = {}
    for where, parts in _rows(uri):
        try:
            numbers = [int(p) for p in parts[2:]]
            if len(parts) < 4 or len(numbers) % 2:
                raise ValueError("expected: name class start end [start end]")
        except ValueError as exc:
            raise AnomalyError(where, f"unparsable annotation line: {exc}") from exc
        video_id = video_id_of(parts[0])
        table[video_id] = VideoAnnotation(video_id, parts[1], _intervals(numbers))
    return table


def read_frame_counts(uri: str) -> dict[str, int]:
    """``*_with_frame_counts.txt``: ``Class/Name.mp4 FRAMES [class s1 e1 s2 e2]``."""
    counts: dict[str, int] = {}
    for where, parts in _rows(uri):
        try:
            counts[video_id_of(parts[0])] = int(parts[1])
        except (IndexError, ValueError) as exc:
            raise AnomalyError(where, "expected 'path frame_count ...'") from exc
    return counts


@dataclass
class GroundTruth:
    """Everything the official files say about a set of videos."""

    temporal: dict[str, VideoAnnotation] = field(default_factory=dict)
    frame_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, annotations: str | None, frame_counts: list[str] | None) -> GroundTruth:
        truth = cls()
        if annotations:
            truth.temporal = read_temporal_annotations(annotations)
        for uri in frame_counts or []:
            truth.frame_counts.update(read_frame_counts(uri))
        return truth

    @classmethod
    def bundled_ucf_crime(cls) -> GroundTruth:
        return cls.load(
            bundled_file("Temporal_Anomaly_Annotation.txt"),
            [
                bundled_file("Train_Annotation_with_frame_counts.txt"),
                bundled_file("Test_Annotation_with_frame_counts.txt"),
            ],
        )

    def describe(self, video_id: str) -> dict:
        """Split, label, class and intervals of one video by the module's rules."""
        listed = self.temporal.get(video_id)
        normal = is_normal(video_id)
        anomaly_class = listed.anomaly_class if listed else class_of(video_id)
        if anomaly_class == "Normal":
            normal = True
        return {
            "split": "test" if listed else "train",
            "label": 0 if normal else 1,
            "anomaly_class": "Normal" if normal else anomaly_class,
            "anomaly_intervals": [] if normal or not listed else [list(iv) for iv in listed.intervals],
            "num_frames": self.frame_counts.get(video_id),
        }
