"""Finding a data set's videos and label files in its published folder layout (any fsspec URI).

A video is a sub-folder that directly holds image frames, or a video file, in a
split folder or one level below it; names starting with ``.`` or ``_`` are
skipped. Listings are in natural order (``2`` before ``10``), so videos and
labels pair up as the data sets number them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

from anomaly import uris
from anomaly.video.frame_folder import is_image_name, natural_key

VIDEO_FILE_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts")


def base_name(path: str) -> str:
    return posixpath.basename(path.replace("\\", "/").rstrip("/"))


def list_sorted(fs, path: str) -> list[dict]:
    try:
        return sorted(fs.ls(path, detail=True), key=lambda e: natural_key(base_name(e["name"])))
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class Found:
    name: str
    uri: str
    num_frames: int | None  # image count of a frame folder; None for a video file


def videos_in(fs, root_uri: str, path: str, *, depth: int = 2, skip_gt: bool = False) -> list[Found]:
    """Frame folders and video files directly in ``path``, else one level further down."""
    found, subfolders = [], []
    for entry in list_sorted(fs, path):
        name = base_name(entry["name"])
        if name.startswith((".", "_")):
            continue
        if entry.get("type") == "directory":
            if skip_gt and name.lower().endswith("_gt"):
                continue
            images = [
                e
                for e in list_sorted(fs, entry["name"])
                if e.get("type") != "directory" and is_image_name(e["name"])
            ]
            if images:
                found.append(Found(name, uris.in_scheme_of(root_uri, entry["name"]), len(images)))
            else:
                subfolders.append(entry["name"])
        elif name.lower().endswith(VIDEO_FILE_EXTENSIONS):
            found.append(Found(posixpath.splitext(name)[0], uris.in_scheme_of(root_uri, entry["name"]), None))
    if found or depth <= 1:
        return found
    for sub in subfolders:
        found.extend(videos_in(fs, root_uri, sub, depth=depth - 1, skip_gt=skip_gt))
    return found


def child_folder(fs, path: str, names: Sequence[str]) -> str | None:
    """The first child folder whose lower-cased name is in ``names`` (in that order of preference)."""
    children = {
        base_name(e["name"]).lower(): e["name"] for e in list_sorted(fs, path) if e.get("type") == "directory"
    }
    for name in names:
        if name in children:
            return children[name]
    return None


def find_path(fs, path: str, names: Sequence[str], *, depth: int = 3) -> str | None:
    """First path (breadth first, up to ``depth`` levels) whose lower-cased name is one of ``names``."""
    level = [path]
    wanted = [n.lower() for n in names]
    for _ in range(depth):
        following = []
        for folder in level:
            entries = list_sorted(fs, folder)
            by_name = {base_name(e["name"]).lower(): e["name"] for e in entries}
            for name in wanted:
                if name in by_name:
                    return by_name[name]
            following.extend(e["name"] for e in entries if e.get("type") == "directory")
        level = following
    return None


def stem_key(stem: str) -> str:
    """Names that label one video: ``01``, ``1``, ``1_label``, ``01_gt`` -> ``1``; others unchanged."""
    stem = re.sub(r"(?i)_(label|gt|mask)$", "", stem)
    return str(int(stem)) if stem.isdigit() else stem


def per_video_files(fs, root_uri: str, folder: str, suffixes: Sequence[str]) -> dict[str, str]:
    """``{stem key: URI}`` of the files with one of ``suffixes`` in ``folder``."""
    out = {}
    for entry in list_sorted(fs, folder):
        name = base_name(entry["name"])
        lower = name.lower()
        suffix = next((s for s in suffixes if lower.endswith(s)), None)
        if suffix is None or name.startswith("."):
            continue
        out[stem_key(name[: -len(suffix)])] = uris.in_scheme_of(root_uri, entry["name"])
    return out
