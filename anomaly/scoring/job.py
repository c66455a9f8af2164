"""What to score with: one settings object (:class:`ScoringJob`) for one video or many, built by one function.

:func:`scoring_job` reads the defaults from the checkpoint (one rule: the clip
length, stride, input size and crops recorded with the model's training store,
else the backbone's own) and applies the caller's overrides by their library
names: any :class:`~anomaly.extraction.ExtractionSettings` field (``backbone``,
``weights``, ``clip_len``, ``batch_size``, ``device``, ``fps`` …), the alarm
rule's (``threshold``, ``min_duration_s``, ``merge_gap_s``), and the job's own
(``window_seconds`` — the scoring window, not extraction's decode window —
``window_clips``, ``annotated_videos``). ``None`` means "not given".

Both entry points take the job: :func:`anomaly.scoring.pipeline.score` (Ray
Data, one video or many) and :func:`anomaly.scoring.single.score_video` (one
video in this process). Both check it with :func:`check_job` and score with
the worker-side slice :meth:`ScoringJob.rules` gives
(:class:`~anomaly.scoring.workers.ScoreRules`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from anomaly.alarms import AlarmSettings
from anomaly.checkpoints import load_scorer, stored_metadata
from anomaly.crops import crop_scores_of
from anomaly.errors import AnomalyError
from anomaly.extraction import ExtractionSettings
from anomaly.extractors import BackboneSpec
from anomaly.scoring.windows import DEFAULT_WINDOW_SECONDS, context_segments
from anomaly.scoring.workers import ScoreRules
from anomaly.store import StoreMetadata

__all__ = ["ScoringJob", "check_feature_dim", "check_job", "check_weights", "expected_weights", "scoring_job"]


@dataclass(frozen=True)
class ScoringJob:
    """The checkpoint, decode/actor settings (extraction's), the scoring window and the alarm rule."""

    checkpoint: str
    extraction: ExtractionSettings
    alarms: AlarmSettings = AlarmSettings()
    window_seconds: float = DEFAULT_WINDOW_SECONDS  # about one training segment (anomaly.scoring.windows)
    window_clips: int | None = None  # the window in clips; overrides window_seconds
    annotated_videos: bool = False  # also write MP4s with the score drawn (anomaly.scoring.pipeline.score)

    def rules(self, spec: BackboneSpec, payload: dict, model) -> ScoreRules:
        """The worker-side slice: clip geometry, window, context, crops and alarm rule."""
        return ScoreRules(
            clip_len=spec.clip_len,
            stride=self.extraction.effective_stride(spec),
            dim=spec.feature_dim,
            window_seconds=self.window_seconds,
            window_clips=self.window_clips,
            context=context_segments(payload, model),
            fps_default=self.extraction.fps,
            alarms=self.alarms,
            crops=self.extraction.crops,
            crop_scores=crop_scores_of(payload),
        )


_JOB_FIELDS = frozenset({"window_seconds", "window_clips", "annotated_videos"})
_ALARM_FIELDS = frozenset(f.name for f in fields(AlarmSettings))
_EXTRACTION_FIELDS = frozenset(f.name for f in fields(ExtractionSettings))


def scoring_job(checkpoint: str, payload: dict | None = None, **overrides) -> ScoringJob:
    """The job for ``checkpoint`` (``RUN_DIR`` or ``model.pt``): its training store's settings, then ``overrides``.

    ``payload``: the loaded checkpoint, when the caller has it. An override that is
    ``None`` is not given; an unknown name is a ``TypeError`` (a bug, as a wrong keyword).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - _JOB_FIELDS - _ALARM_FIELDS - _EXTRACTION_FIELDS)
    if unknown:
        raise TypeError(f"scoring_job() got unknown settings: {', '.join(unknown)}")
    job_values = {key: given.pop(key) for key in _JOB_FIELDS & set(given)}
    alarm_values = {key: given.pop(key) for key in _ALARM_FIELDS & set(given)}
    if payload is None:
        _, payload = load_scorer(checkpoint)
    meta = stored_metadata(payload) or StoreMetadata(backbone="")
    backbone = given.pop("backbone", None) or meta.backbone
    if not backbone or backbone in ("synthetic", "imported"):
        raise AnomalyError("backbone", "the checkpoint does not record an extractor backbone; name one")
    values = {
        # None: the backbone's own (ExtractionSettings), never a number of scoring's own
        "clip_len": meta.clip_len,
        "stride": meta.stride,
        "crop": meta.crop,
        "crops": meta.crops or 1,  # a model trained on ten crops scores ten crops
        **given,
    }
    expected = meta.weights_sha256
    if values.get("weights") in (None, "none") and expected not in (None, "random"):
        raise AnomalyError(
            "weights", f"the model was trained on features of weights sha256 {expected[:12]}…; pass them"
        )
    return ScoringJob(
        checkpoint=checkpoint,
        extraction=ExtractionSettings(backbone=backbone, **values),
        alarms=AlarmSettings(**alarm_values),
        **job_values,
    )


def expected_weights(payload: dict) -> str | None:
    """The weights sha256 (or ``"random"``) recorded with the model's training store."""
    meta = stored_metadata(payload)
    return meta.weights_sha256 if meta else None


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


def check_job(job: ScoringJob, model) -> BackboneSpec:
    """The settings' own checks and the backbone's width against the model's; returns the backbone spec."""
    settings = job.extraction
    spec = settings.validate()
    check_feature_dim(job.checkpoint, settings.backbone, spec.feature_dim, model.feature_dim)
    job.alarms.validate()
    if job.window_clips is not None and job.window_clips < 1:
        raise AnomalyError("window_clips", f"must be >= 1, got {job.window_clips}")
    if not job.window_seconds > 0:
        raise AnomalyError("window_seconds", f"must be > 0 seconds, got {job.window_seconds}")
    return spec
