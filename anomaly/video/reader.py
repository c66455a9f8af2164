"""The backend-independent half of reading a video: what it is, how clips are sampled, the clip buffer.

A backend (:mod:`anomaly.video.pyav` for container files, :mod:`anomaly.video.frame_folder`
for folders of images) only says what the video is (:attr:`VideoReader.info`) and hands
out its frames one by one as *numbered converters* (``_numbered_frames``); everything
else lives here once: the clip sampling rule (:func:`clip_starts`), the bounded clip
buffer, the centre crop, and the frame range of one time window (:class:`FrameSpan`).

This module imports numpy only (no torch, no PyAV), so the decode stage stays light.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from anomaly.errors import AnomalyError

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

# A frame converter: called with (h, w) or None, returns the upright uint8 RGB frame at that size;
# its ``display`` attribute is the frame's upright (h, w), known without converting.
Converter = Callable[[tuple[int, int] | None], np.ndarray]
# A view's size: fixed (h, w), None (native), or a function of the frame's upright (h, w).
SizeRule = tuple[int, int] | Callable[[int, int], tuple[int, int]] | None


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


@dataclass(frozen=True)
class VideoHeader:
    """What a container says about itself without decoding (hints, not facts).

    ``declared_frames``/``duration`` are 0 when the container states none;
    ``width``/``height`` are the stored size (before rotation).
    """

    fps: float
    duration: float
    declared_frames: int
    start_time: float
    width: int
    height: int
    exact: bool = False  # True when declared_frames is a fact (frame folders: the listed images)
    # Frames carry presentation timestamps a seek can number them by (not AVI: its B-frames have none).
    timestamps: bool = True

    @property
    def estimated_frames(self) -> int:
        if self.declared_frames:
            return self.declared_frames
        return int(round(self.duration * self.fps)) if self.duration and self.fps else 0


@dataclass(frozen=True)
class FrameSpan:
    """The frames one task decodes: numbers ``start`` up to ``stop`` (exclusive; None: to the end).

    ``by_time``: number frames from their timestamps (``round((t - t0) * fps)``),
    so a task can seek to its window instead of decoding from frame 0. Without it
    frames are numbered in decode order from 0 (exact for any frame rate; used
    when a video is one window).
    """

    start: int = 0
    stop: int | None = None
    by_time: bool = False
    fps: float = 0.0
    t0: float = 0.0


@dataclass
class Clip:
    """``clip_len`` consecutive frames, uint8 ``(clip_len, H, W, 3)`` RGB, starting at ``start_frame``."""

    index: int
    start_frame: int
    frames: np.ndarray


# --------------------------------------------------------------------------- rules


def video_id_from_uri(uri: str) -> str:
    """The video's stem id (``s3://b/x/Abuse028_x264.mp4`` -> ``Abuse028_x264``), or a folder's name.

    Only the last component of the URI is used (``../x.mp4`` -> ``x``), and
    ``.``, ``..``, empty, hidden (leading dot) or control-character names are
    refused rather than guessed at. Ids from a listed folder use the relative
    path instead (:mod:`anomaly.listing`); this is the rule for one URI.
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
    check_clip_args(clip_len, stride)
    if num_frames <= 0:
        return []
    if num_frames < clip_len:
        return [0]
    return list(range(0, num_frames - clip_len + 1, stride))


def check_clip_args(clip_len: int, stride: int) -> None:
    if int(clip_len) != clip_len or clip_len < 1:
        raise ValueError(f"clip_len must be a positive integer, got {clip_len!r}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")


def check_hw(name: str, value: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be (height, width), got {value!r}") from exc
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive (height, width), got {value!r}")
    return h, w


def resized_shape(resize: Sequence[int], height: int, width: int) -> tuple[int, int]:
    """(h, w) of a ``height x width`` frame after torchvision-style ``Resize(resize)``.

    ``resize`` is ``(h, w)`` (an exact size) or ``(short_side,)`` (aspect ratio kept).
    """
    if len(resize) == 2:
        return int(resize[0]), int(resize[1])
    side = int(resize[0])
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


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


def own_clip_range(span: FrameSpan, clip_len: int, stride: int) -> tuple[int, int | None]:
    """``(first, last)`` clip start frames a span owns (clips whose start is in ``[start, stop)``)."""
    first = -(-span.start // stride) * stride
    if span.stop is None:
        return first, None
    last = ((span.stop - 1) // stride) * stride
    return first, last


# --------------------------------------------------------------------------- the reader


class VideoReader(ABC):
    """One video: its :attr:`info` and its clips. Backends implement ``info``, ``header`` and
    ``_numbered_frames``.

    After a clip pass, ``frames_decoded`` holds the number of frames the pass
    saw, ``eof`` whether it reached the end of the video (then ``num_frames``
    is the video's frame count, known from this one pass) and
    ``peak_buffered`` the most frames the clip buffer ever held.
    """

    def __init__(self, uri: str, *, video_id: str | None = None) -> None:
        self.uri = uri
        self.video_id = video_id if video_id is not None else video_id_from_uri(uri)
        self.frames_decoded: int | None = None
        self.num_frames: int | None = None
        self.eof = False
        self.peak_buffered = 0

    @property
    @abstractmethod
    def info(self) -> VideoInfo:
        """Probe the video (may decode it once to count frames); cached. Prefer a clip pass."""

    @abstractmethod
    def header(self) -> VideoHeader:
        """What the container says about itself, read without decoding (a few KiB)."""

    @abstractmethod
    def _numbered_frames(self, span: FrameSpan) -> Iterator[tuple[int, Converter]]:
        """``(frame number, converter)`` for the span's frames, numbers rising by one.

        May start before ``span.start`` and run past ``span.stop`` (the caller
        stops reading); ends at the end of the video. Raises AnomalyError when
        the video cannot be read, including part-way through.
        """

    def iter_clip_views(
        self,
        *,
        clip_len: int,
        stride: int,
        views: Sequence[tuple[SizeRule, tuple[int, int] | None]],
        span: FrameSpan | None = None,
    ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
        """``(clip index, start frame, [clip per view])`` for the clips the span owns, in one decode.

        A *view* is ``(size, crop)`` (``size`` may be a function of the frame's
        upright ``(h, w)``, e.g. a backbone's resize rule): every frame is converted (resized in C)
        once per view, so the full-frame clip and a grid's tiles come from one
        decode. The clip index is ``start // stride`` (global over the video).
        At most ``clip_len`` frames per view are held, whatever the video length.
        """
        check_clip_args(clip_len, stride)
        views = [
            (size if callable(size) else check_hw("size", size), check_hw("crop", crop))
            for size, crop in views
        ]
        span = span or FrameSpan()
        first, last = own_clip_range(span, clip_len, stride)
        stop = None if last is None else last + clip_len  # frames past this are not needed
        buffers: list[deque[np.ndarray]] = [deque(maxlen=clip_len) for _ in views]
        self.peak_buffered = 0
        self.eof = False
        self.num_frames = None
        seen = 0
        end = -1
        yielded = 0
        reached_stop = False
        for frame_no, convert in self._numbered_frames(span):
            if stop is not None and frame_no >= stop:
                reached_stop = True
                break
            end = frame_no
            seen += 1
            if frame_no < first or frame_no % stride >= clip_len:
                continue  # before the window, or between two clips: no clip uses it, so skip the conversion
            if any(callable(size) for size, _ in views):  # sizes that follow the frame: fixed on the first
                display = getattr(convert, "display", None)
                if display is None:
                    display = convert(None).shape[:2]
                views = [(size(*display) if callable(size) else size, crop) for size, crop in views]
            for buffer, (size, crop) in zip(buffers, views, strict=True):
                frame = convert(size)
                if crop is not None:
                    frame = center_crop(frame, crop, where=self.uri)
                buffer.append(frame)
            self.peak_buffered = max(self.peak_buffered, len(buffers[0]))
            start = frame_no - clip_len + 1
            full = len(buffers[0]) == clip_len  # a window's first frames may start mid-clip
            if full and start >= first and start % stride == 0 and (last is None or start <= last):
                yield start // stride, start, [np.stack(buffer) for buffer in buffers]
                yielded += 1
        self.frames_decoded = seen
        if not reached_stop:
            self.eof = True
            self.num_frames = end + 1 if end >= 0 else None
            if self.num_frames is None and span.start == 0:
                raise AnomalyError(self.uri, "no decodable frames")
            if yielded == 0 and first == 0 and self.num_frames and self.num_frames < clip_len:
                # shorter than one clip: pad with the last frame (see clip_starts)
                clips = [np.stack(list(b) + [b[-1]] * (clip_len - len(b))) for b in buffers]
                yield 0, 0, clips

    def iter_clips(
        self,
        *,
        clip_len: int = 16,
        stride: int = 16,
        size: tuple[int, int] | None = None,
        crop: tuple[int, int] | None = None,
        span: FrameSpan | None = None,
    ) -> Iterator[Clip]:
        """Clips at :func:`clip_starts`, each yielded as soon as its last frame is decoded.

        ``size=(h, w)`` resizes every frame (while converting, in C), then
        ``crop=(h, w)`` takes the centre window.
        """
        for index, start, (frames,) in self.iter_clip_views(
            clip_len=clip_len, stride=stride, views=[(size, crop)], span=span
        ):
            yield Clip(index=index, start_frame=start, frames=frames)


def renumber_by_time(
    frames: Iterator[tuple[float | None, Converter]], span: FrameSpan
) -> Iterator[tuple[int, Converter]]:
    """Frame numbers from timestamps, for a task that seeked into its window.

    ``round((t - t0) * fps)``: a frame whose number was already given is dropped,
    a skipped number repeats the previous frame, so numbers rise by exactly one
    (a constant-rate video is numbered as a decode from frame 0 would number it).
    """
    expected: int | None = None
    previous: Converter | None = None
    for time, convert in frames:
        if time is None:
            number = expected if expected is not None else 0
        else:
            number = int(round((time - span.t0) * span.fps))
        if expected is None:
            expected = number
        if number < expected:
            continue
        while previous is not None and expected < number:
            yield expected, previous
            expected += 1
        yield number, convert
        previous = convert
        expected = number + 1
