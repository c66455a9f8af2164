"""Small real H.264 surveillance-like videos with a known anomalous interval, for tests and demos.

A scene is a static textured street (asphalt, pavements, a wall with windows,
benches and posts) with a few people walking slowly at constant velocities.
Inside a known ``[start, end)`` frame interval one event happens:

- ``flash`` (class ``Explosion``): a flickering fireball that lights up the
  whole frame — global brightness jumps for the whole interval;
- ``fight`` (class ``Fighting``): a knot of large figures jumping erratically
  by many pixels every frame;
- ``scatter`` (class ``Stampede``): a steady stream of people running fast
  away from one point in every direction.

Each is deliberately gross (large areas, large per-frame changes), so that
even a randomly initialised 3D CNN separates event clips from normal ones.
Everything is deterministic given ``seed`` (numpy's PCG64 and single-threaded
x264). File names follow UCF-Crime (``Normal_Videos_001_x264.mp4``,
``Explosion001_x264.mp4``) so the project's one rule — the class is the id's
leading letters, ``Normal…`` is normal — labels them.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache

import av
import numpy as np

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.video import video_id_from_uri

logger = logging.getLogger(__name__)

EVENT_CLASSES: dict[str, str] = {"flash": "Explosion", "fight": "Fighting", "scatter": "Stampede"}
EVENTS: tuple[str, ...] = tuple(EVENT_CLASSES)
NORMAL_CLASS = "Normal"

# Official folder names used by the frame-count files for normal videos.
_NORMAL_FOLDERS = {"test": "Testing_Normal_Videos_Anomaly", "train": "Training_Normal_Videos_Anomaly"}


@dataclass(frozen=True)
class SyntheticVideo:
    """One generated video and its truth; ``interval`` is 0-based ``[start, end)``, None when normal."""

    video_id: str
    uri: str
    num_frames: int
    fps: float
    anomaly_class: str
    interval: tuple[int, int] | None
    split: str = "test"


# --------------------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: coarse noise upsampled bilinearly."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    ys = np.arange(height, dtype=np.float32) / cell
    xs = np.arange(width, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _street(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static float32 (H, W, 3) background: wall, pavements, road with markings, fixed furniture."""
    img = np.empty((height, width, 3), np.float32)
    wall_end, kerb_top, kerb_bottom = int(0.22 * height), int(0.34 * height), int(0.86 * height)
    # Asphalt: dark grey with blotches and grain.
    asphalt = 85 + 14 * _smooth_noise(rng, height, width, 12) + rng.normal(0, 3, (height, width))
    img[:] = asphalt[..., None] * np.array([1.0, 1.0, 1.06], np.float32)
    # Building wall with a row of windows.
    wall = np.array([150, 110, 85], np.float32) + 10 * _smooth_noise(rng, wall_end, width, 6)[..., None]
    img[:wall_end] = wall
    win_h, win_w = max(2, wall_end // 3), max(3, width // 14)
    for x in range(win_w // 2, width - win_w, 2 * win_w):
        img[wall_end // 4 : wall_end // 4 + win_h, x : x + win_w] = rng.uniform(40, 200) * np.array(
            [0.7, 0.8, 1.0], np.float32
        )
    # Pavements: light tiles with joints.
    for top, bottom in ((wall_end, kerb_top), (kerb_bottom, height)):
        img[top:bottom] = 165 + 6 * _smooth_noise(rng, bottom - top, width, 5)[..., None]
        img[top:bottom, ::8] -= 35
        img[top + 4 : bottom : 6] -= 25
    # Dashed centre line.
    mid = (kerb_top + kerb_bottom) // 2
    for x in range(0, width, 16):
        img[mid - 1 : mid + 1, x : x + 9] = np.array([230, 210, 90], np.float32)
    # Fixed furniture on the pavements: benches, bins, posts.
    for _ in range(int(rng.integers(3, 6))):
        bw, bh = int(rng.integers(3, 12)), int(rng.integers(3, 8))
        top = int(rng.choice([rng.integers(wall_end, max(wall_end + 1, kerb_top - bh)), kerb_bottom + 1]))
        left = int(rng.integers(0, width - bw))
        img[top : top + bh, left : left + bw] = rng.uniform(20, 120, size=3)
    for x in rng.integers(4, width - 4, size=2):
        img[wall_end - 6 : kerb_top, x : x + 2] = 55  # lamp posts
    return img


class _Canvas:
    """Draws filled ellipses on a float frame, touching only their bounding boxes."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def ellipse(self, img: np.ndarray, cy: float, cx: float, ry: float, rx: float, color: np.ndarray) -> None:
        top, bottom = max(int(cy - ry), 0), min(int(cy + ry) + 2, self.height)
        left, right = max(int(cx - rx), 0), min(int(cx + rx) + 2, self.width)
        if top >= bottom or left >= right:
            return
        yy = np.arange(top, bottom, dtype=np.float32)[:, None]
        xx = np.arange(left, right, dtype=np.float32)[None, :]
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        img[top:bottom, left:right][mask] = color

    def person(self, img: np.ndarray, cy: float, cx: float, scale: float, color: np.ndarray) -> None:
        """A body ellipse and a head; ``(cy, cx)`` is the body centre."""
        self.ellipse(img, cy, cx, 2.2 * scale, 1.0 * scale, color)
        self.ellipse(img, cy - 2.9 * scale, cx, 0.8 * scale, 0.8 * scale, _SKIN)


_SKIN = np.array([224, 180, 150], np.float32)


@dataclass
class _Walker:
    y: float
    x: float
    vy: float
    vx: float
    scale: float
    color: np.ndarray


class _Scene:
    """Background, walkers and one optional event, rendered frame by frame (deterministic)."""

    def __init__(
        self,
        rng: np.random.Generator,
        height: int,
        width: int,
        event: str | None,
        interval: tuple[int, int] | None,
    ) -> None:
        self.rng, self.height, self.width = rng, height, width
        self.canvas = _Canvas(height, width)
        self.background = _street(rng, height, width)
        self.event, self.interval = event, interval
        scale = height / 40.0  # people ~1/8 of the frame tall at any resolution
        self.walkers = [
            _Walker(
                y=float(rng.uniform(0.3, 0.9) * height),
                x=float(rng.uniform(0, width)),
                vy=float(rng.uniform(-0.05, 0.05)),
                vx=float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.8)),
                scale=float(scale * rng.uniform(0.85, 1.15)),
                color=rng.uniform(30, 230, size=3).astype(np.float32),
            )
            for _ in range(int(rng.integers(3, 6)))
        ]
        # Event geometry, drawn once so the whole interval is one consistent event.
        self.origin = (float(rng.uniform(0.45, 0.7) * height), float(rng.uniform(0.3, 0.7) * width))
        self.fighters = [
            (rng.uniform(30, 230, size=3).astype(np.float32), float(scale * rng.uniform(1.5, 2.0)))
            for _ in range(int(rng.integers(4, 7)))
        ]
        n_runners = int(rng.integers(24, 33))
        self.runners = [
            (
                float(rng.uniform(0, 2 * np.pi)),  # direction
                float(rng.uniform(3.0, 5.0) * width / 128),  # speed, px/frame
                float(rng.uniform(0, 1)),  # phase in the spawn cycle
                rng.uniform(30, 230, size=3).astype(np.float32),
            )
            for _ in range(n_runners)
        ]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.dist2 = (yy - self.origin[0]) ** 2 + (xx - self.origin[1]) ** 2

    def _walker_position(self, walker: _Walker, t: int) -> tuple[float, float]:
        margin = 4 * walker.scale
        span = self.width + 2 * margin
        x = (walker.x + walker.vx * t + margin) % span - margin
        lo, hi = 0.3 * self.height, 0.92 * self.height
        y = walker.y + walker.vy * t
        y = lo + abs((y - lo) % (2 * (hi - lo)) - (hi - lo))  # bounce between lo and hi
        return y, x

    def render(self, t: int) -> np.ndarray:
        img = self.background.copy()
        for walker in self.walkers:
            y, x = self._walker_position(walker, t)
            self.canvas.person(img, y, x, walker.scale, walker.color)
        if self.event is not None and self.interval is not None:
            start, end = self.interval
            if start <= t < end:
                getattr(self, f"_{self.event}")(img, t - start, end - start)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _flash(self, img: np.ndarray, k: int, length: int) -> None:
        """A fireball growing from the origin plus a flickering glare over the whole frame."""
        rise = min(1.0, (k + 1) / 2.0)  # full strength from the second frame
        flicker = 0.8 + 0.2 * float(self.rng.uniform())
        glare = 0.55 * rise * flicker
        radius = max(self.height, self.width) * (0.15 + 0.5 * min(1.0, k / max(1, length // 2)))
        core = np.exp(-self.dist2 / (2 * radius**2))[..., None] * rise * flicker
        alpha = np.clip(glare + 0.45 * core, 0, 0.97)
        fire = np.array([255, 235, 190], np.float32)
        img *= 1 - alpha
        img += alpha * fire

    def _fight(self, img: np.ndarray, k: int, length: int) -> None:
        """Large figures around one spot, each jumping to a new random place every frame."""
        cy, cx = self.origin
        spread = self.height / 6
        for color, scale in self.fighters:
            dy, dx = self.rng.normal(0, spread, size=2)
            self.canvas.person(img, cy + dy, cx + 1.5 * dx, scale, color)
            # Flailing limbs: thin fast strokes between a fighter and a random point.
            ly, lx = cy + dy + self.rng.normal(0, spread), cx + dx + self.rng.normal(0, spread)
            self.canvas.ellipse(img, (cy + dy + ly) / 2, (cx + dx + lx) / 2, spread / 2, scale / 2, color)

    def _scatter(self, img: np.ndarray, k: int, length: int) -> None:
        """People running away from the origin in all directions, spawning continuously."""
        cy, cx = self.origin
        reach = 0.6 * float(np.hypot(self.height, self.width))  # about to the frame's edge
        scale = self.height / 30.0
        for direction, speed, phase, color in self.runners:
            period = reach / speed
            travelled = ((k + phase * period) % period) * speed
            y = cy + np.sin(direction) * travelled
            x = cx + np.cos(direction) * travelled
            self.canvas.person(img, y, x, scale, color)


def make_scene(*, height: int, width: int, event: str | None, seed: int = 0):
    """The scene :func:`make_video` draws, for live streams of it: ``scene.render(t)`` is frame ``t``.

    Set ``scene.interval = (start, end)`` (frames) before rendering to put the event there, or
    None for none; the street and its walkers go on unchanged either way.
    """
    return _Scene(np.random.default_rng(seed), height, width, event, None)


# --------------------------------------------------------------------------- encoding


@lru_cache(maxsize=1)
def _encoder() -> str:
    """libx264 when this FFmpeg build has it (the real thing); another H.264 or MPEG-4 encoder otherwise."""
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except (ValueError, av.FFmpegError):  # UnknownCodecError: not in this FFmpeg build
            continue
        if name != "libx264":
            logger.warning("libx264 is not available; synthetic videos use the %s encoder", name)
        return name
    raise AnomalyError("PyAV", "no H.264 or MPEG-4 encoder in this FFmpeg build")


def _encode(
    path: str, frames, *, num_frames: int, fps: float, height: int, width: int, container_format: str = "mp4"
) -> None:
    """Write an MP4 with its index first (faststart), so readers can stream it (or another container)."""
    codec = _encoder()
    options = {"movflags": "+faststart"} if container_format == "mp4" else {}
    with av.open(path, mode="w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            # One thread: x264's output depends on the thread count, and these must be byte-reproducible.
            stream.options = {"crf": "20", "preset": "veryfast", "threads": "1"}
        for t in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frames(t), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _check_args(uri: str, num_frames: int, fps: float, height: int, width: int) -> None:
    if num_frames < 1:
        raise AnomalyError(uri, f"num_frames must be >= 1, got {num_frames}")
    if not fps > 0:
        raise AnomalyError(uri, f"fps must be > 0, got {fps}")
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise AnomalyError(uri, f"height and width must be even and >= 16 (yuv420p), got {height}x{width}")


def make_video(
    uri: str,
    *,
    num_frames: int = 150,
    fps: float = 25.0,
    height: int = 96,
    width: int = 128,
    event: str | None = None,
    interval: tuple[int, int] | None = None,
    seed: int = 0,
    container: str = "mp4",
    declared_frames: int | None = None,
) -> SyntheticVideo:
    """Render and write one video to ``uri`` (any fsspec URI); readers never see a partial file.

    ``container``: ``"mp4"`` (H.264, faststart) or ``"avi"``, ``"matroska"``.
    ``declared_frames`` (AVI only): patch the header's frame counts (``avih``
    total frames, ``strh`` length) to this wrong value, as some recorders do:
    a valid file whose container lies about its length.

    ``event`` (one of :data:`EVENTS`) happens during ``interval`` (0-based
    ``[start, end)``; default: the middle 30 %). Encoded to a local temporary
    file first (the MP4 muxer must seek back), then written atomically.
    """
    _check_args(uri, num_frames, fps, height, width)
    video_id = video_id_from_uri(uri)
    if event is None:
        if interval is not None:
            raise AnomalyError(uri, "an interval was given without an event")
        anomaly_class = NORMAL_CLASS
    else:
        if event not in EVENT_CLASSES:
            raise AnomalyError(uri, f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        anomaly_class = EVENT_CLASSES[event]
        if interval is None:
            interval = (int(0.4 * num_frames), max(int(0.7 * num_frames), int(0.4 * num_frames) + 1))
        start, end = int(interval[0]), int(interval[1])
        if not 0 <= start < end <= num_frames:
            raise AnomalyError(uri, f"interval {interval} is not inside [0, {num_frames})")
        interval = (start, end)
    scene = _Scene(np.random.default_rng(seed), height, width, event, interval)
    with tempfile.TemporaryDirectory(prefix="synthetic-video-") as tmp:
        local = os.path.join(tmp, "video")
        _encode(
            local,
            scene.render,
            num_frames=num_frames,
            fps=fps,
            height=height,
            width=width,
            container_format=container,
        )
        with open(local, "rb") as handle:
            data = handle.read()
        if declared_frames is not None:
            data = _patch_avi_frame_count(uri, data, declared_frames)
        uris.write_bytes_atomic(uri, data)
    logger.debug("wrote %s (%d frames, %s, interval %s)", uri, num_frames, anomaly_class, interval)
    return SyntheticVideo(
        video_id=video_id,
        uri=uri,
        num_frames=num_frames,
        fps=float(fps),
        anomaly_class=anomaly_class,
        interval=interval,
    )


def _patch_avi_frame_count(uri: str, data: bytes, frames: int) -> bytes:
    """An AVI whose ``avih`` dwTotalFrames and video ``strh`` dwLength say ``frames``."""
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise AnomalyError(uri, "declared_frames needs container='avi'")
    out = bytearray(data)
    avih = (
        out.index(b"avih") + 8
    )  # chunk data: dwMicroSecPerFrame, dwMaxBytesPerSec, dwPadding, dwFlags, dwTotalFrames
    out[avih + 16 : avih + 20] = int(frames).to_bytes(4, "little")
    strh = out.index(b"strh") + 8  # fccType, fccHandler, dwFlags, wPriority+wLanguage, dwInitialFrames,
    out[strh + 32 : strh + 36] = int(frames).to_bytes(4, "little")  # dwScale, dwRate, dwStart, dwLength
    return bytes(out)


def _spread(count: int, fraction: float) -> set[int]:
    """``count * fraction`` (rounded half up) indices spread evenly over ``range(count)`` (so event kinds mix)."""
    k = min(count, max(0, int(count * fraction + 0.5)))  # half up, not banker's rounding
    return {int((j + 0.5) * count / k) for j in range(k)}


def make_video_set(
    out_uri: str,
    *,
    num_normal: int,
    num_abnormal: int,
    num_frames: int = 150,
    fps: float = 25.0,
    height: int = 96,
    width: int = 128,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> list[SyntheticVideo]:
    """Write ``num_normal`` normal and ``num_abnormal`` anomalous videos under ``out_uri``.

    Anomalous videos cycle through the event kinds; each interval covers 20–40 %
    of the video and starts after its first 10 %. ``test_fraction`` of each
    label (spread evenly) gets ``split="test"``; the rest are ``"train"``. All
    videos are returned with their truth, train ones included.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise AnomalyError("test_fraction", f"must be within [0, 1], got {test_fraction}")
    if num_normal < 0 or num_abnormal < 0:
        raise AnomalyError("num_normal/num_abnormal", "counts must be >= 0")
    if num_abnormal and num_frames < 10:
        raise AnomalyError("num_frames", f"anomalous videos need at least 10 frames, got {num_frames}")
    rng = np.random.default_rng(seed)
    videos: list[SyntheticVideo] = []
    normal_test = _spread(num_normal, test_fraction)
    for i in range(num_normal):
        name = f"Normal_Videos_{i + 1:03d}_x264.mp4"
        video = make_video(
            uris.join(out_uri, name),
            num_frames=num_frames,
            fps=fps,
            height=height,
            width=width,
            seed=int(rng.integers(2**31)),
        )
        videos.append(replace(video, split="test" if i in normal_test else "train"))
    abnormal_test = _spread(num_abnormal, test_fraction)
    per_class: dict[str, int] = {}
    for i in range(num_abnormal):
        event = EVENTS[i % len(EVENTS)]
        klass = EVENT_CLASSES[event]
        per_class[klass] = per_class.get(klass, 0) + 1
        length = max(1, round(num_frames * rng.uniform(0.2, 0.4)))
        first = max(1, round(0.1 * num_frames))
        last = max(first, num_frames - length - round(0.05 * num_frames))
        start = int(rng.integers(first, last + 1))
        video = make_video(
            uris.join(out_uri, f"{klass}{per_class[klass]:03d}_x264.mp4"),
            num_frames=num_frames,
            fps=fps,
            height=height,
            width=width,
            event=event,
            interval=(start, min(start + length, num_frames)),
            seed=int(rng.integers(2**31)),
        )
        videos.append(replace(video, split="test" if i in abnormal_test else "train"))
    logger.info(
        "wrote %d synthetic videos under %s (%d test)",
        len(videos),
        out_uri,
        sum(v.split == "test" for v in videos),
    )
    return videos


# --------------------------------------------------------------------------- ground truth files


def _file_name(video: SyntheticVideo) -> str:
    return posixpath.basename(video.uri.replace("\\", "/").rstrip("/")) or f"{video.video_id}.mp4"


def _official_numbers(video: SyntheticVideo) -> list[int]:
    """Two intervals in the official 1-based inclusive numbering: ``[s, e)`` -> ``s+1 e``; -1 = none."""
    if video.anomaly_class == NORMAL_CLASS or video.interval is None:
        return [-1, -1, -1, -1]
    start, end = video.interval
    return [start + 1, end, -1, -1]


def write_annotations(videos, annotation_uri: str, *, frame_counts_uri: str | None = None) -> None:
    """Write the ground truth of ``videos`` in the official UCF-Crime formats.

    ``annotation_uri``: ``Temporal_Anomaly_Annotation.txt`` for the test
    videos, laid out like the official file (``Abuse028_x264.mp4  Abuse  165
    240  -1  -1``, two spaces between and after the columns, ``Normal`` class
    and ``-1`` for normal videos). ``frame_counts_uri``: all videos with their
    frame counts, one line each in the format of their split's official file —
    ``Class/Name.mp4 N Class s1 e1 s2 e2`` for test, ``Class/Name.mp4 N`` for train.
    """
    videos = list(videos)
    ordered = sorted(videos, key=lambda v: (v.anomaly_class == NORMAL_CLASS, v.anomaly_class, v.video_id))
    lines = []
    for video in ordered:
        if video.split != "test":
            continue
        columns = [_file_name(video), video.anomaly_class, *map(str, _official_numbers(video))]
        lines.append("  ".join(columns) + "  \n")
    uris.write_bytes_atomic(annotation_uri, "".join(lines).encode("utf-8"))
    if frame_counts_uri is None:
        return
    counts = []
    for video in sorted(ordered, key=lambda v: v.split != "test"):
        if video.anomaly_class == NORMAL_CLASS:
            folder = _NORMAL_FOLDERS["test" if video.split == "test" else "train"]
        else:
            folder = video.anomaly_class
        columns = [f"{folder}/{_file_name(video)}", str(video.num_frames)]
        if video.split == "test":
            columns += [video.anomaly_class, *map(str, _official_numbers(video))]
        counts.append(" ".join(columns) + "\n")
    uris.write_bytes_atomic(frame_counts_uri, "".join(counts).encode("utf-8"))
