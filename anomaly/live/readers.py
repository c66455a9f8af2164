"""One camera reader: open a stream with PyAV, cut it into clips as frames arrive, reconnect when it drops.

Torch-free (PyAV and numpy only), so a reader costs a decoder, not a model. The
same class runs in-process (tests) or as a Ray actor (:func:`reader_actor`; the
ingress makes one per camera, restarted by Ray if its process or node is lost).

Clips follow batch scoring's rule exactly (:func:`anomaly.video.clip_starts`:
``clip_len`` consecutive frames every ``stride`` frames, counted from the first
frame of a connection) and the same preprocessing (PyAV's swscale resize to the
backbone's ``resize`` rule, then the centre ``crop``), so a recording played as
a camera gives the clips ``ray_jobs.score`` would cut from it.

States (``status()["state"]``):

- ``connecting``: opening the stream (first attempt, or reconnecting after a
  failure before any frame came);
- ``live``: frames arrive;
- ``stale``: it was live, but no frame came for ``stale_after_s`` (or the
  stream ended or dropped and the reader is reconnecting, with backoff);
- ``failed``: it cannot be opened or decoded (unreachable, refused, not a
  video, corrupt), or it has been stale for ``fail_after_s``. The reader keeps
  retrying with backoff (at most ``backoff_max_s`` apart), so a camera that
  comes back becomes ``live`` again.

``reason`` is one line, with credentials masked (:mod:`anomaly.live.masking`).
A local file or fsspec URI (no network scheme) is played at its own frame rate,
like a camera (for demos and tests); at its end it is reopened after the backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import av
import numpy as np

from anomaly.errors import AnomalyError, first_line
from anomaly.live.masking import mask_text, mask_url
from anomaly.video.pyav import _Converter, _rotation_of
from anomaly.video.reader import center_crop, resized_shape

logger = logging.getLogger(__name__)

# Schemes FFmpeg reads as live network streams (no pacing: the stream itself is real time).
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp", "mms")
STATES = ("connecting", "live", "stale", "failed")
MAX_BAD_PACKETS = 100  # consecutive undecodable packets before a stream counts as corrupt


def is_network_stream(url: str) -> bool:
    return "://" in url and url.split("://", 1)[0].lower() in STREAM_SCHEMES


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat() if t else None


@dataclass(frozen=True)
class ReaderConfig:
    """Clip geometry (the backbone's) and the reader's timing rules."""

    clip_len: int
    stride: int
    resize: tuple[int, ...]  # the backbone's resize rule: (h, w) or (short_side,)
    crop: tuple[int, int]
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    stale_after_s: float = 2.0
    fail_after_s: float = 30.0
    backoff_s: float = 0.5  # first retry delay, doubled per failed attempt
    backoff_max_s: float = 8.0
    max_clips: int = 64  # clips held for the ingress; older ones are dropped (and counted) beyond this
    realtime: bool | None = None  # pace at the stream's frame rate; None: files yes, network streams no
    rtsp_transport: str | None = (
        None  # "tcp" or "udp"; None: FFmpeg's default (UDP, then TCP if nothing comes)
    )


@dataclass
class _Status:
    state: str = "connecting"
    reason: str = ""
    fps: float = 0.0
    last_frame_time: float | None = None
    frames: int = 0
    clips: int = 0
    dropped_clips: int = 0
    connects: int = 0
    live_since: float | None = None
    stale_since: float | None = None
    arrivals: deque = field(default_factory=lambda: deque(maxlen=50))


class CameraReader:
    """Reads one camera on a background thread; :meth:`take` hands its clips over, :meth:`status` its state."""

    def __init__(self, camera_id: str, url: str, config: ReaderConfig) -> None:
        self.camera_id, self._url, self.config = camera_id, url, config
        self.url = mask_url(url)
        self._status = _Status()
        self._clips: deque[dict] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._clip_index = 0
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera_id}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------- public

    def take(self, max_clips: int = 16, timeout_s: float = 1.0) -> dict:
        """``{"clips": [...], "status": {...}}``: up to ``max_clips`` clips, waiting up to ``timeout_s`` for one."""
        with self._cond:
            if not self._clips:
                self._cond.wait(timeout_s)
            clips = [self._clips.popleft() for _ in range(min(max_clips, len(self._clips)))]
        return {"clips": clips, "status": self.status()}

    def status(self) -> dict:
        now = time.time()
        with self._cond:
            s = self._status
            state, reason = s.state, s.reason
            if state == "live" and s.last_frame_time and now - s.last_frame_time > self.config.stale_after_s:
                state, reason = "stale", f"no frame for {now - s.last_frame_time:.1f} s"
            return {
                "id": self.camera_id,
                "url": self.url,
                "state": state,
                "reason": reason,
                "fps": round(s.fps, 3),
                "last_frame_time": iso(s.last_frame_time),
                "last_frame_ts": s.last_frame_time,
                "frames": s.frames,
                "clips": s.clips,
                "dropped_clips": s.dropped_clips,
                "connects": s.connects,
                "buffered_clips": len(self._clips),
            }

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading and release the stream (the decode loop notices within a read timeout)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout_s)

    # ----------------------------------------------------------------------------- internals

    def _set(self, state: str, reason: str = "") -> None:
        with self._cond:
            if state != self._status.state or reason != self._status.reason:
                logger.info("camera %s: %s %s", self.camera_id, state, reason)
            if state == "stale" and self._status.state != "stale":
                self._status.stale_since = time.time()
            self._status.state, self._status.reason = state, reason

    def _run(self) -> None:
        delay = self.config.backoff_s
        while not self._stop.is_set():
            got_frames = False
            try:
                got_frames = self._session()
                reason = "stream ended"
            except AnomalyError as exc:
                reason = exc.what
            except Exception as exc:  # noqa: BLE001 - a camera's failure is its state, never a crash
                logger.exception("camera %s: reader error", self.camera_id)
                reason = f"{type(exc).__name__}: {first_line(exc)}"
            if self._stop.is_set():
                break
            reason = mask_text(reason, self._url)
            if got_frames:
                delay = self.config.backoff_s
            with self._cond:
                was_live = self._status.live_since is not None
                stale_since = self._status.stale_since
            if got_frames or (was_live and self._status.state in ("live", "stale")):
                if stale_since and time.time() - stale_since > self.config.fail_after_s:
                    self._set("failed", f"no frames for {time.time() - stale_since:.0f} s: {reason}")
                else:
                    self._set("stale", f"{reason}; reconnecting in {delay:.1f} s")
            else:
                self._set("failed", f"{reason}; retrying in {delay:.1f} s")
            self._stop.wait(delay)
            delay = min(delay * 2, self.config.backoff_max_s)

    def _open(self):
        """The open container, or AnomalyError with a one-line reason."""
        url = self._url
        options = {}
        if url.lower().startswith(("rtsp://", "rtsps://")) and self.config.rtsp_transport:
            options["rtsp_transport"] = self.config.rtsp_transport
        if is_network_stream(url):  # start within a second, not after FFmpeg's 5 s of probing
            options.update({"analyzeduration": "1000000", "fflags": "nobuffer"})
        try:
            if is_network_stream(url) or "://" not in url or url.startswith("file://"):
                target = url[len("file://") :] if url.startswith("file://") else url
                return av.open(
                    target, options=options, timeout=(self.config.open_timeout_s, self.config.read_timeout_s)
                )
            from anomaly import uris  # fsspec URIs (s3://, gs://, …): through a file object, as in batch

            fs, path = uris.filesystem(url)
            return av.open(
                fs.open(path, "rb"), timeout=(self.config.open_timeout_s, self.config.read_timeout_s)
            )
        except av.FFmpegError as exc:
            raise AnomalyError(self.url, f"cannot open: {first_line(exc)}") from None
        except OSError as exc:
            raise AnomalyError(self.url, f"cannot open: {type(exc).__name__}: {first_line(exc)}") from None

    def _session(self) -> bool:
        """One connection: decode until the stream ends, fails or the reader stops. True if frames came."""
        with self._cond:
            if self._status.state != "stale":
                self._status.state = "connecting" if self._status.state != "failed" else "failed"
        container = self._open()
        try:
            if not container.streams.video:
                raise AnomalyError(self.url, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            declared_fps = float(rate) if rate else 0.0
            pace = (
                self.config.realtime if self.config.realtime is not None else not is_network_stream(self._url)
            )
            buffer: deque[tuple[np.ndarray, float]] = deque(maxlen=self.config.clip_len)
            count, bad, size, rotation = 0, 0, None, None
            t0_wall = t0_media = None
            with self._cond:
                self._status.connects += 1
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return count > 0
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    bad += 1
                    if bad >= MAX_BAD_PACKETS:
                        raise AnomalyError(
                            self.url, f"corrupt stream: {bad} packets undecodable: {first_line(exc)}"
                        ) from None
                    continue
                for frame in frames:
                    bad = 0
                    if pace and frame.time is not None:
                        if t0_wall is None:
                            t0_wall, t0_media = time.time(), frame.time
                        wait = t0_wall + (frame.time - t0_media) - time.time()
                        if wait > 0 and self._stop.wait(wait):
                            return True
                    now = time.time()
                    if rotation is None:
                        rotation = _rotation_of(frame, self.url)
                    if count % self.config.stride < self.config.clip_len:
                        convert = _Converter(frame, rotation)
                        if size is None:
                            size = resized_shape(self.config.resize, *convert.display)
                        buffer.append((center_crop(convert(size), self.config.crop, where=self.url), now))
                    self._frame_arrived(now, declared_fps, count == 0)
                    start = count - self.config.clip_len + 1
                    if start >= 0 and start % self.config.stride == 0:
                        self._emit(buffer, start, declared_fps)
                    count += 1
            if count == 0:
                raise AnomalyError(self.url, "no decodable frames")
            return True
        except av.FFmpegError as exc:
            raise AnomalyError(self.url, f"stream error: {first_line(exc)}") from None
        finally:
            container.close()

    def _frame_arrived(self, now: float, declared_fps: float, first: bool) -> None:
        with self._cond:
            s = self._status
            s.frames += 1
            s.last_frame_time = now
            s.arrivals.append(now)
            if len(s.arrivals) >= 2 and s.arrivals[-1] > s.arrivals[0]:
                s.fps = (len(s.arrivals) - 1) / (s.arrivals[-1] - s.arrivals[0])
            elif declared_fps:
                s.fps = declared_fps
            if first or s.state != "live":
                if s.state != "live":
                    logger.info("camera %s: live", self.camera_id)
                s.state, s.reason, s.stale_since = "live", "", None
                s.live_since = s.live_since or now

    def _emit(self, buffer: deque, start: int, declared_fps: float) -> None:
        frames = np.stack([f for f, _ in buffer])
        first_t, last_t = buffer[0][1], buffer[-1][1]
        period = 1.0 / declared_fps if declared_fps else (last_t - first_t) / max(1, len(buffer) - 1)
        clip = {
            "camera": self.camera_id,
            "index": self._clip_index,
            "connect": self._status.connects,
            "start_frame": start,
            "start_time": first_t,
            "end_time": last_t + period,
            "fps": declared_fps or (1.0 / period if period > 0 else 0.0),
            "frames": frames,
        }
        self._clip_index += 1
        with self._cond:
            if len(self._clips) >= self.config.max_clips:
                self._clips.popleft()
                self._status.dropped_clips += 1
            self._clips.append(clip)
            self._status.clips += 1
            self._cond.notify_all()


def reader_actor(num_cpus: float = 0.25):
    """:class:`CameraReader` as a Ray actor class: restarted (with its camera) if its process or node dies."""
    import ray

    return ray.remote(num_cpus=num_cpus, max_restarts=-1, max_task_retries=-1, max_concurrency=4)(
        CameraReader
    )
