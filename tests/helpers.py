"""Helpers several test files share: a real H.264 writer, test frames, free ports, a /proc process walker, job subprocesses.

Imported as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``, the folder has
no ``__init__.py``). The project's own video generator is :mod:`anomaly.synthetic.videos`; this
writer is for tests that need exact pixels, odd pixel formats, rotation or a variable frame rate.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FAST_X264 = {"preset": "ultrafast", "threads": "1"}
REPO = Path(__file__).resolve().parents[1]

# vCPUs and GPUs of the instance types cluster.yaml may use (AWS's published figures).
INSTANCE_TYPES = {
    "g5.4xlarge": (16, 1),
    "g5.8xlarge": (32, 1),
    "g5.12xlarge": (48, 4),
    "g6.8xlarge": (32, 1),
    "m6i.2xlarge": (8, 0),
    "c6i.4xlarge": (16, 0),
}
# _store.json of the tests' tiny random-weight r3d_18 extraction (tiny_settings), for checkpoints.
TINY_STORE_META = {
    "backbone": "r3d_18",
    "feature_dim": 512,
    "weights_sha256": "random",
    "clip_len": 8,
    "stride": 8,
    "crop": [32, 32],
}


def write_h264(
    path: Path | str,
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    rate: int = 25,
    container_format: str = "mp4",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    pts_ms: Sequence[int] | None = None,
    faststart: bool = True,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames (``(T, H, W, 3)`` uint8, or an iterable of ``(H, W, 3)``) with libx264.

    ``pts_ms`` (one per frame, in 1/1000 s) makes a variable-frame-rate file, ``rotation`` a
    display matrix, ``faststart=False`` puts the MP4 index at the end; ``options`` are the
    encoder's (default: ultrafast, one thread).
    """
    frames = iter(frames)
    first = np.asarray(next(frames))
    movflags = {"movflags": "+faststart"} if faststart and container_format == "mp4" else {}
    with av.open(str(path), mode="w", format=container_format, options=movflags) as container:
        stream = container.add_stream("libx264", rate=Fraction(rate))
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pix_fmt
        stream.options = dict(FAST_X264 if options is None else options)
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for t, array in enumerate([first, *frames]):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array, dtype=np.uint8), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[t], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def moving_square(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """RGB frames that differ from each other everywhere: a moving square on a shifting gradient."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t, ..., 0] = (xx * 3 + t * 5) % 256
        frames[t, ..., 1] = (yy * 4 + t * 3) % 256
        frames[t, ..., 2] = 60
        top, left = (t * 2) % (height - 8), (t * 3) % (width - 8)
        frames[t, top : top + 8, left : left + 8] = 255
    return frames


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (all held open together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def processes() -> dict[int, tuple[int, str]]:
    """Every process now: pid -> (parent pid, command line), read from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        table[int(name)] = (ppid, cmdline)
    return table


def descendants(roots: Iterable[int], table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """Pids below ``roots`` (not the roots themselves), so a test only ever signals what it started."""
    table = processes() if table is None else table
    found: set[int] = set()
    todo = list(roots)
    while todo:
        parent = todo.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in found]
        found.update(children)
        todo += children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tiny_settings(**changes):
    """The tests' extraction settings: a random-weight r3d_18 on 32x32 crops on the CPU, plus ``changes``."""
    from anomaly.extraction import ExtractionSettings

    return ExtractionSettings(
        **{"backbone": "r3d_18", "weights": None, "crop": (32, 32), "device": "cpu", **changes}
    )


def job_env(ray_cluster) -> dict:
    """The environment of a ``ray_jobs`` subprocess that joins the session's Ray (``ray_cluster``)."""
    return dict(
        os.environ,
        RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address,
        ANOMALY_LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )


def job_command(job: str, *argv) -> list[str]:
    """``python -m ray_jobs.JOB ARGV...`` with this interpreter."""
    return [sys.executable, "-m", f"ray_jobs.{job}", *map(str, argv)]


def train_flags(store: str, run_dir: Path | str, config: Path | str) -> list[str]:
    """``ray_jobs.train``'s flags for a test's run of ``config``; no restarts, so a failure fails at once."""
    return ["--features", str(store), "--out", str(run_dir), "--config", str(config), "--max-failures", "0"]


def run_and_kill(command: list[str], env: dict, log: Path, ready, *, poll_s: float = 0.01) -> int:
    """Start ``command``, SIGKILL it as soon as ``ready()`` is true; returns its exit status."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None and not ready():
            time.sleep(poll_s)
        proc.send_signal(signal.SIGKILL)
        return proc.wait()


def frame_auc_again(eval_dir: Path | str, store: str, *, split: str = "test", video_ids=None) -> float:
    """The frame AUC recomputed from an evaluation's ``scores.parquet`` and the store's truth.

    What a range check cannot say: that the figure in ``metrics.json`` is the AUC of the scores
    the evaluation wrote, over the frames of the annotated intervals (``video_ids``: only those),
    under the protocol ``metrics.json`` says it used.
    """
    import json

    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from anomaly import store as feature_store
    from anomaly.protocols import frame_scores_and_labels

    protocol = json.loads((Path(eval_dir) / "metrics.json").read_text())["evaluation_protocol"]
    bags = feature_store.load_bags(store, split=split)
    truth = dict(zip(bags.video_ids, bags.intervals, strict=True))
    rows = pq.read_table(Path(eval_dir) / "scores.parquet").to_pylist()
    wanted = set(video_ids) if video_ids is not None else {row["video_id"] for row in rows}
    labels, scores = [], []
    for row in rows:
        if row["video_id"] in wanted:
            frame_score, frame_label = frame_scores_and_labels(
                np.asarray(row["segment_scores"]),
                int(row["num_frames"]),
                truth[row["video_id"]],
                protocol=protocol["name"],
                clip_len=protocol["clip_len"],
            )
            scores.append(frame_score)
            labels.append(frame_label)
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))


def _processes_of(marker: str) -> set[int]:
    """PIDs whose command line names ``marker`` (this head's own temp dir), and their descendants."""
    table = processes()
    table.pop(os.getpid(), None)
    found = {pid for pid, (_, command) in table.items() if marker in command}
    return found | descendants(found, table)


def stop_head(marker: str) -> None:
    """End this test's Ray head and only it.

    Not ``ray stop``: it ends every Ray process on the machine, the session's own cluster
    (the ``ray_cluster`` fixture) and anyone else's included. This head's processes are the
    ones that name its private temp dir, and their children (workers, agents).
    """
    pids = _processes_of(marker)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)}
            time.sleep(0.2)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def ray_cli(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray_cli, *args], env=env, capture_output=True, text=True, check=False, **kwargs)
