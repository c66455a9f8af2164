"""One video in this process (no Ray): a thin convenience over the pipeline's settings and rule; its CSV, PNG and MP4.

:func:`score_video` takes the same :class:`~anomaly.scoring.job.ScoringJob` as
the one library entry point, :func:`anomaly.scoring.pipeline.score` (built by
:func:`~anomaly.scoring.job.scoring_job`: the training store's clip settings,
else the backbone's), and runs the pipeline's stages in this process: the
decode stage (:func:`anomaly.extraction.decode.decode_video`), the model
actors' extractor construction, and the scoring task's rule
(:func:`anomaly.scoring.workers.score_range` with :meth:`ScoringJob.rules`),
so it gives the pipeline's clip scores. :func:`write_outputs` and
:func:`write_annotated_video` write a single video's CSV, PNG and MP4 for both.
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
from anomaly.checkpoints import load_scorer
from anomaly.errors import AnomalyError
from anomaly.extraction import ExtractionSettings
from anomaly.extraction.decode import decode_video
from anomaly.extraction.pipeline import sampling_of
from anomaly.extraction.stream import extractor_kwargs
from anomaly.extractors import ClipFeatureExtractor
from anomaly.scoring.job import ScoringJob, check_job, check_weights, expected_weights, scoring_job
from anomaly.scoring.windows import clip_frame_scores, clip_times
from anomaly.scoring.workers import score_range
from anomaly.video import open_video, video_id_from_uri

logger = logging.getLogger(__name__)


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


def _batched(clips: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def clip_features(
    uri: str, settings: ExtractionSettings, *, expected_weights: str | None = None
) -> tuple[np.ndarray, int, float]:
    """(clips, D) features of one video (``(clips, crops, D)`` with ten crops), its frame count and fps.

    The pipeline's decode stage and model construction, in this process: the same clips, crops and
    features as the model actors give. ``expected_weights``: the sha256 the model was trained on.
    """
    spec = settings.validate()
    extractor = ClipFeatureExtractor(settings.backbone, settings.weights, **extractor_kwargs(settings, spec))
    check_weights(settings.weights or "weights", extractor.weights_sha256, expected_weights)
    ends: list[dict] = []

    def clips() -> Iterator[np.ndarray]:
        row = {"video_id": video_id_from_uri(uri), "uri": uri}
        for out in decode_video(row, sampling=sampling_of(settings, spec)):
            if out["kind"] == "end":
                ends.append(out)
            elif out["cell"] == -1:
                yield out["clip"]

    feats = [
        extractor({"clip": batch})["features"] for batch in _batched(clips(), settings.effective_batch_size())
    ]
    error = next((end["error"] for end in ends if end["error"]), "")
    if error or not feats:
        raise AnomalyError(uri, error or "no clips: the video has no decodable frames")
    feats = np.concatenate(feats)
    num_frames = max(int(end["num_frames"]) for end in ends)
    if num_frames <= 0:  # no end of video seen: the frames the clips cover
        num_frames = (len(feats) - 1) * settings.effective_stride(spec) + spec.clip_len
    return feats, num_frames, max(float(end["fps"]) for end in ends)


def score_video(uri: str, job: ScoringJob | str, **overrides) -> VideoScores:
    """Per-clip anomaly scores of one video, in this process; equal to :func:`anomaly.scoring.pipeline.score`'s.

    ``job``: the settings (:func:`~anomaly.scoring.job.scoring_job`), or a trained model
    (``RUN_DIR`` or ``model.pt``) with ``overrides`` for :func:`scoring_job`
    (``device="cpu"``, ``window_clips=1`` …).
    """
    if isinstance(job, ScoringJob):
        if overrides:
            raise TypeError("score_video() takes overrides with a checkpoint, not with a ScoringJob")
        model, payload = load_scorer(job.checkpoint)
    else:
        model, payload = load_scorer(job)
        job = scoring_job(job, payload, **overrides)
    spec = check_job(job, model)
    rules = job.rules(spec, payload, model)
    feats, num_frames, fps = clip_features(uri, job.extraction, expected_weights=expected_weights(payload))
    fps = fps if np.isfinite(fps) and fps > 0 else (rules.fps_default or 0.0)
    n = len(feats)
    scores = score_range(model, feats, rules, lo=0, n=n, window=rules.window(fps), start=0, end=n)
    return VideoScores(
        video_id=video_id_from_uri(uri),
        uri=uri,
        fps=fps,
        num_frames=num_frames,
        stride=rules.stride,
        clip_len=rules.clip_len,
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
