"""Which inputs are videos, and their ids: the one listing rule for extraction, scoring and data sets.

- Under a folder or prefix (searched recursively), a video is a file with a
  video extension (:data:`VIDEO_EXTENSIONS`, any case) or a *frame folder*
  (a folder that directly holds image files, :mod:`anomaly.video.frame_folder`);
  anything below a hidden (``.``) or ``_`` name is skipped (:func:`hidden`).
- A ``.txt`` list file or a Python list is taken as given (one URI per line;
  blank lines and ``#`` comments skipped; relative lines are relative to the list file).
- **Ids**: the relative path under the listed folder without the extension,
  ``/``-separated (``cam01/2026-11-20/0900``), so a camera archive whose files
  share names gets one id per recording. Files directly in the listed folder
  (UCF-Crime's flat layout) therefore keep their stem (``Abuse028_x264``),
  and so do a single URI and the URIs of a list. Every component must be a
  safe name (not empty, ``.``, ``..``, hidden, a backslash or a control
  character); an unsafe one is a ``list``-stage failure of that input. Two
  inputs with one id (``a.mp4`` and ``a.avi``) stop the run before any work.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence

from anomaly import uris
from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts")
LIST_FILE_EXTENSIONS = (".txt",)

_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f]")


def hidden(relative: str) -> bool:
    """True when any component of a path below the listed root starts with ``.`` or ``_``."""
    return any(part.startswith((".", "_")) for part in relative.replace("\\", "/").split("/") if part)


def _read_list_file(uri: str) -> list[str]:
    try:
        text = uris.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnomalyError(uri, f"list file is not UTF-8 text: {exc}") from exc
    base = uri.rsplit("/", 1)[0] if "/" in uri.replace("\\", "/") else "."
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" not in entry and not entry.startswith("/"):  # relative: next to the list file
            entry = uris.join(base, entry)
        out.append(entry)
    return out


def list_inputs(videos: str | Sequence[str]) -> tuple[list[str], str | None]:
    """``(video URIs, root)``: the videos (sorted, repeats removed) and the folder ids are relative to.

    ``root`` is None for one video, a list file and a Python list (ids are stems there).
    """
    from anomaly.video.frame_folder import folder_has_frames, is_image_name

    root_uri: str | None = None
    if not isinstance(videos, str):
        found = [str(v) for v in videos]
    elif videos.lower().endswith(LIST_FILE_EXTENSIONS):
        found = _read_list_file(videos)
    else:
        fs, path = uris.filesystem(videos)
        if not fs.exists(path):
            raise AnomalyError(videos, "no such folder, file or prefix")
        if fs.isfile(path) or folder_has_frames(fs, path):
            found = [videos.rstrip("/") or videos]
        else:
            root = path.rstrip("/")
            root_uri = uris.in_scheme_of(videos, root)
            paths = set()
            for name in fs.find(path):
                relative = name[len(root) :] if name.startswith(root) else name
                if hidden(relative):
                    continue
                if name.lower().endswith(VIDEO_EXTENSIONS):
                    paths.add(name)
                elif is_image_name(name):
                    paths.add(posixpath.dirname(name))  # its folder is the video
            found = [uris.in_scheme_of(videos, p) for p in paths]
    found = sorted(dict.fromkeys(found))
    if not found:
        where = videos if isinstance(videos, str) else "videos"
        raise AnomalyError(where, f"no videos found (files {', '.join(VIDEO_EXTENSIONS)} or image folders)")
    return found, root_uri


def list_videos(videos: str | Sequence[str]) -> list[str]:
    """Video URIs from a folder or prefix (recursive), a ``.txt`` list file, one video, or a list of URIs."""
    return list_inputs(videos)[0]


def _path(uri: str) -> str:
    return uris.filesystem(uri)[1] if "://" in uri else os.path.abspath(uri)


def path_id(uri: str, root: str | None) -> str:
    """The id of ``uri`` listed under ``root`` (see the module docstring); AnomalyError when unsafe."""
    from anomaly.video.reader import video_id_from_uri

    if root is None:
        return video_id_from_uri(uri)
    path, base = _path(uri).rstrip("/"), _path(root).rstrip("/")
    if not path.startswith(base + "/"):
        return video_id_from_uri(uri)
    relative = path[len(base) + 1 :]
    stem, ext = posixpath.splitext(relative)
    if ext.lower() in VIDEO_EXTENSIONS:
        relative = stem
    check_id(relative, where=uri)
    return relative


def check_id(video_id: str, *, where: str) -> None:
    """Refuse an id that is not ``/``-separated safe names."""
    parts = video_id.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or _UNSAFE.search(part):
            raise AnomalyError(
                where,
                f"video id {video_id!r} is not safe ({part!r} is empty, '.', '..', hidden, "
                "or holds a backslash or a control character)",
            )


def assign_ids(video_uris: Iterable[str], root: str | None) -> tuple[dict[str, str], list[dict]]:
    """Map video id -> URI; refuse duplicate ids (two inputs would be one row); unsafe names fail.

    Returns ``(ids, failures)``; raises :class:`AnomalyError` listing the duplicates before any work.
    """
    ids: dict[str, list[str]] = {}
    failures = []
    for uri in video_uris:
        try:
            ids.setdefault(path_id(uri, root), []).append(uri)
        except AnomalyError as exc:
            failures.append({"uri": uri, "video_id": None, "reason": exc.what, "stage": "list"})
    duplicates = {vid: found for vid, found in ids.items() if len(found) > 1}
    if duplicates:
        shown = "; ".join(f"{vid}: {', '.join(found)}" for vid, found in sorted(duplicates.items())[:5])
        more = f" (+{len(duplicates) - 5} more)" if len(duplicates) > 5 else ""
        rule = "relative paths without the extension" if root else "file stems"
        raise AnomalyError("videos", f"{len(duplicates)} duplicate video ids (ids are {rule}): {shown}{more}")
    return {vid: found[0] for vid, found in ids.items()}, failures


def refuse_unsafe_ids(ids: Mapping[str, str]) -> None:
    """Ids given by a caller must follow the listing's rule: ``/``-separated safe names."""
    bad = []
    for vid in ids:
        try:
            check_id(vid, where="videos")
        except AnomalyError:
            bad.append(vid)
    if bad:
        shown = ", ".join(repr(vid) for vid in bad[:5])
        raise AnomalyError(
            "videos",
            f"{len(bad)} video ids are not safe names (empty, '.', '..', hidden, a backslash or a "
            f"control character in a '/'-separated part): {shown}",
        )
