"""One video in this process (no Ray): decode, clip features, clip-window scores; its CSV, PNG and MP4.

The backbone and clip settings default to the ones recorded with the model's
training store, so a video is scored with the features the model learned on.
The distributed job (:mod:`anomaly.scoring.pipeline`) scores with the same
rule (:mod:`anomaly.scoring.windows`) and writes a single video's CSV and PNG
with :func:`write_outputs` too.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from anomaly import uris
from anomaly.alarms import DEFAULT_THRESHOLD, Alarm, AlarmSettings, find_alarms
from anomaly.checkpoints import load_scorer, stored_metadata
from anomaly.crops import crop_scores_of, score_crops, ten_crop
from anomaly.errors import AnomalyError
from anomaly.extractors import ClipFeatureExtractor
from anomaly.scoring.windows import (
    DEFAULT_WINDOW_SECONDS,
    clip_frame_scores,
    clip_times,
    context_segments,
    score_clips,
    window_clips,
)
from anomaly.store import StoreMetadata
from anomaly.video import open_video, video_id_from_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringSettings:
    backbone: str
    weights: str | None
    clip_len: int = 16
    stride: int = 16
    crop: tuple[int, int] | None = None
    batch_size: int = 8
    device: str = "auto"
    expected_weights: str | None = None  # sha256 (or "random") recorded with the training store
    window_seconds: float = DEFAULT_WINDOW_SECONDS  # about one training segment (anomaly.scoring.windows)
    window_clips: int | None = None  # overrides window_seconds
    crops: int = 1  # 10: ten crops per clip, as the training store (anomaly.crops)
    crop_scores: bool = True  # average the crops' scores (crops: bags), else score their mean

    def window(self, fps: float) -> int:
        """Clips per scoring window for a video at ``fps``."""
        if self.window_clips:
            return int(self.window_clips)
        return window_clips(self.window_seconds, fps, self.stride)


@dataclass
class VideoScores:
    """The clip scores of one video and what they cover."""

    video_id: str
    uri: str
    fps: float
    num_frames: int
    stride: int
    clip_len: int
    clip_scores: np.ndarray  # (clips,)

    @property
    def frame_scores(self) -> np.ndarray:
        return clip_frame_scores(self.clip_scores, self.num_frames, self.stride)

    def times(self) -> np.ndarray:
        """Seconds of every frame (frame numbers when the rate is unknown)."""
        return np.arange(self.num_frames) / self.fps if self.fps else np.arange(self.num_frames, dtype=float)

    def clip_times(self) -> dict[str, np.ndarray]:
        return clip_times(len(self.clip_scores), self.num_frames, self.clip_len, self.stride, self.fps)

    def alarms(self, settings: AlarmSettings | None = None) -> list[Alarm]:
        times = self.clip_times()
        return find_alarms(
            self.video_id, times["start_s"], times["end_s"], self.clip_scores, settings or AlarmSettings()
        )


def settings_from_checkpoint(payload: dict, **overrides) -> ScoringSettings:
    """Backbone and clip settings recorded with the training store, overridden by what the user gave."""
    meta = stored_metadata(payload) or StoreMetadata(backbone="")
    values = {
        "backbone": meta.backbone,
        "weights": None,
        "clip_len": meta.clip_len or 16,
        "stride": meta.stride or 16,
        "crop": meta.crop,
        "crops": meta.crops or 1,
        "crop_scores": crop_scores_of(payload),
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    if not values["backbone"] or values["backbone"] in ("synthetic", "imported"):
        raise AnomalyError("backbone", "the checkpoint does not record an extractor backbone; name one")
    expected = meta.weights_sha256
    if values["weights"] in (None, "none") and expected not in (None, "random"):
        raise AnomalyError(
            "weights", f"the model was trained on features of weights sha256 {expected[:12]}…; pass them"
        )
    return ScoringSettings(**values, expected_weights=expected)


def check_feature_dim(where: str, backbone: str, feature_dim: int, model_dim: int) -> None:
    """A model trained on one backbone's features refuses another's (one line, before any work)."""
    if feature_dim != model_dim:
        raise AnomalyError(
            where, f"{backbone} gives {feature_dim}-d features but the model expects {model_dim}-d"
        )


def check_weights(where: str, actual: str, expected: str | None) -> None:
    if expected and actual != expected:
        raise AnomalyError(
            where, f"weights sha256 {actual[:12]}… differ from the {expected[:12]}… the model was trained on"
        )


def _batched(clips: Iterator, size: int, crops: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Clips stacked ``size`` at a time; ``crops``: cut ten ``(h, w)`` crops from each (whole) clip."""
    batch = []
    for clip in clips:
        batch.append(clip.frames if crops is None else ten_crop(clip.frames, crops))
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def clip_features(uri: str, settings: ScoringSettings) -> tuple[np.ndarray, int, float]:
    """(clips, D) features of one video, plus its frame count and fps.

    The probe behind ``reader.info`` (size, fps) decodes the video once before the clip pass.
    """
    extractor = ClipFeatureExtractor(
        settings.backbone,
        settings.weights,
        crop=settings.crop,
        clip_len=settings.clip_len,
        device=settings.device,
        crops=settings.crops,
    )
    check_weights(settings.weights or "weights", extractor.weights_sha256, settings.expected_weights)
    spec = extractor.spec
    reader = open_video(uri)
    size = spec.resized_shape(reader.info.height, reader.info.width)
    feats = []
    ten = settings.crops > 1
    crop = None if ten else spec.crop
    clips = reader.iter_clips(clip_len=spec.clip_len, stride=settings.stride, size=size, crop=crop)
    for batch in _batched(clips, settings.batch_size, spec.crop if ten else None):
        feats.append(extractor({"clip": batch})["features"])
    return np.concatenate(feats), int(reader.frames_decoded or reader.info.num_frames), float(reader.info.fps)


def score_video(uri: str, checkpoint: str, **overrides) -> VideoScores:
    """Per-clip anomaly scores of one video with a trained model (``RUN_DIR`` or ``model.pt``)."""
    model, payload = load_scorer(checkpoint)
    settings = settings_from_checkpoint(payload, **overrides)
    feats, num_frames, fps = clip_features(uri, settings)
    check_feature_dim(uri, settings.backbone, feats.shape[-1], model.feature_dim)
    window, context = settings.window(fps), context_segments(payload, model)
    scores = score_crops(
        lambda f: score_clips(model, f, window, context=context), feats, crop_scores=settings.crop_scores
    )
    return VideoScores(
        video_id=video_id_from_uri(uri),
        uri=uri,
        fps=fps,
        num_frames=num_frames,
        stride=settings.stride,
        clip_len=settings.clip_len,
        clip_scores=scores,
    )


def write_outputs(
    scores: VideoScores, out_dir: str, *, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, str]:
    """``VIDEO.csv`` (frame, time_s, score) and ``VIDEO_timeline.png`` under ``out_dir``."""
    from anomaly.scoring.plots import clip_timeline_plot

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["frame", "time_s", "score"])
    for frame, (t, s) in enumerate(zip(scores.times(), scores.frame_scores, strict=True)):
        writer.writerow([frame, f"{t:.4f}", f"{s:.6f}"])
    csv_uri = uris.join(out_dir, f"{scores.video_id}.csv")
    uris.write_bytes_atomic(csv_uri, text.getvalue().encode())
    times = scores.clip_times()
    alarms = scores.alarms(AlarmSettings(threshold=threshold))
    png_uri = clip_timeline_plot(
        times["start_s"],
        times["end_s"],
        scores.clip_scores,
        [(a.start_s, a.end_s) for a in alarms],
        uris.join(out_dir, f"{scores.video_id}_timeline.png"),
        title=f"{scores.video_id}: anomaly score per clip",
        threshold=threshold,
    )
    return {"csv": csv_uri, "timeline": png_uri}


def write_annotated_video(
    scores: VideoScores, out_uri: str, *, threshold: float = DEFAULT_THRESHOLD, max_side: int = 640
) -> str:
    """An MP4 of the video with its score drawn on every frame: a bar, the value, red above threshold."""
    import av
    from PIL import Image, ImageDraw

    reader = open_video(scores.uri)
    info = reader.info
    frame_scores = scores.frame_scores
    scale = min(1.0, max_side / max(info.width, info.height))
    height, width = (int(info.height * scale) // 2 * 2, int(info.width * scale) // 2 * 2)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "annotated.mp4")
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=round(scores.fps or 25))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for clip in reader.iter_clips(clip_len=1, stride=1, size=(height, width)):
                frame_no = clip.start_frame
                score = float(frame_scores[min(frame_no, len(frame_scores) - 1)])
                image = Image.fromarray(np.ascontiguousarray(clip.frames[0]))
                draw = ImageDraw.Draw(image)
                color = (220, 40, 40) if score > threshold else (40, 180, 60)
                draw.rectangle([0, height - 10, int(width * score), height], fill=color)
                draw.text((6, 6), f"anomaly {score:.2f}", fill=color)
                for packet in stream.encode(av.VideoFrame.from_image(image)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with open(path, "rb") as handle:
            uris.write_bytes_atomic(out_uri, handle.read())
    return out_uri
