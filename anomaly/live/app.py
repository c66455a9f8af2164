"""The live service as a Serve application: camera readers -> batched backbone -> causal head -> alarms.

:func:`build_app` returns the application (an ingress deployment bound to the
:class:`~anomaly.live.backbone.Backbone` deployment); ``ray_jobs.live`` runs
it, and so does ``serve run anomaly.live.app:build_app checkpoint=RUN_DIR
out=OUT`` or a Serve config file (``import_path: anomaly.live.app:build_app``
with the same keys under ``args``; see docs/live.md).

The ingress (:class:`LiveService`) holds, per camera, a reader actor
(:mod:`anomaly.live.readers`), a pump task that takes the reader's clips,
awaits their features from the backbone (so clips of all cameras meet in one
``@serve.batch``) and feeds them to the camera's :class:`~anomaly.live.scorer.CameraScorer`.
Everything a camera does is caught inside its pump: a camera can fail, its
reader can die and be restarted by Ray, and the ingress and other cameras go on.

HTTP API (JSON): ``GET /healthz``, ``GET /cameras``, ``POST /cameras``,
``DELETE /cameras/{id}``, ``GET /alarms?since=ISO8601``, ``GET /alarms/stream`` (SSE).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures' annotations
# (``Request``) at run time through Serve's class-based view, which string annotations break (422s).

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from anomaly.alarms import DEFAULT_MERGE_GAP_S, DEFAULT_MIN_DURATION_S, DEFAULT_THRESHOLD, AlarmSettings
from anomaly.errors import AnomalyError
from anomaly.live.backbone import Backbone
from anomaly.live.masking import mask_text, mask_url
from anomaly.scoring.windows import DEFAULT_WINDOW_SECONDS

logger = logging.getLogger(__name__)

CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
READER_NAMESPACE = "anomaly-live"
READER_WAIT_S = 30.0  # a take() that has not answered by then: the camera's reason says why
MAX_ALARMS_KEPT = 10_000  # alarms /alarms answers from memory (all of them are in OUT/alarms)


@dataclass(frozen=True)
class LiveConfig:
    """Everything the application needs (the ``args`` of a Serve config file, as plain JSON values)."""

    checkpoint: str
    out: str
    cameras: dict[str, str] = field(default_factory=dict)  # id -> URL
    backbone: str | None = None
    weights: str | None = None
    clip_len: int | None = None
    stride: int | None = None
    crop: tuple[int, int] | None = None
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    window_clips: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    min_duration_s: float = DEFAULT_MIN_DURATION_S
    merge_gap_s: float = DEFAULT_MERGE_GAP_S
    webhook: str | None = None
    device: str = "auto"
    num_gpus: float = 0.0  # per backbone replica
    backbone_cpus: float = 1.0
    min_replicas: int = 1
    max_replicas: int = 1
    max_batch_size: int = 16
    batch_wait_s: float = 0.05
    reader_cpus: float = 0.25
    stale_after_s: float = 2.0
    fail_after_s: float = 30.0
    rtsp_transport: str | None = None  # "tcp" or "udp"; None: FFmpeg's default (UDP, then TCP)
    fps_default: float = 25.0  # for the window in clips when a camera does not say its rate yet

    @classmethod
    def from_dict(cls, data: dict) -> "LiveConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AnomalyError("live config", f"unknown keys {unknown}; known: {sorted(names)}")
        values = {key: _from_text(key, value, _TYPES[key]) for key, value in data.items()}
        if values.get("crop") is not None:
            crop = values["crop"]
            values["crop"] = tuple(
                int(v) for v in (crop.replace("x", ",").split(",") if isinstance(crop, str) else crop)
            )
        cameras = values.get("cameras")
        if isinstance(cameras, str):  # `serve run … cameras=ID=URL` or a JSON list
            cameras = json.loads(cameras) if cameras.lstrip().startswith(("[", "{")) else [cameras]
        if isinstance(cameras, list):  # ["ID=URL", …] as on the command line
            cameras = parse_cameras(cameras)
        values["cameras"] = cameras or {}
        return cls(**values)

    def alarm_settings(self) -> AlarmSettings:
        return AlarmSettings(self.threshold, self.min_duration_s, self.merge_gap_s).validate()

    def scoring_overrides(self) -> dict:
        """:func:`~anomaly.scoring.job.scoring_job`'s overrides, by their shared names (:data:`SCORING_FIELDS`)."""
        return {name: getattr(self, name) for name in SCORING_FIELDS}


_TYPES = {f.name: f.type for f in dataclasses.fields(LiveConfig)}
# The LiveConfig fields batch scoring's job takes as they are; the alarm rule is not among them: the
# service applies its own (LiveConfig.alarm_settings), as the camera's alarms close.
SCORING_FIELDS = (
    "backbone",
    "weights",
    "clip_len",
    "stride",
    "crop",
    "device",
    "window_seconds",
    "window_clips",
)


def _from_text(key: str, value, kind) -> object:
    """``serve run app key=value`` passes strings: numbers and flags by the field's type."""
    if not isinstance(value, str):
        return value
    names = str(kind)
    try:
        if value.lower() in ("none", "null", "") and "None" in names:
            return None
        if "float" in names:
            return float(value)
        if "int" in names and "tuple" not in names:
            return int(value)
    except ValueError:
        raise AnomalyError(key, f"expected a number, got {value!r}") from None
    return value


def parse_cameras(items: list[str]) -> dict[str, str]:
    cameras: dict[str, str] = {}
    for item in items:
        camera_id, sep, url = str(item).partition("=")
        if not sep or not url:
            raise AnomalyError("cameras", f"expected ID=URL, got {mask_url(str(item))!r}")
        check_camera(camera_id, url)
        if camera_id in cameras:
            raise AnomalyError("cameras", f"camera id {camera_id!r} given twice")
        cameras[camera_id] = url
    return cameras


def check_camera(camera_id: object, url: object) -> None:
    if not isinstance(camera_id, str) or not CAMERA_ID.match(camera_id):
        raise AnomalyError(
            "id", f"must be 1-64 letters, digits, '_', '.', '-' (first a letter or digit), got {camera_id!r}"
        )
    if not isinstance(url, str) or not url.strip() or any(c in url for c in "\r\n\0"):
        raise AnomalyError("url", "must be a non-empty string (rtsp://, http(s)://, udp://, a file or URI)")


@dataclass(frozen=True)
class LiveScoring:
    """Batch scoring's one job (:func:`anomaly.scoring.job.scoring_job`), as the live service reads it."""

    job: Any  # anomaly.scoring.job.ScoringJob
    rules: Any  # its worker-side slice, anomaly.scoring.workers.ScoreRules
    expected_weights: str | None

    @property
    def backbone(self) -> str:
        return self.job.extraction.backbone

    @property
    def weights(self) -> str | None:
        return self.job.extraction.weights

    @property
    def stride(self) -> int:
        return self.rules.stride

    @property
    def window_clips(self) -> int | None:
        return self.job.window_clips

    @property
    def window_seconds(self) -> float:
        return self.job.window_seconds

    def window(self, fps: float) -> int:
        return self.rules.window(fps)


def resolve(config: LiveConfig):
    """(head, checkpoint payload, scoring settings, backbone spec): one-line errors before anything starts."""
    from anomaly.checkpoints import load_scorer
    from anomaly.scoring.job import check_job, expected_weights, scoring_job

    model, payload = load_scorer(config.checkpoint)
    job = scoring_job(config.checkpoint, payload, **config.scoring_overrides())
    spec = check_job(job, model)
    config.alarm_settings()
    return model, payload, LiveScoring(job, job.rules(spec, payload, model), expected_weights(payload)), spec


@dataclass
class _Camera:
    id: str
    url: str  # clear: only the reader and this object hold it
    actor: object
    scorer: object
    task: asyncio.Task | None = None
    status: dict = field(default_factory=dict)
    note: str = ""  # the ingress's own reason (reader restarting), else ""
    connect: int = 0
    last_scored_end: float | None = None
    lag_s: float | None = None
    scored: int = 0
    stopped: bool = False


def _json_error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status)


app = FastAPI(title="anomaly live", docs_url=None, redoc_url=None)


@serve.deployment(name="live", max_ongoing_requests=100, logging_config={"enable_access_log": False})
@serve.ingress(app)
class LiveService:
    def __init__(self, backbone, config: dict) -> None:
        import torch

        from anomaly.live.readers import ReaderConfig, reader_actor
        from anomaly.live.sinks import EventHub, PartWriter, Webhook

        torch.set_num_threads(1)  # the head is a small MLP per clip; the backbone replicas own the cores
        self.config = LiveConfig.from_dict(config)
        self.model, payload, self.settings, self.spec = resolve(self.config)
        from anomaly.scoring.windows import context_segments

        self.context = context_segments(payload, self.model)
        self.alarm_settings = self.config.alarm_settings()
        self.backbone = backbone
        self.reader_config = ReaderConfig(
            clip_len=self.spec.clip_len,
            stride=self.settings.stride,
            resize=self.spec.resize,
            crop=self.spec.crop,
            stale_after_s=self.config.stale_after_s,
            fail_after_s=self.config.fail_after_s,
            rtsp_transport=self.config.rtsp_transport,
        )
        self.reader_cls = reader_actor(self.config.reader_cpus)
        self.parts = PartWriter(self.config.out)
        self.webhook = Webhook(self.config.webhook) if self.config.webhook else None
        self.hub = EventHub()
        self.cameras: dict[str, _Camera] = {}
        self.alarms: deque = deque(maxlen=MAX_ALARMS_KEPT)
        self.closed = False
        for camera_id, url in self.config.cameras.items():
            self._add(camera_id, url)
        logger.info(
            "live: %s at %dx%d, %d frames per clip every %d, window %s clips, %d cameras, alarms in %s",
            self.settings.backbone,
            *self.spec.crop,
            self.spec.clip_len,
            self.settings.stride,
            self.settings.window_clips or f"{self.settings.window_seconds} s of",
            len(self.cameras),
            self.config.out,
        )

    # ------------------------------------------------------------------------------ cameras

    def _add(self, camera_id: str, url: str) -> _Camera:
        from anomaly.live.scorer import CameraScorer

        window = self.settings.window(self.config.fps_default)  # re-derived once the camera's rate is known
        scorer = CameraScorer(
            camera_id, self.model, window, context=self.context, settings=self.alarm_settings
        )
        actor = self._reader(camera_id, url)
        camera = _Camera(camera_id, url, actor, scorer)
        camera.status = {"state": "connecting", "reason": "", "fps": 0.0, "last_frame_time": None}
        self.cameras[camera_id] = camera
        camera.task = asyncio.get_event_loop().create_task(self._pump(camera))
        logger.info("camera %s added: %s", camera_id, mask_url(url))
        return camera

    def _reader(self, camera_id: str, url: str):
        """A reader actor, named ``live-reader-ID-…`` in namespace ``anomaly-live`` (for operators and tests)."""
        name = f"live-reader-{camera_id}-{uuid.uuid4().hex[:8]}"
        return self.reader_cls.options(name=name, namespace=READER_NAMESPACE).remote(
            camera_id, url, self.reader_config
        )

    async def _pump(self, camera: _Camera) -> None:
        """Clips of one camera -> features -> scores -> alarms, until it is removed. Never raises."""
        import ray

        failures = 0
        while not camera.stopped:
            try:
                try:
                    taken = await asyncio.wait_for(camera.actor.take.remote(16, 1.0), timeout=READER_WAIT_S)
                except asyncio.TimeoutError:  # not scheduled (no CPU left for it) or restarting
                    camera.note = f"reader not running yet (it asks for {self.config.reader_cpus} CPU)"
                    continue
                camera.status, camera.note, failures = taken["status"], "", 0
                clips = taken["clips"]
                if not clips:  # a stream that stopped: its open alarm closes after the merge gap
                    for kind, alarm in camera.scorer.expire(time.time()):
                        self._publish(kind, alarm)
                    continue
                features = await asyncio.gather(*[self.backbone.features.remote(c["frames"]) for c in clips])
                for clip, feats in zip(clips, features, strict=True):
                    self._score(camera, clip, feats)
            except asyncio.CancelledError:
                raise
            except ray.exceptions.ActorDiedError as exc:
                if camera.stopped:
                    return
                failures += 1
                camera.note = f"reader lost ({type(exc).__name__}); starting a new one"
                logger.warning("camera %s: %s", camera.id, camera.note)
                camera.actor = self._reader(camera.id, camera.url)
                await asyncio.sleep(min(10.0, 0.5 * 2**failures))
            except Exception as exc:  # noqa: BLE001 - one camera's trouble never leaves its pump
                if camera.stopped:
                    return
                failures += 1
                text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                camera.note = mask_text(text, camera.url)[:300]
                logger.warning("camera %s: %s (retrying)", camera.id, camera.note)
                await asyncio.sleep(min(10.0, 0.5 * 2**failures))

    def _score(self, camera: _Camera, clip: dict, feats) -> None:
        if clip["connect"] != camera.connect:  # a new connection: no window across the gap
            camera.connect = clip["connect"]
            fps = clip.get("fps") or camera.status.get("fps") or 0.0
            camera.scorer.reset_window(self.settings.window(fps) if fps else None)
        period = (clip["end_time"] - clip["start_time"]) / max(1, self.spec.clip_len)
        next_start = clip["start_time"] + self.settings.stride * period
        score, events = camera.scorer.add(feats, clip["start_time"], clip["end_time"], next_start)
        camera.scored += 1
        camera.last_scored_end = clip["end_time"]
        camera.lag_s = time.time() - clip["end_time"]
        for kind, alarm in events:
            self._publish(kind, alarm)

    def _publish(self, kind: str, alarm) -> None:
        from anomaly.live.sinks import alarm_json

        if kind == "updated":
            return  # the open alarm's record (in self.alarms) follows it; events are opened/closed only
        if kind == "opened":
            self.alarms.append(alarm)
        if kind == "closed":
            try:
                self.parts.write(alarm)
            except Exception:  # noqa: BLE001 - a storage hiccup must not stop scoring; logged with its trace
                logger.exception("camera %s: could not write the alarm part", alarm.camera)
        event = {"event": kind, **alarm_json(alarm)}
        if kind == "opened":
            event["end"] = None
        logger.info("alarm %s: %s", kind, json.dumps(event))
        self.hub.publish(event)
        if self.webhook is not None:
            self.webhook.post(event)

    async def _remove(self, camera: _Camera) -> None:
        import ray

        camera.stopped = True
        if camera.task is not None:
            camera.task.cancel()
        for kind, alarm in camera.scorer.close():
            self._publish(kind, alarm)
        try:
            await asyncio.wait_for(camera.actor.stop.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a reader that cannot stop cleanly is killed below anyway
            logger.warning("camera %s: reader did not stop cleanly; killing it", camera.id)
        ray.kill(camera.actor, no_restart=True)

    def _row(self, camera: _Camera) -> dict:
        status = camera.status
        state, reason = status.get("state", "connecting"), status.get("reason", "")
        if camera.note:
            state, reason = ("connecting", camera.note) if state == "live" else (state, camera.note)
        lag = camera.lag_s
        if camera.last_scored_end is not None and state == "live":
            lag = max(lag or 0.0, time.time() - camera.last_scored_end - 2 * self._clip_seconds(status))
        return {
            "id": camera.id,
            "url": mask_url(camera.url),
            "state": state,
            "reason": reason,
            "fps": status.get("fps", 0.0),
            "lag_s": None if lag is None else round(lag, 3),
            "last_frame_time": status.get("last_frame_time"),
            "clips_scored": camera.scored,
            "clips_dropped": status.get("dropped_clips", 0),
            "last_score": None if camera.scorer.last_score is None else round(camera.scorer.last_score, 6),
        }

    def _clip_seconds(self, status: dict) -> float:
        fps = status.get("fps") or self.config.fps_default
        return self.settings.stride / fps

    # ------------------------------------------------------------------------------ routes

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "cameras": len(self.cameras)}

    @app.get("/cameras")
    async def list_cameras(self) -> list:
        return [self._row(c) for c in self.cameras.values()]

    @app.post("/cameras")
    async def add_camera(self, request: Request):
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _json_error(400, f"body is not JSON: {exc}")
        if not isinstance(body, dict) or set(body) - {"id", "url"} or not {"id", "url"} <= set(body):
            return _json_error(400, 'expected a JSON object {"id": "...", "url": "..."}')
        try:
            check_camera(body["id"], body["url"])
        except AnomalyError as exc:
            return _json_error(400, str(exc))
        if body["id"] in self.cameras:
            return _json_error(409, f"camera {body['id']!r} exists; DELETE it first")
        camera = self._add(body["id"], body["url"])
        return JSONResponse(self._row(camera), status_code=201)

    @app.delete("/cameras/{camera_id}")
    async def delete_camera(self, camera_id: str):
        camera = self.cameras.pop(camera_id, None)
        if camera is None:
            return _json_error(404, f"no camera {camera_id!r}")
        await self._remove(camera)
        logger.info("camera %s removed", camera_id)
        return Response(status_code=204)

    @app.get("/alarms")
    async def list_alarms(self, since: str | None = None):
        from anomaly.live.sinks import alarm_json

        floor = float("-inf")
        if since:
            try:
                moment = datetime.fromisoformat(since.replace("Z", "+00:00").replace(" ", "+"))
            except ValueError:
                return _json_error(400, f"since: not an ISO 8601 time: {since!r}")
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            floor = moment.timestamp()
        rows = []
        for alarm in self.alarms:
            if alarm.start >= floor or alarm.end is None or alarm.end >= floor:
                rows.append(alarm_json(alarm))
        return rows

    @app.get("/alarms/stream")
    async def alarm_stream(self, request: Request):
        from anomaly.live.sinks import sse

        queue = self.hub.subscribe()

        async def events():
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=10.0)
                        yield sse(event)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                    if await request.is_disconnected():
                        return
            finally:
                self.hub.unsubscribe(queue)

        return StreamingResponse(events(), media_type="text/event-stream")

    # ------------------------------------------------------------------------------ lifecycle

    async def close(self) -> int:
        """Stop every camera, close open alarms and write them: complete alarm files (Ctrl-C, shutdown)."""
        if self.closed:
            return 0
        self.closed = True
        cameras = list(self.cameras.values())
        self.cameras.clear()
        for camera in cameras:
            await self._remove(camera)
        if self.webhook is not None:
            self.webhook.close()
        return len(cameras)

    def __del__(self) -> None:  # Serve's graceful shutdown: the alarms still open are closed and written
        if getattr(self, "closed", True):
            return
        self.closed = True
        for camera in list(getattr(self, "cameras", {}).values()):
            camera.stopped = True
            for kind, alarm in camera.scorer.close():
                try:
                    self._publish(kind, alarm)
                except Exception:  # noqa: BLE001 - shutting down: write what can be written
                    logger.exception("camera %s: alarm not written at shutdown", camera.id)


def build_app(args: dict):
    """The Serve application (``serve run anomaly.live.app:build_app checkpoint=… out=…``)."""
    config = LiveConfig.from_dict(args)
    _, _, settings, spec = resolve(config)  # one-line errors here, not in a replica's traceback
    autoscaling = None
    if config.max_replicas > config.min_replicas:
        autoscaling = {
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": max(2, config.max_batch_size),
        }
    backbone = Backbone.options(
        ray_actor_options={"num_cpus": config.backbone_cpus, "num_gpus": config.num_gpus},
        **({"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": config.min_replicas}),
        max_ongoing_requests=max(64, 4 * config.max_batch_size),
    ).bind(
        settings.backbone,
        settings.weights,
        crop=spec.crop,
        clip_len=spec.clip_len,
        device="cuda" if config.num_gpus > 0 and config.device == "auto" else config.device,
        expected_weights=settings.expected_weights,
        max_batch_size=config.max_batch_size,
        batch_wait_timeout_s=config.batch_wait_s,
        torch_threads=max(1, int(config.backbone_cpus)),
    )
    plain = dataclasses.asdict(config)
    plain["crop"] = list(config.crop) if config.crop else None
    return LiveService.options(ray_actor_options={"num_cpus": 0}).bind(backbone, plain)
