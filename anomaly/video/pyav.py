"""PyAV backend: container files FFmpeg can demux (MP4, AVI, MKV, …), read through fsspec.

Memory is bounded whatever the video length: frames are decoded one at a time
through an fsspec file object (the file is never copied to local disk) and
converted (resized in C by swscale) only when a clip needs them.

Container frame counts and durations are hints, not facts: a wrong declared
count (an AVI header claiming twice the frames it holds) is a logged warning
and the decoded frames are the truth. Truncation is only what can be proved:
a decoder error, or a file physically shorter than its own index or header
says (MP4 ``moov``/sample index, AVI ``RIFF`` size, Matroska ``Segment`` size).

Every problem with the input is an :class:`~anomaly.errors.AnomalyError`
naming the URI and a short reason: ``no such file or object``, ``access
denied``, ``empty file (0 bytes)``, ``not a video: <FFmpeg's message>``,
``truncated MP4: no moov atom …``, ``truncated: the file has N bytes but its
index needs M``, ``truncated: the file has N bytes but its header says M``,
``truncated or corrupt: decoding failed after N frames: …``, ``no video
stream``, ``no decodable frames``. A video that breaks part-way raises after
the clips before the break were yielded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import av
import numpy as np

from anomaly.errors import AnomalyError
from anomaly.video.reader import (
    Converter,
    FrameSpan,
    VideoHeader,
    VideoInfo,
    VideoReader,
    renumber_by_time,
)

logger = logging.getLogger(__name__)

# fsspec read-ahead per open video: large enough for few object-store requests,
# small enough that many concurrent readers stay cheap (s3fs defaults to 50 MiB).
READ_BLOCK_SIZE = 4 * 1024 * 1024
# Reading only the header (planning windows): a small first request.
HEADER_BLOCK_SIZE = 64 * 1024


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


def _rotation_of(frame: av.VideoFrame, uri: str) -> int:
    """Display-matrix rotation in degrees counter-clockwise, snapped to 0/90/180/270."""
    degrees = float(frame.rotation or 0)
    snapped = int(round(degrees / 90.0)) * 90 % 360
    if abs(((degrees - snapped) + 180) % 360 - 180) > 1:
        logger.warning("%s: display rotation %.1f° is not a multiple of 90; using %d°", uri, degrees, snapped)
    return snapped


def _ebml_vint(data: bytes, offset: int) -> tuple[int | None, int]:
    """An EBML variable-size integer at ``offset``: (value or None when "unknown size", next offset)."""
    first = data[offset]
    length = next((i + 1 for i in range(8) if first & (0x80 >> i)), 0)
    if length == 0 or offset + length > len(data):
        raise ValueError("bad EBML size")
    value = first & (0xFF >> length)
    for byte in data[offset + 1 : offset + length]:
        value = (value << 8) | byte
    unknown = value == (1 << (7 * length)) - 1
    return (None if unknown else value), offset + length


def _declared_size(head: bytes) -> int | None:
    """Bytes the file must have by its own header: AVI ``RIFF`` size, Matroska ``Segment`` end; else None."""
    try:
        if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            return int.from_bytes(head[4:8], "little") + 8
        if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML header, then the Segment
            size, offset = _ebml_vint(head, 4)
            offset += size or 0
            if head[offset : offset + 4] != b"\x18\x53\x80\x67":
                return None
            segment, data_start = _ebml_vint(head, offset + 4)
            return None if segment is None else data_start + segment
    except (ValueError, IndexError):
        return None
    return None


class PyAVVideo(VideoReader):
    """A container file FFmpeg can demux (MP4, AVI, MKV, …), read through an fsspec file object.

    ``threads``: FFmpeg decoding threads (None: FFmpeg's choice, up to one per
    core); the decode stage sets it to the CPUs its task reserved.
    """

    def __init__(
        self,
        uri: str,
        fs: Any,
        path: str,
        size_bytes: int | None,
        *,
        threads: int | None = None,
        video_id: str | None = None,
    ) -> None:
        super().__init__(uri, video_id=video_id)
        self._fs, self._path, self._size_bytes = fs, path, size_bytes
        self._threads = threads
        self._info: VideoInfo | None = None
        self._header: VideoHeader | None = None
        self._declared_bytes: int | None = None

    @contextmanager
    def _open(self, *, block_size: int = READ_BLOCK_SIZE) -> Iterator[tuple[Any, Any]]:
        """The open container and its first video stream, or AnomalyError saying why not."""
        try:
            handle = self._fs.open(self._path, "rb", block_size=block_size)
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
                self._declared_bytes = _declared_size(handle.read(4096))
                handle.seek(0)
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
                if self._threads:
                    stream.codec_context.thread_count = int(self._threads)
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
        size = self._file_size(container)
        if not size:
            return
        needed = 0
        for entry in stream.index_entries:
            needed = max(needed, entry.pos + entry.size)
        if needed > size:
            raise AnomalyError(
                self.uri, f"truncated: the file has {size} bytes but its index needs {needed} bytes"
            )

    def _file_size(self, container: Any) -> int | None:
        size = self._size_bytes or getattr(container, "size", None)
        return size if size and size > 0 else None

    def _decoded(self, container: Any, stream: Any) -> Iterator[av.VideoFrame]:
        """Decoded frames; a failure part-way is an AnomalyError, never a silently shorter video."""
        count = 0
        try:
            for frame in container.decode(stream):
                yield frame
                count += 1
        except av.FFmpegError as exc:
            raise AnomalyError(
                self.uri, f"truncated or corrupt: decoding failed after {count} frames: {_first_line(exc)}"
            ) from exc
        except OSError as exc:  # the object vanished, or reads kept failing, part-way
            raise _read_error(self.uri, exc, after=f" after {count} frames") from exc
        size = self._file_size(container)
        if size and self._declared_bytes and size < self._declared_bytes:
            raise AnomalyError(
                self.uri,
                f"truncated: the file has {size} bytes but its header says {self._declared_bytes}",
            )

    def header(self) -> VideoHeader:
        """Rate, duration and declared frame count from the container, without decoding a frame."""
        if self._header is None:
            with self._open(block_size=HEADER_BLOCK_SIZE) as (container, stream):
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                duration = 0.0
                if stream.duration and stream.time_base:
                    duration = float(stream.duration * stream.time_base)
                elif container.duration:
                    duration = container.duration / 1_000_000
                start = (
                    float(stream.start_time * stream.time_base)
                    if stream.start_time and stream.time_base
                    else 0.0
                )
                self._header = VideoHeader(
                    fps=float(rate) if rate else 0.0,
                    duration=duration,
                    declared_frames=int(stream.frames or 0),
                    start_time=start,
                    width=int(stream.codec_context.width or 0),
                    height=int(stream.codec_context.height or 0),
                    timestamps="avi" not in container.format.name,
                )
        return self._header

    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            self._info = self._probe()
        return self._info

    def _probe(self) -> VideoInfo:
        """A full decode to count frames. The pipeline never calls it: its clip pass counts them."""
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
            warn_declared(self.uri, int(stream.frames or 0), count)
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

    def _numbered_frames(self, span: FrameSpan) -> Iterator[tuple[int, Converter]]:
        with self._open() as (container, stream):
            frames = self._decoded(container, stream)
            if span.by_time and span.start > 0:
                if not span.fps:
                    raise AnomalyError(self.uri, "cannot seek into a window: the stream states no frame rate")
                target = span.t0 + (span.start - 0.5) / span.fps
                if stream.time_base:
                    container.seek(
                        int(target / stream.time_base), stream=stream, backward=True, any_frame=False
                    )
            rotation: int | None = None
            count = 0

            def converted() -> Iterator[tuple[float | None, Converter]]:
                nonlocal rotation
                for frame in frames:
                    if rotation is None:
                        rotation = _rotation_of(frame, self.uri)
                    yield frame.time, _Converter(frame, rotation)

            if span.by_time:
                yield from renumber_by_time(converted(), span)
                return
            for _, convert in converted():
                yield count, convert
                count += 1
            if span.start == 0 and span.stop is None:
                warn_declared(self.uri, int(stream.frames or 0), count)


def warn_declared(uri: str, declared: int, decoded: int) -> None:
    """A container whose declared frame count is off: a warning; the decoded frames are the truth."""
    if declared and abs(declared - decoded) > max(2, 0.02 * declared):
        logger.warning(
            "%s: the container declares %d frames, %d decode; keeping the %d decoded frames",
            uri,
            declared,
            decoded,
            decoded,
        )


class _Converter:
    """Deferred conversion of one decoded frame: scale while converting to RGB (swscale), then turn upright.

    ``display`` is the upright ``(h, w)`` of the frame, known without converting it.
    """

    __slots__ = ("frame", "rotation", "display")

    def __init__(self, frame: av.VideoFrame, rotation: int) -> None:
        self.frame, self.rotation = frame, rotation
        self.display = (frame.width, frame.height) if rotation in (90, 270) else (frame.height, frame.width)

    def __call__(self, size: tuple[int, int] | None) -> np.ndarray:
        frame, rotation = self.frame, self.rotation
        if size is None:
            rgb = frame.to_ndarray(format="rgb24")
        else:
            h, w = size
            if rotation in (90, 270):  # scale the stored frame so it is (h, w) once upright
                h, w = w, h
            rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")
        # rotation is counter-clockwise (FFmpeg's display matrix): np.rot90 turns the same way.
        return np.rot90(rgb, k=rotation // 90) if rotation else rgb
