"""The clip table's run folders (``OUT/_clips/run-…``): who owns one, and what a killed run leaves.

Every run writes its clip files into a folder of its own, so no run removes another's files.
A folder is claimed by ``owner.json`` (host, process id), rewritten every
:data:`HEARTBEAT_S` while the run works, and removed when the run ends on its own. So a folder
whose ``owner.json`` is still there but whose owner is gone (its process no longer exists on this
host, or its heartbeat is older than :data:`ABANDONED_AFTER_S`) was left by a killed run.

Before it commits a batch of complete videos, extraction writes a manifest of them
(``complete-<hash>.json``: each video's clip files, clip count, frames and fps). A resumed run
adopts the videos of abandoned folders whose manifest and clip files are all there (it commits
them without decoding them again), then removes those folders whole: everything else in them
belongs to videos that were not complete and are extracted again. Folders without
``owner.json`` (a run that kept its clips with ``--keep-clips``, or one older than this rule) are
never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time

from anomaly import uris
from anomaly.store import CLIPS_DIR

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
MANIFEST_PREFIX = "complete-"
HEARTBEAT_S = 60.0
ABANDONED_AFTER_S = 15 * 60.0  # a heartbeat this old: the owner is gone (another host, or a frozen one)


def run_folder(out: str, run: str) -> str:
    return uris.join(out, CLIPS_DIR, run)


def claim(out: str, run: str) -> None:
    """Write (or refresh) the run's ``owner.json``: this host and process, now."""
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    uris.write_bytes_atomic(uris.join(run_folder(out, run), OWNER_FILE), json.dumps(owner).encode())


def release(out: str, run: str) -> None:
    """The run ended on its own: its folder is no one's to adopt (its owner and manifests go)."""
    fs, path = uris.filesystem(run_folder(out, run))
    for name in _names(fs, path):
        if name == OWNER_FILE or name.startswith(MANIFEST_PREFIX):
            fs.rm_file(f"{path}/{name}")


def write_manifest(out: str, run: str, videos: list[dict]) -> None:
    """Record complete videos before their commit (``videos``: JSON-ready facts per video)."""
    data = json.dumps(videos, sort_keys=True).encode()
    name = f"{MANIFEST_PREFIX}{hashlib.sha256(data).hexdigest()[:32]}.json"
    uris.write_bytes_atomic(uris.join(run_folder(out, run), name), data)


def abandoned(out: str, own: str) -> list[str]:
    """Run folders under ``OUT/_clips`` whose owner is gone (see the module docstring), ``own`` excluded."""
    fs, path = uris.filesystem(uris.join(out, CLIPS_DIR))
    found = []
    for run in _names(fs, path):
        if run == own or not run.startswith("run-"):
            continue
        try:
            owner = json.loads(fs.cat_file(f"{path}/{run}/{OWNER_FILE}"))
        except (FileNotFoundError, ValueError):
            continue  # released, kept clips, or written before owners existed
        if _gone(owner):
            found.append(run)
    return found


def _gone(owner: dict) -> bool:
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
        else:
            return False
    return time.time() - float(owner.get("heartbeat", 0)) > ABANDONED_AFTER_S


def manifests(out: str, run: str) -> list[dict]:
    """Every video a run's manifests record (unreadable manifests are skipped: cut short by a kill)."""
    fs, path = uris.filesystem(run_folder(out, run))
    videos = []
    for name in _names(fs, path):
        if name.startswith(MANIFEST_PREFIX):
            try:
                videos.extend(json.loads(fs.cat_file(f"{path}/{name}")))
            except (FileNotFoundError, ValueError):
                continue
    return videos


def remove(out: str, run: str) -> None:
    """Remove a run folder and everything in it."""
    fs, path = uris.filesystem(run_folder(out, run))
    if fs.exists(path):
        fs.rm(path, recursive=True)
    if uris.is_local(out):
        try:
            os.rmdir(os.path.dirname(path))  # _clips itself, when no other run has files there
        except OSError:
            pass


def _names(fs, path: str) -> list[str]:
    try:
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
