"""Score one video end to end: decode, extract clip features, pool to 32 segments, score every frame.

The backbone and clip settings default to the ones recorded with the model's
training store, so a video is scored with the features the model learned on.
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
from anomaly.checkpoints import load_scorer, score_bags, stored_metadata
from anomaly.errors import AnomalyError
from anomaly.extractors import ClipFeatureExtractor
from anomaly.plots import timeline_plot
from anomaly.segments import frame_scores, pool_segments
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


@dataclass
class VideoScores:
    video_id: str
    uri: str
    fps: float
    segment_scores: np.ndarray  # (32,)
    frame_scores: np.ndarray  # (num_frames,)

    @property
    def num_frames(self) -> int:
        return len(self.frame_scores)

    def times(self) -> np.ndarray:
        return np.arange(self.num_frames) / self.fps if self.fps else np.arange(self.num_frames, dtype=float)

    def alarms(self, threshold: float) -> list[tuple[int, int]]:
        """[start, end) frame runs whose score is above ``threshold``."""
        above = np.concatenate([[False], self.frame_scores > threshold, [False]])
        edges = np.flatnonzero(np.diff(above.astype(np.int8)))
        return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def settings_from_checkpoint(payload: dict, **overrides) -> ScoringSettings:
    """Backbone and clip settings recorded with the training store, overridden by what the user gave."""
    meta = stored_metadata(payload) or StoreMetadata(backbone="")
    values = {
        "backbone": meta.backbone,
        "weights": None,
        "clip_len": meta.clip_len or 16,
        "stride": meta.stride or 16,
        "crop": meta.crop,
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    if not values["backbone"] or values["backbone"] in ("synthetic", "imported"):
        raise AnomalyError(
            "--backbone", "the checkpoint does not record an extractor backbone; pass --backbone"
        )
    expected = meta.weights_sha256
    if values["weights"] in (None, "none") and expected not in (None, "random"):
        raise AnomalyError(
            "--weights", f"the model was trained on features of weights sha256 {expected[:12]}…; pass them"
        )
    return ScoringSettings(**values, expected_weights=expected)


def _batched(clips: Iterator, size: int) -> Iterator[np.ndarray]:
    batch = []
    for clip in clips:
        batch.append(clip.frames)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def clip_features(uri: str, settings: ScoringSettings) -> tuple[np.ndarray, int, float]:
    """(clips, D) features of one video, plus its frame count and fps.

    The probe behind ``reader.info`` (size, fps) decodes the video once before the clip pass;
    a header-only probe would save that pass.
    """
    extractor = ClipFeatureExtractor(
        settings.backbone,
        settings.weights,
        crop=settings.crop,
        clip_len=settings.clip_len,
        device=settings.device,
    )
    expected = settings.expected_weights
    if expected and extractor.weights_sha256 != expected:
        raise AnomalyError(
            settings.weights or "--weights",
            f"weights sha256 {extractor.weights_sha256[:12]}… differ from the {expected[:12]}… the model was trained on",
        )
    spec = extractor.spec
    reader = open_video(uri)
    size = spec.resized_shape(reader.info.height, reader.info.width)
    feats = []
    clips = reader.iter_clips(clip_len=spec.clip_len, stride=settings.stride, size=size, crop=spec.crop)
    for batch in _batched(clips, settings.batch_size):
        feats.append(extractor({"clip": batch})["features"])
    return np.concatenate(feats), int(reader.frames_decoded or reader.info.num_frames), float(reader.info.fps)


def score_video(uri: str, checkpoint: str, **overrides) -> VideoScores:
    """Per-frame anomaly scores of one video with a trained model (``RUN_DIR`` or ``model.pt``)."""
    model, payload = load_scorer(checkpoint)
    settings = settings_from_checkpoint(payload, **overrides)
    feats, num_frames, fps = clip_features(uri, settings)
    if feats.shape[1] != model.feature_dim:
        raise AnomalyError(
            uri,
            f"{settings.backbone} gives {feats.shape[1]}-d features but the model expects {model.feature_dim}-d",
        )
    segments = score_bags(model, pool_segments(feats)[None])[0]
    return VideoScores(
        video_id=video_id_from_uri(uri),
        uri=uri,
        fps=fps,
        segment_scores=segments,
        frame_scores=frame_scores(segments, num_frames),
    )


def write_outputs(scores: VideoScores, out_dir: str, *, threshold: float = 0.5) -> dict[str, str]:
    """``VIDEO.csv`` (frame, time_s, score) and ``VIDEO_timeline.png`` under ``out_dir``."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["frame", "time_s", "score"])
    for frame, (t, s) in enumerate(zip(scores.times(), scores.frame_scores, strict=True)):
        writer.writerow([frame, f"{t:.4f}", f"{s:.6f}"])
    csv_uri = uris.join(out_dir, f"{scores.video_id}.csv")
    uris.write_bytes_atomic(csv_uri, text.getvalue().encode())
    png_uri = timeline_plot(
        scores.frame_scores,
        [],
        uris.join(out_dir, f"{scores.video_id}_timeline.png"),
        title=f"{scores.video_id}: anomaly score",
        fps=scores.fps or None,
        threshold=threshold,
    )
    return {"csv": csv_uri, "timeline": png_uri}


def write_annotated_video(
    scores: VideoScores, out_uri: str, *, threshold: float = 0.5, max_side: int = 640
) -> str:
    """An MP4 of the video with its score drawn on every frame: a bar, the value, red above threshold."""
    import av
    from PIL import Image, ImageDraw

    reader = open_video(scores.uri)
    info = reader.info
    scale = min(1.0, max_side / max(info.width, info.height))
    height, width = (int(info.height * scale) // 2 * 2, int(info.width * scale) // 2 * 2)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "annotated.mp4")
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=round(scores.fps or 25))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for clip in reader.iter_clips(clip_len=1, stride=1, size=(height, width)):
                frame_no = clip.start_frame
                score = float(scores.frame_scores[min(frame_no, scores.num_frames - 1)])
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
