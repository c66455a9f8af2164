"""Reliability of extraction against bad inputs and object-storage faults (issue 7).

One real ``python -m ray_jobs.extract`` run (its own local Ray) over a corpus of bad and odd inputs
generated here, plus good videos: local files, and objects on an S3 endpoint that enforces IAM
(moto's server in a subprocess with ``INITIAL_NO_AUTH_ACTION_COUNT``: a restricted user who may
not read one object) behind a fault-injecting HTTP proxy on 127.0.0.1 (``HTTP 500 InternalError``
for some objects' GETs: a real network-level fault that botocore retries, boundedly, with its
standard retry mode). Every input must end as a store row or a ``_failures.parquet`` row with a
one-line reason; every valid oddity (rotation, VFR, 4K, 10-bit, yuv444, one frame, odd names)
must be extracted. Then: missing buckets and unwritable output prefixes are one-line errors
before any work, with nothing written.

Known moto limitation, worked around rather than hidden: with IAM enforced, moto re-signs the
*decoded* URL, so any ListObjectsV2 with a ``/`` in its prefix (and s3fs's not-found probe, which
lists) fails with SignatureDoesNotMatch. Inputs on that server are therefore given by a list
file (no listing), the store of that run is local, and "a URI that does not exist" is a local one.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import free_port, tiny_settings, write_h264

from anomaly import cli
from anomaly import store as feature_store
from anomaly.extraction import store_settings
from ray_jobs import extract as extract_job

REPO = Path(__file__).resolve().parents[1]
CLIP_LEN = 4
CLI_SETTINGS = ["--backbone", "r3d_18", "--weights", "none", "--clip-len", str(CLIP_LEN), "--crop", "32,32"]
SETTINGS = tiny_settings(clip_len=CLIP_LEN)
MAX_ATTEMPTS = 3  # botocore's standard retry mode: at most 3 attempts per request (AWS_MAX_ATTEMPTS)


# ---------------------------------------------------------------------------------------------- media


def frames(num: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Cheap frames that change every frame and differ by seed."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((num, height, width, 3), np.uint8)
    for t in range(num):
        out[t, ..., 0] = (xx * 3 + t * 7 + seed * 11) % 256
        out[t, ..., 1] = (yy * 5 + t * 3) % 256
        out[t, ..., 2] = (seed * 40 + t * 9) % 256
    return out


def write_video(
    path: Path,
    pixels: np.ndarray,
    *,
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    pts_ms: list[int] | None = None,
    faststart: bool = True,
) -> Path:
    """H.264 in MP4 with PyAV; ``pts_ms`` gives a variable-frame-rate file, ``rotation`` a display matrix."""
    return write_h264(path, pixels, pix_fmt=pix_fmt, rotation=rotation, pts_ms=pts_ms, faststart=faststart)


def write_audio(path: Path, codec: str, container_format: str) -> Path:
    """A real media file with one audio stream and no picture."""
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=44100 if codec == "aac" else 32000)
        stream.layout = "mono"
        sample_format, dtype = ("fltp", np.float32) if codec == "aac" else ("s16", np.int16)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1152), dtype), format=sample_format, layout="mono"
            )
            frame.sample_rate, frame.pts = stream.rate, i * 1152
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ------------------------------------------------------------------------------- S3 with IAM, and faults


def _wait_for_port(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto server did not start")


def _allow_all() -> str:
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    )


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory):
    """moto's S3+IAM server in a subprocess enforcing IAM after 3 bootstrap calls; an admin and a reader.

    The reader may do anything in the bucket except read ``corpus/Denied001.mp4`` and write under
    ``readonly/``. (IAM enforcement is a process-wide moto setting, hence a separate server and not
    the session's.)
    """
    import boto3

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    log = open(tmp_path_factory.mktemp("moto-iam") / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        bootstrap = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **bootstrap)
        iam.create_user(UserName="admin")  # the 3 unauthenticated calls
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=_allow_all())
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        admin = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **admin)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **admin)
        bucket = f"iam-{uuid.uuid4().hex[:10]}"
        s3.create_bucket(Bucket=bucket)
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {
                    "Effect": "Deny",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/corpus/Denied001.mp4",
                },
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/readonly/*"},
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="reader", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        reader = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        yield {
            "endpoint": endpoint,
            "port": port,
            "bucket": bucket,
            "s3": s3,
            "admin": admin,
            "reader": reader,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}
_INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


class FaultProxy:
    """An HTTP server on 127.0.0.1 relaying every request to an S3 endpoint, byte for byte.

    ``faults`` maps an object path (``/bucket/key``) to how many of its GETs are answered with
    ``500 InternalError`` instead (``-1``: all of them). Signed requests stay valid: the method,
    path, query and headers (``Host`` included) reach the endpoint unchanged.
    """

    def __init__(self, upstream_port: int, faults: dict[str, int]) -> None:
        self.upstream_port, self.faults = upstream_port, dict(faults)
        self.gets: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and proxy._should_fail(self.path.split("?", 1)[0]):
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_INTERNAL_ERROR)))
                    self.end_headers()
                    self.wfile.write(_INTERNAL_ERROR)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() in _HOP_BY_HOP or (
                        key.lower() == "content-length" and self.command != "HEAD"
                    ):
                        continue
                    self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _should_fail(self, path: str) -> bool:
        with self.lock:
            self.gets[path] += 1
            budget = self.faults.get(path, 0)
            if budget < 0 or self.failed[path] < budget:
                self.failed[path] += 1
                return True
            return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------ the corpus

# kind -> (expected outcome, what the reason must contain (failures) or the frame count (extracted))
EXPECTED: dict[str, tuple[str, str | int]] = {
    "good local video A": ("extracted", 24),
    "good local video B": ("extracted", 24),
    "good video on S3 (IAM reader)": ("extracted", 24),
    "zero-byte file": ("failed", "empty file (0 bytes)"),
    "MP4 cut at 10% (index first)": ("failed", "truncated"),
    "MP4 cut at 50% (index first)": ("failed", "truncated"),
    "MP4 cut at 90% (index first)": ("failed", "truncated"),
    "MP4 cut at 10% (index last)": ("failed", "truncated MP4: no moov atom"),
    "MP4 cut at 50% (index last)": ("failed", "truncated MP4: no moov atom"),
    "MP4 cut at 90% (index last)": ("failed", "truncated MP4"),
    "random bytes named .mp4": ("failed", "not a video"),
    "text file named .mp4": ("failed", "not a video"),
    "audio only (AAC in MP4)": ("failed", "no video stream"),
    "audio only (MP2 in MKV)": ("failed", "no video stream"),
    "one-frame video": ("extracted", 1),
    "video shorter than one clip": ("extracted", CLIP_LEN - 1),
    "3840x2160, 3 frames": ("extracted", 3),
    "variable frame rate": ("extracted", 20),
    "rotated 90° (display matrix)": ("extracted", 20),
    "10-bit (yuv420p10le)": ("extracted", 20),
    "yuv444p": ("extracted", 20),
    "name with spaces and unicode": ("extracted", 20),
    "relative list entry with ../": ("extracted", 20),
    "URI that does not exist": ("failed", "no such file or object"),
    "path escaping upwards, missing": ("failed", "no such file or object"),
    "NUL in the name": ("failed", "NUL"),
    "control character in the name": ("failed", "control characters"),
    "hidden name (.x.mp4)": ("failed", "no safe id"),
    "object the reader may not read": ("failed", "access denied"),
    "S3 GETs fail twice (500), then work": ("extracted", 24),
    "S3 GETs always fail (500)": ("failed", "read error"),
}


def build_corpus(root: Path, s3, bucket: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Write the corpus; returns kind -> list-file line, kind -> its URI, kind -> expected video id."""
    local = root / "videos"
    (local / "sub").mkdir(parents=True)
    lines: dict[str, str] = {}

    def put(kind: str, name: str, payload: bytes) -> None:
        (local / name).write_bytes(payload)
        lines[kind] = str(local / name)

    good = write_video(local / "GoodLocal001.mp4", frames(24, 48, 64, seed=1))
    lines["good local video A"] = str(good)
    lines["good local video B"] = str(write_video(local / "GoodLocal002.mp4", frames(24, 48, 64, seed=2)))
    index_first = write_video(root / "first.mp4", frames(40, 48, 64, seed=3)).read_bytes()
    index_last = write_video(root / "last.mp4", frames(40, 48, 64, seed=3), faststart=False).read_bytes()
    put("zero-byte file", "Empty001.mp4", b"")
    for pct in (10, 50, 90):
        put(
            f"MP4 cut at {pct}% (index first)",
            f"CutFirst{pct:03d}.mp4",
            index_first[: len(index_first) * pct // 100],
        )
        put(
            f"MP4 cut at {pct}% (index last)",
            f"CutLast{pct:03d}.mp4",
            index_last[: len(index_last) * pct // 100],
        )
    put("random bytes named .mp4", "Random001.mp4", np.random.default_rng(7).bytes(6000))
    put("text file named .mp4", "Text001.mp4", b"this is a text file\nnot a video\n")
    lines["audio only (AAC in MP4)"] = str(write_audio(local / "AudioAac001.mp4", "aac", "mp4"))
    lines["audio only (MP2 in MKV)"] = str(write_audio(local / "AudioMp2001.mkv", "mp2", "matroska"))
    lines["one-frame video"] = str(write_video(local / "OneFrame001.mp4", frames(1, 48, 64, seed=4)))
    lines["video shorter than one clip"] = str(
        write_video(local / "Short001.mp4", frames(CLIP_LEN - 1, 48, 64))
    )
    lines["3840x2160, 3 frames"] = str(write_video(local / "Big4k001.mp4", frames(3, 2160, 3840, seed=5)))
    gaps = np.random.default_rng(0).integers(20, 120, size=20)
    pts = [int(x) for x in np.concatenate([[0], np.cumsum(gaps)[:-1]])]
    lines["variable frame rate"] = str(
        write_video(local / "Vfr001.mp4", frames(20, 48, 64, seed=6), pts_ms=pts)
    )
    lines["rotated 90° (display matrix)"] = str(
        write_video(local / "Rotated001.mp4", frames(20, 48, 64, seed=7), rotation=90)
    )
    lines["10-bit (yuv420p10le)"] = str(
        write_video(local / "TenBit001.mp4", frames(20, 48, 64, seed=8), pix_fmt="yuv420p10le")
    )
    lines["yuv444p"] = str(
        write_video(local / "Yuv444001.mp4", frames(20, 48, 64, seed=9), pix_fmt="yuv444p")
    )
    lines["name with spaces and unicode"] = str(
        write_video(local / "Straße café 東京 001.mp4", frames(20, 48, 64, seed=10))
    )
    write_video(local / "Escape001.mp4", frames(20, 48, 64, seed=11))
    lines["relative list entry with ../"] = "videos/sub/../Escape001.mp4"  # relative to the list file
    lines["URI that does not exist"] = str(local / "Missing001.mp4")
    lines["path escaping upwards, missing"] = "../../../../../../../nowhere/Passwd001.mp4"
    lines["NUL in the name"] = str(local / "Nul\x00001.mp4")
    lines["control character in the name"] = str(local / "Bell\x07001.mp4")
    put("hidden name (.x.mp4)", ".Hidden001.mp4", good.read_bytes())

    data = good.read_bytes()
    for kind, key in [
        ("good video on S3 (IAM reader)", "corpus/GoodS3001.mp4"),
        ("object the reader may not read", "corpus/Denied001.mp4"),
        ("S3 GETs fail twice (500), then work", "corpus/Flaky001.mp4"),
        ("S3 GETs always fail (500)", "corpus/Broken001.mp4"),
    ]:
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        lines[kind] = f"s3://{bucket}/{key}"
    assert set(lines) == set(EXPECTED)
    # The URI each line becomes: relative lines are relative to the list file (written into ``root``).
    uris_by_kind = {
        kind: line if "://" in line or line.startswith("/") else os.path.join(str(root), line)
        for kind, line in lines.items()
    }
    ids = {
        kind: os.path.splitext(line.replace("\\", "/").rsplit("/", 1)[-1])[0]
        for kind, line in lines.items()
        if EXPECTED[kind][0] == "extracted" or "no such file" in str(EXPECTED[kind][1])
    }
    ids["S3 GETs always fail (500)"] = "Broken001"
    ids["object the reader may not read"] = "Denied001"
    return lines, uris_by_kind, ids


def _secrets(*credentials: dict) -> list[str]:
    return [
        value
        for creds in credentials
        for key, value in creds.items()
        if "secret" in key.lower() and len(value) >= 16
    ]


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}: {needle[:4]}…" for needle in needles if needle.encode() in data]
    return hits


@pytest.fixture(scope="module")
def corpus_run(iam_s3, tmp_path_factory):
    """The one extraction run over the whole corpus, as a real command with its own local Ray."""
    root = tmp_path_factory.mktemp("corpus")
    bucket = iam_s3["bucket"]
    lines, uris_by_kind, ids = build_corpus(root, iam_s3["s3"], bucket)
    listing = root / "videos.txt"
    listing.write_text("# the reliability corpus\n" + "\n".join(lines.values()) + "\n", encoding="utf-8")
    store = root / "store"
    faults = {f"/{bucket}/corpus/Flaky001.mp4": 2, f"/{bucket}/corpus/Broken001.mp4": -1}
    proxy = FaultProxy(iam_s3["port"], faults)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    env.update(
        iam_s3["reader"],
        AWS_ENDPOINT_URL=proxy.endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_RETRY_MODE="standard",
        AWS_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        RAY_TMPDIR=str(ray_tmp),
        ANOMALY_LOG_LEVEL="INFO",
        PYTHONPATH=str(REPO),
    )
    command = [
        sys.executable,
        "-m",
        "ray_jobs.extract",
        str(listing),
        "--out",
        str(store),
        *CLI_SETTINGS,
        "--batch-size",
        "8",
        "--flush-every",
        "4",
        "--num-cpus",
        "2",
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=600)
        output = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        secrets = _secrets(iam_s3["reader"], iam_s3["admin"])
        log_hits = _files_containing(ray_tmp, secrets)
    finally:
        proxy.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {
        "store": str(store),
        "lines": lines,
        "uris": uris_by_kind,
        "ids": ids,
        "returncode": proc.returncode,
        "output": output,
        "seconds": time.monotonic() - started,
        "proxy": proxy,
        "bucket": bucket,
        "secrets": secrets,
        "ray_log_hits": log_hits,
    }


def _format_table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{kind:<{widths[0]}}  {expected:<{widths[1]}}  {outcome:<{widths[2]}}  {reason}"
        for kind, expected, outcome, reason in rows
    )


def test_corpus_every_input_is_a_row_or_a_failure(corpus_run, record_property):
    store, uris_by_kind, ids = corpus_run["store"], corpus_run["uris"], corpus_run["ids"]
    assert corpus_run["returncode"] == 0, corpus_run["output"][-4000:]
    table = feature_store.read_table(store)
    features = feature_store.features_from_arrow(table.column("features"))
    rows = {
        row["video_id"]: {**row, "features": f}
        for row, f in zip(table.drop(["features"]).to_pylist(), features, strict=True)
    }
    failures = pq.read_table(f"{store}/_failures.parquet").to_pylist()
    by_uri = {f["uri"]: f for f in failures}
    assert len(by_uri) == len(failures)

    report = [("kind", "expected", "outcome", "reason / frames")]
    problems = []
    accounted: set[str] = set()
    for kind, (expected, detail) in EXPECTED.items():
        failure = by_uri.get(uris_by_kind[kind])
        video_id = ids.get(kind)
        row = rows.get(video_id) if video_id else None
        if row is not None and failure is None:
            outcome, reason = "extracted", f"{row['num_frames']} frames, fps {row['fps']:.2f}"
            accounted.add(video_id)
        elif failure is not None and row is None:
            outcome, reason = "failed", f"[{failure['stage']}] {failure['reason']}"
            accounted.add(failure["uri"])
        else:
            outcome, reason = "MISSING" if row is None else "BOTH", ""
        report.append((kind, expected, outcome, reason))
        if outcome != expected:
            problems.append(kind)
        elif expected == "failed" and (str(detail) not in failure["reason"] or "\n" in failure["reason"]):
            problems.append(f"{kind}: reason {failure['reason']!r} lacks {detail!r}")
        elif expected == "extracted":
            feats = row["features"]
            if row["num_frames"] != detail or feats.shape != (32, 512) or not np.isfinite(feats).all():
                problems.append(f"{kind}: {row['num_frames']} frames, features {feats.shape}")
            elif not np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4):
                problems.append(f"{kind}: segments are not L2-normalised")
    text = _format_table(report)
    proxy = corpus_run["proxy"]
    counts = {path.rsplit("/", 1)[-1]: (proxy.failed[path], proxy.gets[path]) for path in proxy.faults}
    text += f"\nproxy (failed GETs, all GETs): {counts}; run took {corpus_run['seconds']:.1f} s"
    print("\n" + text)
    record_property("corpus_table", text)
    assert not problems, f"{problems}\n{text}\n{corpus_run['output'][-3000:]}"
    assert len(rows) + len(failures) == len(EXPECTED), text  # nothing else, nothing twice
    assert set(rows) == {ids[k] for k, (e, _) in EXPECTED.items() if e == "extracted"}

    # Bounded retries, observed at the network: the flaky object was retried past its two 500s;
    # the broken one was tried at most MAX_ATTEMPTS times per request and then given up.
    bucket = corpus_run["bucket"]
    flaky, broken = f"/{bucket}/corpus/Flaky001.mp4", f"/{bucket}/corpus/Broken001.mp4"
    assert proxy.failed[flaky] == 2 and proxy.gets[flaky] > 2
    assert (
        MAX_ATTEMPTS <= proxy.gets[broken] <= 2 * MAX_ATTEMPTS and proxy.failed[broken] == proxy.gets[broken]
    )
    # The command's own summary, and progress that never counts past its total ("[29/28]" before).
    assert f"{len(rows)} extracted, 0 skipped as done, {len(failures)} failed" in corpus_run["output"]
    progress = [tuple(map(int, m)) for m in re.findall(r"\[(\d+)/(\d+)\]", corpus_run["output"])]
    assert progress and all(done <= total for done, total in progress), progress[-3:]


def test_corpus_ids_never_escape_the_store(corpus_run):
    store = Path(corpus_run["store"])
    ids = feature_store.read_table(str(store), columns=["video_id"]).column("video_id").to_pylist()
    for video_id in ids:
        assert video_id and "/" not in video_id and "\\" not in video_id and "\x00" not in video_id
        assert video_id not in (".", "..") and not video_id.startswith(".")
    assert "Escape001" in ids and "Straße café 東京 001" in ids
    # Everything the run wrote is a top-level file of the store (part files, _store.json, _failures.parquet)
    # or a file of the failure log or of a run's clip table (removed once its videos settle), named by
    # the writer, never by a video id.
    written = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    folders = {name.split("/")[0] for name in written if "/" in name}
    assert "_failures" in folders and folders <= {"_clips", "_failures"}, written
    assert all(name.count("/") <= 1 for name in written if not name.startswith("_clips/")), written
    assert all(
        re.fullmatch(r"_clips/run-[A-Za-z0-9_.-]+/part-[0-9a-f]{32}\.parquet", n)
        for n in written
        if n.startswith("_clips/")
    )
    assert all(
        re.fullmatch(r"_failures/\d{13}-[0-9a-f]{32}\.parquet", n)
        for n in written
        if n.startswith("_failures/")
    )
    top = {name for name in written if "/" not in name and not name.startswith("part-")}
    assert top == {"_store.json", "_failures.parquet"}
    assert not (store.parent / "nowhere").exists()
    failures = pq.read_table(store / "_failures.parquet").to_pylist()
    listed = {f["reason"] for f in failures if f["stage"] == "list"}
    assert any("NUL" in r for r in listed) and any("control characters" in r for r in listed)


def test_corpus_run_leaks_no_credentials(corpus_run):
    secrets = corpus_run["secrets"]
    assert secrets and all(len(s) >= 16 for s in secrets)
    store = Path(corpus_run["store"])
    for secret in secrets:
        assert secret not in corpus_run["output"]
        for name in ("_store.json", "_failures.parquet"):
            assert secret.encode() not in (store / name).read_bytes(), name
        for part in store.glob("part-*.parquet"):
            assert secret.encode() not in part.read_bytes()
    assert corpus_run["ray_log_hits"] == [], "Ray's session logs hold a secret"


# ------------------------------------------------------------------------------ storage faults, in-process


def _run_cli(main, parser, argv, capsys) -> str:
    """Run a command like its __main__ does; return its one stderr line (exit code 2 asserted)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, parser, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == cli.EXIT_USER_ERROR, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two") / "videos"
    folder.mkdir()
    for seed in (1, 2):
        write_video(folder / f"Clip00{seed}.mp4", frames(12, 32, 32, seed=seed))
    return folder


def test_missing_input_bucket_is_one_line_before_any_work(ray_cluster, tmp_path, capsys):
    store = tmp_path / "store"
    bucket = f"missing-{uuid.uuid4().hex[:10]}"
    err = _run_cli(
        extract_job.main,
        extract_job.get_args_parser(),
        [f"s3://{bucket}/videos/", "--out", str(store), *CLI_SETTINGS],
        capsys,
    )
    assert err == f"error: s3://{bucket}/videos/: no such folder, file or prefix"
    assert not store.exists()


def test_missing_output_bucket_is_one_line_before_any_work(ray_cluster, s3_endpoint, two_videos, capsys):
    import s3fs

    bucket = f"missing-{uuid.uuid4().hex[:10]}"
    err = _run_cli(
        extract_job.main,
        extract_job.get_args_parser(),
        [str(two_videos), "--out", f"s3://{bucket}/store", *CLI_SETTINGS],
        capsys,
    )
    assert err.startswith(f"error: s3://{bucket}/store/_store.json: cannot write: ")
    assert "bucket does not exist" in err
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    assert not fs.exists(bucket)


def test_unwritable_local_prefix_is_one_line_before_any_work(ray_cluster, two_videos, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the store's parent folder should be\n")
    err = _run_cli(
        extract_job.main,
        extract_job.get_args_parser(),
        [str(two_videos), "--out", str(blocker / "store"), *CLI_SETTINGS],
        capsys,
    )
    assert err.startswith(f"error: {blocker}/store/_store.json: cannot write: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert blocker.read_text().startswith("a file where")


def _objects(s3, bucket: str) -> dict[str, str]:
    """Every key and ETag of the bucket (one unprefixed listing: see the module docstring on moto)."""
    return {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_read_only_s3_store_is_refused_before_any_work(ray_cluster, iam_s3, two_videos, monkeypatch, capsys):
    """A store the credentials can read but not write: refused by the write check, nothing changes."""
    s3, bucket = iam_s3["s3"], iam_s3["bucket"]
    settings = store_settings(SETTINGS, SETTINGS.spec(), "random")
    meta = json.dumps(settings.to_dict(), indent=2).encode()
    s3.put_object(Bucket=bucket, Key="readonly/store/_store.json", Body=meta)
    before = _objects(s3, bucket)
    for key, value in iam_s3["reader"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", iam_s3["endpoint"])
    store = f"s3://{bucket}/readonly/store"
    err = _run_cli(
        extract_job.main,
        extract_job.get_args_parser(),
        [str(two_videos), "--out", store, *CLI_SETTINGS],
        capsys,
    )
    assert err.startswith(f"error: {store}/_store.json: cannot write: access denied"), err
    assert _objects(s3, bucket) == before
    for secret in _secrets(iam_s3["reader"]):
        assert secret not in err


@pytest.mark.slow
def test_killed_writer_leaves_no_partial_object(tmp_path):
    """A local atomic write killed mid-way leaves only a dot-prefixed temporary name, never the target."""
    from anomaly import uris

    target = tmp_path / "store" / "part-x.parquet"
    code = (
        "import os, sys; from anomaly import uris\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), 9)  # die between writing and renaming\n"
        f"uris.write_bytes_atomic({str(target)!r}, b'x' * 100000)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in target.parent.iterdir())
    assert not target.exists() and len(left) == 1 and uris.TEMP_FILE.match(left[0]), left
    assert uris.remove_stale_temp_files(str(target.parent), older_than=time.time() - 3600) == []  # too new
    assert len(uris.remove_stale_temp_files(str(target.parent), older_than=time.time() + 1)) == 1
    assert list(target.parent.iterdir()) == []
