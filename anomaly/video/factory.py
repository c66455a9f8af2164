"""One factory: a URI -> the reader of the right backend (a container file or a frame folder)."""

from __future__ import annotations

from collections.abc import Iterator

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.video.frame_folder import FrameFolderVideo
from anomaly.video.pyav import PyAVVideo, _read_error
from anomaly.video.reader import Clip, VideoInfo, VideoReader, video_id_from_uri


def open_video(
    uri: str, *, fps: float | None = None, threads: int | None = None, video_id: str | None = None
) -> VideoReader:
    """A reader for the video at ``uri``; fails fast (one metadata request) on missing or empty objects.

    A folder (or object-store prefix) is a frame-folder video
    (:class:`anomaly.video.frame_folder.FrameFolderVideo`); ``fps`` is its frame rate
    (default :data:`anomaly.video.frame_folder.DEFAULT_FPS`). Container files state
    their own rate and ignore ``fps``. ``threads``: FFmpeg decoding threads.
    ``video_id``: the id a listing gave (default: the URI's stem).
    """
    if video_id is None:
        video_id = video_id_from_uri(uri)  # refuse unsafe names before touching storage
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
        return FrameFolderVideo(uri, fs, path, fps=fps, video_id=video_id)
    size = meta.get("size")
    if size == 0:
        raise AnomalyError(uri, "empty file (0 bytes)")
    return PyAVVideo(uri, fs, path, size, threads=threads, video_id=video_id)


def probe_video(uri: str, *, fps: float | None = None) -> VideoInfo:
    """Open ``uri`` and decode it once: frame count (decodable frames), fps, display size, rotation.

    A separate full decode: the extraction pipeline never probes, its clip pass counts the frames.
    """
    return open_video(uri, fps=fps).info


def iter_clips(uri: str, **options) -> Iterator[Clip]:
    """Stream the clips of one video (see :func:`clip_starts`).

    ``options`` are :meth:`VideoReader.iter_clips`'s (``clip_len``, ``stride``, ``size``, ``crop``,
    ``span``), with its defaults.
    """
    yield from open_video(uri).iter_clips(**options)
