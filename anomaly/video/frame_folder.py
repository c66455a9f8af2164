"""Frame-folder backend: a folder (or object-store prefix) of image files is one video.

The research data sets UCSD Ped1/Ped2, CUHK Avenue and ShanghaiTech ship their
videos as folders of numbered frames (``Test001/001.tif``, ``01_0014/000.jpg``).
The rules, once:

- **frames** are the folder's files with an image extension
  (:data:`IMAGE_EXTENSIONS`, any case); hidden (``.``) and ``_`` files,
  sub-folders and other files (``Thumbs.db``, notes) are ignored;
- **order** is natural: the digit runs in a name compare as numbers, so
  ``2.png`` comes before ``10.png`` (:func:`natural_key`); names that only
  differ in zero-padding keep plain string order as a tie-break;
- **video id** = the folder's name (the same rule as for files,
  :func:`anomaly.video.video_id_from_uri`; under a listed root, the relative path);
- **fps**: an image folder states no frame rate, so it comes from a setting:
  ``open_video(uri, fps=...)``, default :data:`DEFAULT_FPS` (25, the rate of
  Avenue and ShanghaiTech; UCSD was recorded at 10);
- **pixels**: each frame is decoded with Pillow, made RGB (grayscale UCSD
  TIFFs become three equal channels, 16-bit images are scaled to 8 bits, EXIF
  orientation is applied), and resized with bilinear filtering straight to
  ``size=(h, w)`` when one is asked for; the centre crop and the clip buffer
  are :class:`~anomaly.video.reader.VideoReader`'s, as for container files;
- **windows**: frames are numbered by position, so a window starts at its own
  image (random access, no decode from the start).

Memory is bounded: listing keeps only names, and one image is read and decoded
at a time (frames between clips are not even read). Works on any fsspec URI
(local folders, ``s3://bucket/prefix/``) because it lists and reads through
the URI's filesystem.

Every problem is an :class:`~anomaly.errors.AnomalyError` naming the folder:
``no image frames (…)``, ``frame NAME: not an image: …``, ``frame NAME: is
WxH but the first frame is WxH``.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from anomaly.errors import AnomalyError
from anomaly.video.reader import Converter, FrameSpan, VideoHeader, VideoInfo, VideoReader

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp")

# Frame rate recorded for a frame folder when none is given (Avenue and ShanghaiTech are 25 fps).
DEFAULT_FPS = 25.0

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``frame2.png`` < ``frame10.png``."""
    parts = _DIGITS.split(name)
    key = tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts if part)
    return key, name


def is_image_name(name: str) -> bool:
    base = posixpath.basename(name.replace("\\", "/"))
    return not base.startswith((".", "_")) and base.lower().endswith(IMAGE_EXTENSIONS)


def list_frames(fs: Any, path: str, uri: str) -> list[str]:
    """Paths of the folder's image files in natural order; AnomalyError when there are none."""
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError as exc:
        raise AnomalyError(uri, "no such folder or prefix") from exc
    except PermissionError as exc:
        raise AnomalyError(uri, "access denied") from exc
    files = [
        entry["name"]
        for entry in entries
        if entry.get("type") != "directory" and is_image_name(entry["name"])
    ]
    if not files:
        raise AnomalyError(uri, f"no image frames ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    return sorted(files, key=lambda p: natural_key(posixpath.basename(p.replace("\\", "/"))))


def folder_has_frames(fs: Any, path: str) -> bool:
    """True when the folder directly holds at least one image file (it is a frame-folder video)."""
    try:
        return any(
            entry.get("type") != "directory" and is_image_name(entry["name"])
            for entry in fs.ls(path, detail=True)
        )
    except (FileNotFoundError, NotADirectoryError):
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _to_rgb_array(image: Any) -> np.ndarray:
    """A Pillow image as uint8 ``(H, W, 3)`` RGB; 16-/32-bit grayscale scaled to 8 bits, not clipped."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        array = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    elif image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


class FrameFolderVideo(VideoReader):
    """A folder of image files read in natural order through its fsspec filesystem."""

    def __init__(
        self, uri: str, fs: Any, path: str, *, fps: float | None = None, video_id: str | None = None
    ) -> None:
        super().__init__(uri, video_id=video_id)
        self._fs, self._path = fs, path
        self.fps = float(fps) if fps else DEFAULT_FPS
        if self.fps <= 0:
            raise AnomalyError(uri, f"frame rate must be positive, got {fps!r}")
        self._frames_list: list[str] | None = None
        self._info: VideoInfo | None = None

    @property
    def frame_paths(self) -> list[str]:
        """The image files, in frame order (listed once)."""
        if self._frames_list is None:
            self._frames_list = list_frames(self._fs, self._path, self.uri)
        return self._frames_list

    def _name(self, path: str) -> str:
        return posixpath.basename(path.replace("\\", "/"))

    def _open_image(self, path: str):
        """The decoded Pillow image (fully loaded, file closed), upright; AnomalyError when unreadable."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        name = self._name(path)
        try:
            with self._fs.open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError as exc:
            raise AnomalyError(self.uri, f"frame {name}: vanished while reading") from exc
        except PermissionError as exc:
            raise AnomalyError(self.uri, f"frame {name}: access denied") from exc
        if not data:
            raise AnomalyError(self.uri, f"frame {name}: empty file (0 bytes)")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            return ImageOps.exif_transpose(image)
        except UnidentifiedImageError as exc:
            raise AnomalyError(self.uri, f"frame {name}: not an image: {_first_line(exc)}") from exc
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt image data
            raise AnomalyError(self.uri, f"frame {name}: unreadable image: {_first_line(exc)}") from exc

    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            paths = self.frame_paths
            image = self._open_image(paths[0])  # size from the first frame; the others are checked on read
            self._info = VideoInfo(
                uri=self.uri,
                video_id=self.video_id,
                num_frames=len(paths),
                fps=self.fps,
                width=int(image.width),
                height=int(image.height),
                rotation=0,
            )
        return self._info

    def read_frame(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frame ``index`` alone (random access: frame folders need no sequential decode)."""
        paths = self.frame_paths
        if not 0 <= index < len(paths):
            raise AnomalyError(self.uri, f"frame {index} is out of range (0..{len(paths) - 1})")
        return self._convert(paths[index], size, None)

    def _convert(
        self, path: str, size: tuple[int, int] | None, first_size: tuple[int, int] | None
    ) -> np.ndarray:
        from PIL import Image

        image = self._open_image(path)
        if first_size is not None and (image.width, image.height) != first_size:
            raise AnomalyError(
                self.uri,
                f"frame {self._name(path)}: is {image.width}x{image.height} "
                f"but the first frame is {first_size[0]}x{first_size[1]}",
            )
        if size is not None:
            h, w = size
            if (image.width, image.height) != (w, h):
                if image.mode not in ("RGB", "L"):
                    image = Image.fromarray(_to_rgb_array(image), mode="RGB")
                image = image.resize((w, h), resample=Image.Resampling.BILINEAR)
        return _to_rgb_array(image)

    def header(self) -> VideoHeader:
        """The listed images are the frames: an exact count, the rate from the setting."""
        info = self.info
        return VideoHeader(
            fps=self.fps,
            duration=info.num_frames / self.fps,
            declared_frames=info.num_frames,
            start_time=0.0,
            width=info.width,
            height=info.height,
            exact=True,
        )

    def _numbered_frames(self, span: FrameSpan) -> Iterator[tuple[int, Converter]]:
        info = self.info  # lists the folder and reads the first frame's size
        first_size = (info.width, info.height)
        for number in range(max(0, span.start), len(self.frame_paths)):
            yield number, _FrameConverter(self, self.frame_paths[number], first_size)


class _FrameConverter:
    """One image, read and decoded only when a clip needs it."""

    __slots__ = ("video", "path", "first_size", "display")

    def __init__(self, video: FrameFolderVideo, path: str, first_size: tuple[int, int]) -> None:
        self.video, self.path, self.first_size = video, path, first_size
        self.display = (first_size[1], first_size[0])

    def __call__(self, size: tuple[int, int] | None) -> np.ndarray:
        return self.video._convert(self.path, size, self.first_size)  # noqa: SLF001 - its own video's


__all__ = [
    "DEFAULT_FPS",
    "IMAGE_EXTENSIONS",
    "FrameFolderVideo",
    "folder_has_frames",
    "is_image_name",
    "list_frames",
    "natural_key",
]
