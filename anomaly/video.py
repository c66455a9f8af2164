"""Open one video by URI and stream fixed-length RGB clips from it.

A video is a URI (local path, ``s3://…``, any fsspec URI), not a file path:
``open_video`` picks a backend and returns a :class:`VideoReader`. The
backend-independent rules live here once: the video id (:func:`video_id_from_uri`),
the clip sampling rule (:func:`clip_starts`), the bounded clip buffer and the
centre crop (:meth:`VideoReader.iter_clips`). A backend only has to say what
the video is (:attr:`VideoReader.info`) and hand out its decodable frames one
by one, upright and resized (``_frames``). Today the one backend is PyAV
(:class:`PyAVVideo`) for container files, and :mod:`anomaly.frame_folder` for
folders of image files.

Memory is bounded whatever the video length: frames are decoded one at a
time through an fsspec file object (the file is never copied to local disk)
and at most ``clip_len`` converted frames are held while a clip is built.

Every problem with the input is an :class:`~anomaly.errors.AnomalyError`
naming the URI and a short reason: ``no such file or object``, ``access
denied``, ``empty file (0 bytes)``, ``not a video: <FFmpeg's
message>``, ``truncated MP4: no moov atom …``, ``truncated: the file has N bytes
but its index needs M``, ``truncated or corrupt: decoding failed after N
frames: …``, ``truncated: decoded N of the M frames the container declares``,
``no video stream``, ``no decodable frames``. A video that breaks part-way
raises after the clips before the break were yielded; it never silently ends
early (except in containers that declare no length at all, e.g. MPEG-TS).
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from anomaly import uris
from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)

# fsspec read-ahead per open video: large enough for few object-store requests,
# small enough that many concurrent readers stay cheap (s3fs defaults to 50 MiB).
READ_BLOCK_SIZE = 4 * 1024 * 1024

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, as decoded: ``num_frames`` counts decodable frames, not the container's claim.

    ``width``/``height`` are the display size, i.e. after ``rotation`` (degrees
    counter-clockwise from the display matrix) has been applied.
    """

    uri: str
    video_id: str
    num_frames: int
    fps: float
    width: int
    height: int
    rotation: int


@dataclass
class Clip:
    """``clip_len`` consecutive frames, uint8 ``(clip_len, H, W, 3)`` RGB, starting at ``start_frame``."""

    index: int
    start_frame: int
    frames: np.ndarray


# --------------------------------------------------------------------------- backend-independent rules


def video_id_from_uri(uri: str) -> str:
    """The video's id: the file stem (``s3://b/x/Abuse028_x264.mp4`` -> ``Abuse028_x264``), or a folder's name.

    Ids become output file names under a prefix, so the id is always one safe
    path component: only the last component of the URI is used (``../x.mp4`` ->
    ``x``), and ``.``, ``..``, empty, hidden (leading dot) or control-character
    names are refused rather than guessed at.
    """
    text = str(uri)
    if "\x00" in text:
        raise AnomalyError(repr(text), "video URI contains a NUL character")
    if text.startswith(("http://", "https://")):
        text = text.split("#", 1)[0].split("?", 1)[0]
    # Both separators: a Windows-style name must not smuggle a component through.
    name = re.split(r"[/\\]", text.rstrip("/\\"))[-1]
    if "://" in name or name.endswith(":"):  # a bare "s3://bucket" or "C:" names no video
        name = ""
    if name in ("", ".", ".."):
        raise AnomalyError(text, f"cannot derive a video id from the last path component {name!r}")
    stem, _ = os.path.splitext(name)
    if stem in ("", ".", "..") or stem.startswith("."):
        raise AnomalyError(text, f"video name {name!r} gives no safe id (empty, '.', '..' or hidden)")
    if _CONTROL_CHARS.search(stem):
        raise AnomalyError(text, f"video name {name!r} contains control characters")
    return stem


def clip_starts(num_frames: int, clip_len: int, stride: int) -> list[int]:
    """First frame of every clip of a ``num_frames`` video: the one sampling rule.

    - clips are ``clip_len`` consecutive frames starting at ``0, stride, 2*stride, …``;
    - only complete clips are kept: a tail shorter than ``clip_len`` is dropped
      (as in Sultani et al.'s C3D features, one per full 16-frame clip);
    - a video shorter than one clip (``0 < num_frames < clip_len``) still gives
      one clip at 0, padded by repeating its last frame, so no video is lost;
    - a video with no frames gives no clips.
    """
    _check_clip_args(clip_len, stride)
    if num_frames <= 0:
        return []
    if num_frames < clip_len:
        return [0]
    return list(range(0, num_frames - clip_len + 1, stride))


def _check_clip_args(clip_len: int, stride: int) -> None:
    if int(clip_len) != clip_len or clip_len < 1:
        raise ValueError(f"clip_len must be a positive integer, got {clip_len!r}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")


def _check_hw(name: str, value: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be (height, width), got {value!r}") from exc
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive (height, width), got {value!r}")
    return h, w


def center_crop(frame: np.ndarray, crop: tuple[int, int], *, where: str = "crop") -> np.ndarray:
    """The centred ``crop=(h, w)`` window of an ``(H, W, C)`` frame (a view, no copy)."""
    h, w = crop
    height, width = frame.shape[:2]
    if h > height or w > width:
        raise AnomalyError(
            where, f"crop {h}x{w} is larger than the frame {height}x{width}; resize first (size=)"
        )
    top, left = (height - h) // 2, (width - w) // 2
    return frame[top : top + h, left : left + w]


class VideoReader(ABC):
    """One video: its :attr:`info` and its clips. Backends implement ``info`` and ``_frames``.

    After a complete :meth:`iter_clips` pass, ``frames_decoded`` holds the number
    of decodable frames (so a caller need not probe separately) and
    ``peak_buffered`` the most frames the clip buffer ever held.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.video_id = video_id_from_uri(uri)
        self.frames_decoded: int | None = None
        self.peak_buffered = 0

    @property
    @abstractmethod
    def info(self) -> VideoInfo:
        """Probe the video (may decode it once to count frames); cached."""

    @abstractmethod
    def _frames(self, size: tuple[int, int] | None) -> Iterator[Callable[[], np.ndarray]]:
        """One converter per decodable frame, in order; calling it returns the upright uint8 RGB frame.

        Conversion is deferred so frames that fall between clips (``stride >
        clip_len``) are decoded but never converted. Raises AnomalyError when
        the video cannot be read, including part-way through.
        """

    def iter_clips(
        self,
        *,
        clip_len: int = 16,
        stride: int = 16,
        size: tuple[int, int] | None = None,
        crop: tuple[int, int] | None = None,
    ) -> Iterator[Clip]:
        """Clips at :func:`clip_starts`, each yielded as soon as its last frame is decoded.

        ``size=(h, w)`` resizes every frame (while converting, in C), then
        ``crop=(h, w)`` takes the centre window. At most ``clip_len`` frames are
        held at any time, whatever the video length.
        """
        _check_clip_args(clip_len, stride)
        size = _check_hw("size", size)
        crop = _check_hw("crop", crop)
        buffer: deque[np.ndarray] = deque(maxlen=clip_len)
        self.peak_buffered = 0
        count = index = 0
        for frame_no, convert in enumerate(self._frames(size)):
            count = frame_no + 1
            if frame_no % stride >= clip_len:
                continue  # between two clips: no clip uses it, so skip the conversion
            frame = convert()
            if crop is not None:
                frame = center_crop(frame, crop, where=self.uri)
            buffer.append(frame)
            self.peak_buffered = max(self.peak_buffered, len(buffer))
            start = frame_no - clip_len + 1
            if start >= 0 and start % stride == 0:
                yield Clip(index=index, start_frame=start, frames=np.stack(buffer))
                index += 1
        self.frames_decoded = count
        if count == 0:
            raise AnomalyError(self.uri, "no decodable frames")
        if index == 0:  # shorter than one clip: pad with the last frame (see clip_starts)
            frames = list(buffer) + [buffer[-1]] * (clip_len - len(buffer))
            yield Clip(index=0, start_frame=0, frames=np.stack(frames))


# --------------------------------------------------------------------------- PyAV backend


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def _mp4_index_problem(handle: Any) -> str | None:
    """For an ISO-BMFF file (starts with ``ftyp``): why its ``moov`` index is unusable, else None.

    A recording or upload cut short loses the ``moov`` index, which MP4
    writers put at the end, or cuts it in half (``+faststart`` files have it
    first); FFmpeg then only says "Invalid data" or finds no stream at all.
    None when the file is not ISO-BMFF, or its top-level ``moov`` is whole.
    """
    try:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(0)
        head = handle.read(8)
        if len(head) < 8 or head[4:8] != b"ftyp":
            return None
        offset = 0
        for _ in range(10_000):
            handle.seek(offset)
            header = handle.read(16)
            if len(header) < 8:
                break
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            if box_type == b"moov":
                if box_size >= 8 and offset + box_size > size:
                    return (
                        f"truncated MP4: the moov atom (the index) needs {offset + box_size} bytes "
                        f"but the file has {size}; the file was cut short"
                    )
                return None
            if box_size < 8:  # 0: the box runs to the end of the file; 2-7: garbage
                break
            offset += box_size
        return "truncated MP4: no moov atom (the index is missing; the file was cut short)"
    except (OSError, ValueError):
        return None


def _read_error(uri: str, exc: OSError, *, after: str = "") -> AnomalyError:
    """An I/O error from the file object (after the storage client's own bounded retries), as one line."""
    if isinstance(exc, FileNotFoundError):
        return AnomalyError(uri, f"no such file or object{after}")
    if isinstance(exc, PermissionError):
        return AnomalyError(uri, f"access denied{after}")
    return AnomalyError(uri, f"read error{after}: {type(exc).__name__}: {_first_line(exc)}")


def _duration_tag(metadata: dict[str, str]) -> float | None:
    """Seconds in a Matroska-style ``DURATION`` tag (``HH:MM:SS.fffffffff``), None when absent or odd."""
    text = next((v for k, v in (metadata or {}).items() if k.upper() == "DURATION"), None)
    if not text:
        return None
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _rotation_of(frame: av.VideoFrame, uri: str) -> int:
    """Display-matrix rotation in degrees counter-clockwise, snapped to 0/90/180/270."""
    degrees = float(frame.rotation or 0)
    snapped = int(round(degrees / 90.0)) * 90 % 360
    if abs(((degrees - snapped) + 180) % 360 - 180) > 1:
        logger.warning("%s: display rotation %.1f° is not a multiple of 90; using %d°", uri, degrees, snapped)
    return snapped


class PyAVVideo(VideoReader):
    """A container file FFmpeg can demux (MP4, AVI, MKV, …), read through an fsspec file object."""

    def __init__(self, uri: str, fs: Any, path: str, size_bytes: int | None) -> None:
        super().__init__(uri)
        self._fs, self._path, self._size_bytes = fs, path, size_bytes
        self._info: VideoInfo | None = None

    @contextmanager
    def _open(self) -> Iterator[tuple[Any, Any]]:
        """The open container and its first video stream, or AnomalyError saying why not."""
        try:
            handle = self._fs.open(self._path, "rb", block_size=READ_BLOCK_SIZE)
        except FileNotFoundError as exc:
            raise AnomalyError(self.uri, "no such file or object") from exc
        except PermissionError as exc:
            raise AnomalyError(self.uri, "access denied") from exc
        except IsADirectoryError as exc:
            raise AnomalyError(self.uri, "is a folder, not a video file") from exc
        except OSError as exc:
            raise _read_error(self.uri, exc) from exc
        try:
            try:
                container = av.open(handle, mode="r")
            except av.FFmpegError as exc:
                raise AnomalyError(
                    self.uri, _mp4_index_problem(handle) or f"not a video: {_first_line(exc)}"
                ) from exc
            except OSError as exc:  # raised by the file object inside FFmpeg's read callback
                raise _read_error(self.uri, exc) from exc
            try:
                if not container.streams.video:  # an MP4 cut inside its index can open with no stream
                    raise AnomalyError(self.uri, _mp4_index_problem(handle) or "no video stream")
                stream = container.streams.video[0]
                self._check_index(container, stream)
                stream.thread_type = "AUTO"
                yield container, stream
            finally:
                container.close()
        finally:
            handle.close()

    def _check_index(self, container: Any, stream: Any) -> None:
        """Refuse a file shorter than its own index says (an MP4 cut inside ``mdat``).

        Cut exactly at a packet boundary, the demuxer would just stop early and
        the video would silently lose its end.
        """
        size = self._size_bytes or getattr(container, "size", None)
        if not size or size <= 0:
            return
        needed = 0
        for entry in stream.index_entries:
            needed = max(needed, entry.pos + entry.size)
        if needed > size:
            raise AnomalyError(
                self.uri, f"truncated: the file has {size} bytes but its index needs {needed} bytes"
            )

    def _decoded(self, container: Any, stream: Any) -> Iterator[av.VideoFrame]:
        """Decoded frames; a failure part-way is an AnomalyError, never a silently shorter video."""
        count = 0
        first = last = None
        try:
            for frame in container.decode(stream):
                if first is None:
                    first = frame.time
                last = frame.time
                yield frame
                count += 1
        except av.FFmpegError as exc:
            raise AnomalyError(
                self.uri, f"truncated or corrupt: decoding failed after {count} frames: {_first_line(exc)}"
            ) from exc
        except OSError as exc:  # the object vanished, or reads kept failing, part-way
            raise _read_error(self.uri, exc, after=f" after {count} frames") from exc
        self._check_complete(stream, count, first, last)

    def _check_complete(self, stream: Any, count: int, first: float | None, last: float | None) -> None:
        """Refuse a stream that ended well before the length its container declares.

        Containers without a full index (AVI, Matroska) just stop at the cut,
        so compare with the header's frame count (AVI, MP4) or the track's
        ``DURATION`` tag (Matroska). A shortfall up to 2 % (at least 2 frames)
        is tolerated: edit lists and dropped-frame placeholders cause that much.
        """
        declared = int(stream.frames or 0)
        if declared and count < declared - max(2, 0.02 * declared):
            raise AnomalyError(
                self.uri, f"truncated: decoded {count} of the {declared} frames the container declares"
            )
        seconds = _duration_tag(stream.metadata)
        if seconds and first is not None and last is not None:
            rate = stream.average_rate or stream.guessed_rate
            step = 1.0 / float(rate) if rate else 0.0
            covered = last - first + step
            if covered < seconds - max(2 * step, 0.02 * seconds):
                raise AnomalyError(
                    self.uri,
                    f"truncated: frames cover {covered:.2f} s of the {seconds:.2f} s the container declares",
                )

    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            self._info = self._probe()
        return self._info

    def _probe(self) -> VideoInfo:
        with self._open() as (container, stream):
            count = 0
            rotation = width = height = 0
            first_time = last_time = None
            for frame in self._decoded(container, stream):
                if count == 0:
                    rotation, width, height = _rotation_of(frame, self.uri), frame.width, frame.height
                    first_time = frame.time
                last_time = frame.time
                count += 1
            if count == 0:
                raise AnomalyError(self.uri, "no decodable frames")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if rate:
                fps = float(rate)
            elif first_time is not None and last_time is not None and last_time > first_time:
                fps = (count - 1) / (last_time - first_time)
            else:
                logger.warning("%s: no frame rate in the stream; fps recorded as 0", self.uri)
                fps = 0.0
        if rotation in (90, 270):
            width, height = height, width
        self.frames_decoded = count
        return VideoInfo(
            uri=self.uri,
            video_id=self.video_id,
            num_frames=count,
            fps=fps,
            width=width,
            height=height,
            rotation=rotation,
        )

    def _frames(self, size: tuple[int, int] | None) -> Iterator[Callable[[], np.ndarray]]:
        with self._open() as (container, stream):
            rotation: int | None = None
            for frame in self._decoded(container, stream):
                if rotation is None:
                    rotation = _rotation_of(frame, self.uri)
                yield _converter(frame, rotation, size)


def _converter(frame: av.VideoFrame, rotation: int, size: tuple[int, int] | None) -> Callable[[], np.ndarray]:
    """Deferred conversion: scale while converting to RGB (swscale), then turn upright."""

    def convert() -> np.ndarray:
        if size is None:
            rgb = frame.to_ndarray(format="rgb24")
        else:
            h, w = size
            if rotation in (90, 270):  # scale the stored frame so it is (h, w) once upright
                h, w = w, h
            rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")
        # rotation is counter-clockwise (FFmpeg's display matrix): np.rot90 turns the same way.
        return np.rot90(rgb, k=rotation // 90) if rotation else rgb

    return convert


# --------------------------------------------------------------------------- entry points


def open_video(uri: str, *, fps: float | None = None) -> VideoReader:
    """A reader for the video at ``uri``; fails fast (one metadata request) on missing or empty objects.

    A folder (or object-store prefix) is a frame-folder video
    (:class:`anomaly.frame_folder.FrameFolderVideo`); ``fps`` is its frame rate
    (default :data:`anomaly.frame_folder.DEFAULT_FPS`). Container files state
    their own rate and ignore ``fps``.
    """
    video_id_from_uri(uri)  # refuse unsafe names before touching storage
    fs, path = uris.filesystem(uri)
    try:
        meta = fs.info(path)
    except FileNotFoundError as exc:
        raise AnomalyError(uri, "no such file or object") from exc
    except PermissionError as exc:
        raise AnomalyError(uri, "access denied") from exc
    except OSError as exc:
        raise _read_error(uri, exc) from exc
    if meta.get("type") == "directory":
        from anomaly.frame_folder import FrameFolderVideo

        return FrameFolderVideo(uri, fs, path, fps=fps)
    size = meta.get("size")
    if size == 0:
        raise AnomalyError(uri, "empty file (0 bytes)")
    return PyAVVideo(uri, fs, path, size)


def probe_video(uri: str, *, fps: float | None = None) -> VideoInfo:
    """Open ``uri`` and decode it once: frame count (decodable frames), fps, display size, rotation."""
    return open_video(uri, fps=fps).info


def iter_clips(
    uri: str,
    *,
    clip_len: int = 16,
    stride: int = 16,
    size: tuple[int, int] | None = None,
    crop: tuple[int, int] | None = None,
) -> Iterator[Clip]:
    """Stream the clips of one video (see :func:`clip_starts` and :meth:`VideoReader.iter_clips`)."""
    yield from open_video(uri).iter_clips(clip_len=clip_len, stride=stride, size=size, crop=crop)


__all__ = [
    "Clip",
    "PyAVVideo",
    "VideoInfo",
    "VideoReader",
    "center_crop",
    "clip_starts",
    "iter_clips",
    "open_video",
    "probe_video",
    "video_id_from_uri",
]
