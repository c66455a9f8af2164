"""Live cameras on Ray Serve (issue 18): real streams on 127.0.0.1, a real (tiny) backbone, a fitted head.

The camera is :class:`anomaly.synthetic.stream.SyntheticCamera`: an HTTP server writing PyAV's
MPEG-TS output in real time, with a flash event at a known wall time. The backbone is a random
r3d_18 at 8 frames x 32x32; the head is fitted in seconds on synthetic video
(:func:`anomaly.live.demo.fit_demo_checkpoint`), so it separates the event from the street.

Time bounds: the only one asserted is the issue's latency target, with slack for this 2-core
machine shared by other jobs (:data:`LATENCY_SLACK_S`); every other wait is a bounded poll that
fails with what it was waiting for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import free_port, job_command, job_env

from anomaly.alarms import AlarmSettings, find_alarms
from anomaly.checkpoints import load_scorer
from anomaly.extraction import ExtractionSettings
from anomaly.live.demo import DEMO_BACKBONE, DEMO_WINDOW_CLIPS, demo_video, fit_demo_checkpoint
from anomaly.live.masking import mask_text, mask_url
from anomaly.live.readers import CameraReader, ReaderConfig
from anomaly.live.scorer import AlarmTracker, CameraScorer
from anomaly.scoring.single import clip_features
from anomaly.scoring.windows import causal_delay, score_clips, window_features

CLIP_S = DEMO_BACKBONE["clip_len"] / 16.0  # 8 frames at the synthetic camera's 16 fps
WINDOW_S = DEMO_WINDOW_CLIPS * DEMO_BACKBONE["stride"] / 16.0
LATENCY_TARGET_S = CLIP_S + WINDOW_S + 1.0  # the target: one clip + the trailing window + 1 s
# Slack for a 2-core machine shared with other test runs (load averages of 10-20 were seen while
# this was written): the backbone's clip time alone swings from ~30 ms to ~700 ms under that load.
LATENCY_SLACK_S = 8.0


def poll(what: str, check, timeout_s: float = 90.0, every_s: float = 0.25):
    """``check()`` until truthy (returned); after ``timeout_s`` fail saying ``what`` never happened."""
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every_s)
    pytest.fail(f"waited {timeout_s:.0f} s for {what}; last seen: {last!r}")


def get(base: str, path: str):
    with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
        return response.status, json.loads(response.read() or b"null")


def send(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
    request = urllib.request.Request(
        f"{base}{path}", data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
            return response.status, json.loads(data) if data else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def camera(base: str, camera_id: str) -> dict | None:
    return next((row for row in get(base, "/cameras")[1] if row["id"] == camera_id), None)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return Path(fit_demo_checkpoint(str(tmp_path_factory.mktemp("demo") / "run")))


# ----------------------------------------------------------------------------------- no Ray


def test_credentials_are_masked_everywhere_a_url_is_shown():
    url = "rtsp://admin:hunter2@10.1.2.3:554/cam?token=abc123&channel=1"
    shown = mask_url(url)
    assert shown == "rtsp://***@10.1.2.3:554/cam?token=***&channel=1"
    assert "hunter2" not in mask_text(f"cannot open {url}: bad password hunter2", url)
    assert mask_url("/videos/a.mp4") == "/videos/a.mp4"


def test_a_trailing_window_is_the_centred_one_delayed():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 16)).astype(np.float32)
    for window in (1, 4, 5):
        delay = causal_delay(window)
        causal = window_features(feats, window, causal=True)
        centred = window_features(feats, window)
        np.testing.assert_allclose(causal[window - 1 :], centred[window - 1 - delay : 40 - delay], atol=1e-6)
        # the first clips of a stream: the mean of what came so far
        np.testing.assert_allclose(causal[0], feats[0] / np.linalg.norm(feats[0]), atol=1e-6)
    model = torch.nn.Sequential(torch.nn.Linear(16, 1), torch.nn.Sigmoid(), torch.nn.Flatten(0)).eval()
    live = score_clips(model, feats, 5, causal=True)
    batch = score_clips(model, feats, 5)
    np.testing.assert_allclose(live[4:], batch[4 - causal_delay(5) : 40 - causal_delay(5)], atol=1e-6)


def test_alarms_fed_clip_by_clip_are_find_alarms_of_the_whole_stream():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 0.4, size=400)
    for start, length in ((20, 6), (29, 3), (60, 1), (100, 30), (200, 2), (204, 2), (390, 10)):
        scores[start : start + length] = rng.uniform(0.6, 1.0, size=len(scores[start : start + length]))
    start_s = np.arange(400) * 0.5
    settings = AlarmSettings(threshold=0.5, min_duration_s=1.5, merge_gap_s=2.0)
    tracker = AlarmTracker("cam", settings)
    events = []
    for i in range(400):
        events += [
            (i, kind, alarm.start, alarm.end)
            for kind, alarm in tracker.add(start_s[i], start_s[i] + 0.5, scores[i])
        ]
    events += [(400, kind, alarm.start, alarm.end) for kind, alarm in tracker.close()]
    expected = find_alarms("cam", start_s, start_s + 0.5, scores, settings)
    closed = [(start, end) for _, kind, start, end in events if kind == "closed"]
    assert closed == [(a.start_s, a.end_s) for a in expected]
    opened = [(i, start) for i, kind, start, _ in events if kind == "opened"]
    assert [start for _, start in opened] == [a.start_s for a in expected]
    for i, start in opened:  # opened at the first clip at which the prefix has it, not later
        prefix = find_alarms("cam", start_s[: i + 1], start_s[: i + 1] + 0.5, scores[: i + 1], settings)
        assert any(a.start_s == start for a in prefix)
        before = find_alarms("cam", start_s[:i], start_s[:i] + 0.5, scores[:i], settings)
        assert not any(a.start_s == start for a in before)
    assert len(tracker._score) < 50  # noqa: SLF001 - memory stays bounded on an endless stream


def test_a_recording_scored_live_and_in_batch_gives_the_same_alarms_up_to_causality(tmp_path, demo_run):
    video = demo_video(str(tmp_path / "street.mp4"), num_frames=320, event_frames=(160, 224), seed=7)
    model, _ = load_scorer(str(demo_run))
    spec_crop = tuple(DEMO_BACKBONE["crop"])
    settings = ExtractionSettings("r3d_18", None, clip_len=8, stride=8, crop=spec_crop, device="cpu")
    feats, _, fps = clip_features(video.uri, settings)  # batch scoring's clips and features
    # Live: the reader's clips of the same file (played as fast as it decodes) are batch's clips.
    from anomaly.extractors import ClipFeatureExtractor, get_backbone
    from anomaly.video import open_video

    spec = get_backbone("r3d_18").with_input_size(crop=spec_crop, clip_len=8)
    reader = CameraReader(
        "rec",
        video.uri,
        ReaderConfig(clip_len=8, stride=8, resize=spec.resize, crop=spec.crop, realtime=False),
    )
    clips = []
    poll(
        "the reader's 40 clips", lambda: clips.extend(reader.take(64, 0.5)["clips"]) or len(clips) >= 40, 120
    )
    reader.stop()
    batch_reader = open_video(video.uri)
    size = spec.resized_shape(batch_reader.info.height, batch_reader.info.width)
    batch_clips = list(batch_reader.iter_clips(clip_len=8, stride=8, size=size, crop=spec.crop))
    assert len(clips) == len(batch_clips) == len(feats) == 40
    for live_clip, batch_clip in zip(clips, batch_clips, strict=True):
        np.testing.assert_array_equal(live_clip["frames"], batch_clip.frames)
    extractor = ClipFeatureExtractor("r3d_18", None, crop=spec_crop, clip_len=8, device="cpu")
    live_feats = extractor({"clip": np.stack([c["frames"] for c in clips])})["features"]
    np.testing.assert_allclose(live_feats, feats, rtol=1e-4, atol=1e-5)
    # Scores and alarms on the recording's own clock.
    alarm_settings = AlarmSettings()
    start_s = np.arange(40) * 8 / fps
    batch_scores = score_clips(model, feats, DEMO_WINDOW_CLIPS)
    batch_alarms = find_alarms("rec", start_s, start_s + 8 / fps, batch_scores, alarm_settings)
    scorer = CameraScorer("rec", model, DEMO_WINDOW_CLIPS, settings=alarm_settings)
    events = []
    for i in range(40):
        events += scorer.add(live_feats[i], start_s[i], start_s[i] + 8 / fps)[1]
    events += scorer.close()
    live_alarms = [alarm for kind, alarm in events if kind == "closed"]
    assert len(batch_alarms) == len(live_alarms) == 1
    delay_s = causal_delay(DEMO_WINDOW_CLIPS) * 8 / fps
    assert batch_alarms[0].start_s <= 160 / fps <= batch_alarms[0].end_s  # the event is found at all
    assert live_alarms[0].start == pytest.approx(batch_alarms[0].start_s + delay_s, abs=8 / fps + 1e-6)
    assert live_alarms[0].end == pytest.approx(batch_alarms[0].end_s + delay_s, abs=8 / fps + 1e-6)


# ----------------------------------------------------------------------------- Serve, streams


class EventLog:
    """Server-sent events of ``GET /alarms/stream``, collected on a thread."""

    def __init__(self, url: str) -> None:
        self.events: list[dict] = []
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=300) as stream:
                for raw in stream:
                    line = raw.decode().strip()
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
        except OSError:
            pass  # the service went away at the end of the test


@pytest.mark.slow
def test_live_service_on_real_streams(ray_cluster, demo_run, tmp_path):
    from ray import serve

    from anomaly.live.app import READER_NAMESPACE, build_app
    from anomaly.synthetic.stream import SyntheticCamera

    port, cam_port, dead_port = free_port(), free_port(), free_port()
    out = tmp_path / "out"
    config = {
        "checkpoint": str(demo_run),
        "out": str(out),
        "cameras": {"down": f"http://viewer:s3cret-pw@127.0.0.1:{dead_port}/live.ts"},  # nothing listens
        "window_clips": DEMO_WINDOW_CLIPS,
        "reader_cpus": 0.1,
        "stale_after_s": 2.0,
    }
    base = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cam = None
    try:
        serve.run(build_app(config), name="live", route_prefix="/", blocking=False)
        poll("GET /healthz to answer 200", lambda: get(base, "/healthz")[0] == 200, 240)
        events = EventLog(f"{base}/alarms/stream")

        # An unreachable camera is reported failed, with a reason and without its password.
        down = poll(
            "camera 'down' to be failed", lambda: (c := camera(base, "down")) and c["state"] == "failed" and c
        )
        assert "refused" in down["reason"].lower(), down
        assert "s3cret-pw" not in json.dumps(get(base, "/cameras")[1])
        assert down["url"] == f"http://***@127.0.0.1:{dead_port}/live.ts"

        # Bad bodies: one-line 400s; a camera added at run time: 201, and 409 for its id again.
        assert send(base, "POST", "/cameras", b"not json")[0] == 400
        assert send(base, "POST", "/cameras", json.dumps({"id": "x"}).encode())[0] == 400
        status, body = send(base, "POST", "/cameras", json.dumps({"id": "bad id!", "url": "x"}).encode())
        assert status == 400 and "\n" not in body["error"], body
        cam = SyntheticCamera(port=cam_port, first_event_s=12.0, event_s=3.0, period_s=10_000)
        status, row = send(base, "POST", "/cameras", json.dumps({"id": "cam1", "url": cam.url}).encode())
        assert status == 201 and row["id"] == "cam1", row
        assert send(base, "POST", "/cameras", json.dumps({"id": "cam1", "url": cam.url}).encode())[0] == 409
        poll(
            "cam1 to be live",
            lambda: (c := camera(base, "cam1")) and c["state"] == "live" and c["clips_scored"] > 0,
        )
        assert camera(base, "down")["state"] == "failed"  # and the other camera goes on

        # The alarm: none before the event, on /alarms within the latency target after it.
        seen_at = None
        deadline = cam.event_start(0) + 60
        while time.time() < deadline and seen_at is None:
            alarms = [a for a in get(base, "/alarms")[1] if a["camera"] == "cam1"]
            if alarms:
                seen_at = time.time()
                assert cam.event_times, f"an alarm before the event was sent: {alarms}"
            time.sleep(0.1)
        assert seen_at is not None, f"no alarm within 60 s of the event; cameras: {get(base, '/cameras')[1]}"
        latency = seen_at - cam.event_times[0]
        print(
            f"alarm latency {latency:.2f} s (target {LATENCY_TARGET_S:.1f} s + slack {LATENCY_SLACK_S:.0f} s)"
        )
        assert latency <= LATENCY_TARGET_S + LATENCY_SLACK_S
        alarm = alarms[0]
        start = time.mktime(time.strptime(alarm["start"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert start >= cam.event_times[0] - CLIP_S - 1.0, (alarm, cam.event_times)
        poll(
            "an 'opened' server-sent event",
            lambda: any(e["event"] == "opened" and e["camera"] == "cam1" for e in events.events),
        )

        # The stream killed: stale (and the alarm closes after the merge gap); restarted: live again.
        cam.close()
        poll("cam1 to be stale after its stream was killed", lambda: camera(base, "cam1")["state"] == "stale")
        poll(
            "the alarm to close",
            lambda: any(e["event"] == "closed" and e["camera"] == "cam1" for e in events.events),
        )
        cam = SyntheticCamera(port=cam_port, event=None)
        before = camera(base, "cam1")["clips_scored"]
        poll(
            "cam1 live again",
            lambda: (c := camera(base, "cam1"))["state"] == "live" and c["clips_scored"] > before + 2,
        )

        # Its reader lost (killed as with its node): Ray restarts it and the camera resumes.
        import ray

        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("live-reader-cam1-")
        ]
        assert len(names) == 1, names
        ray.kill(ray.get_actor(names[0], namespace=READER_NAMESPACE), no_restart=False)
        before = camera(base, "cam1")["clips_scored"]
        poll(
            "cam1 to resume after its reader was killed",
            lambda: camera(base, "cam1")["clips_scored"] > before + 4,
            120,
        )

        # Removed at run time: 204, gone, its stream connection closed; a second DELETE is a 404.
        assert send(base, "DELETE", "/cameras/cam1")[0] == 204
        assert camera(base, "cam1") is None
        poll("the reader to release its stream", lambda: cam.clients == 0, 30)
        assert send(base, "DELETE", "/cameras/cam1")[0] == 404

        # Alarms as Parquet while running, and /alarms?since filters.
        table = pq.read_table(out / "alarms").to_pylist()
        assert [row["camera"] for row in table] == ["cam1"] and table[0]["end"] is not None
        assert get(base, "/alarms?since=2999-01-01T00:00:00Z")[1] == []
        assert send(base, "GET", "/alarms?since=yesterday")[0] == 400
    finally:
        if cam is not None:
            cam.close()
        serve.shutdown()


@pytest.mark.slow
def test_ctrl_c_leaves_complete_alarm_files(ray_cluster, demo_run, tmp_path):
    """``ray_jobs.live`` on a recording played as a camera: SIGINT while an alarm is open, then read OUT."""
    video = demo_video(str(tmp_path / "street.mp4"), num_frames=320, event_frames=(160, 224), seed=7)
    port, out = free_port(), tmp_path / "out"
    command = job_command(
        "live",
        "--checkpoint",
        demo_run,
        "--out",
        out,
        "--port",
        port,
        "--camera",
        f"rec={video.uri}",
        "--window-clips",
        DEMO_WINDOW_CLIPS,
        "--reader-cpus",
        0.1,
    )
    log = tmp_path / "live.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, env=job_env(ray_cluster), stdout=handle, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        open_alarm = poll(
            "an open alarm on the recording",
            lambda: proc.poll() is None and [a for a in get(base, "/alarms")[1] if a["end"] is None],
            240,
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "alarm opened camera=rec" in text, text[-3000:]
    parts = sorted((out / "alarms").glob("*.parquet"))
    assert parts and not list((out / "alarms").glob("*.tmp*"))
    rows = pq.read_table(out / "alarms").to_pylist()
    assert [r["start"].isoformat() for r in rows] == [
        open_alarm[0]["start"]
    ]  # the open one, closed and written
    assert rows[0]["end"] > rows[0]["start"] and rows[0]["peak_score"] > 0.5


RTSP_SERVER = shutil.which("rtsp-server-perl")


@pytest.mark.skipif(
    RTSP_SERVER is None, reason="no RTSP server: apt-get install rtsp-server-perl (.ci/run installs it)"
)
def test_an_rtsp_camera_from_a_real_rtsp_server(tmp_path, demo_run):
    """Debian's rtsp-server-perl relays a camera PyAV pushes to it (RECORD, RTP over UDP) to the reader."""
    from anomaly.extractors import ClipFeatureExtractor, get_backbone
    from anomaly.synthetic.stream import SyntheticCamera

    client_port, source_port = free_port(), free_port()
    rtp_port = 20000 + 2 * (os.getpid() % 5000)  # the server's UDP ports, spread across test runs
    server = subprocess.Popen(
        [RTSP_SERVER, "--clientport", str(client_port), "--serverport", str(source_port),
         "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1",
         "--rtp_start_port", str(rtp_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cam = SyntheticCamera(first_event_s=8.0, event_s=3.0, period_s=10_000)
    reader = None
    try:
        poll("the RTSP server to listen", lambda: server.poll() is None and _listening(source_port), 30)
        cam.push(f"rtsp://127.0.0.1:{source_port}/cam", options={"rtsp_transport": "udp"})
        spec = get_backbone("r3d_18").with_input_size(crop=(32, 32), clip_len=8)
        url = f"rtsp://viewer:rtsp-secret@127.0.0.1:{client_port}/cam"
        config = ReaderConfig(clip_len=8, stride=8, resize=spec.resize, crop=spec.crop, stale_after_s=2.0)
        poll("the pushed stream to be announced", lambda: _listening(client_port), 30)
        reader = CameraReader("rtsp", url, config)
        model, _ = load_scorer(str(demo_run))
        extractor = ClipFeatureExtractor("r3d_18", None, crop=(32, 32), clip_len=8, device="cpu")
        scorer = CameraScorer("rtsp", model, DEMO_WINDOW_CLIPS)
        opened = []

        def step():
            taken = reader.take(16, 0.5)
            for clip in taken["clips"]:
                feats = extractor({"clip": clip["frames"][None]})["features"][0]
                opened.extend(
                    a
                    for kind, a in scorer.add(feats, clip["start_time"], clip["end_time"])[1]
                    if kind == "opened"
                )
            assert "rtsp-secret" not in json.dumps(taken["status"])
            return opened

        poll("an alarm on the RTSP camera's event", step, 90)
        assert cam.event_times and opened[0].start >= cam.event_times[0] - CLIP_S - 1.0
        assert reader.status()["state"] == "live" and reader.status()["url"].startswith("rtsp://***@")
        server.terminate()
        server.wait(10)
        poll("the RTSP camera to go stale", lambda: reader.status()["state"] in ("stale", "failed"), 60)
    finally:
        if reader is not None:
            reader.stop()
        cam.close()
        if server.poll() is None:
            server.kill()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_bad_flags_are_one_line_errors(demo_run, capsys):
    from anomaly import cli
    from ray_jobs import live

    for argv, expected in (
        (["--camera", "rtsp://u:secret-pw@h/x"], "error: --checkpoint: required"),
        (
            ["--checkpoint", str(demo_run), "--camera", "rtsp://u:secret-pw@h/x"],
            "error: --camera: expected ID=URL",
        ),
        (["--checkpoint", str(demo_run), "--camera", "a=x", "--camera", "a=y"], "given twice"),
        (["--checkpoint", str(demo_run), "--threshold", "2"], "error: --threshold: must be"),
        (["--checkpoint", str(demo_run), "--merge-gap", "-1"], "error: --merge-gap=-1.0: must be >= 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(live.main, live.get_args_parser(), argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
        assert "secret-pw" not in err


def test_a_corrupt_stream_is_failed_with_a_reason():
    """An HTTP "camera" sending bytes that are no video: failed, with FFmpeg's one-line reason."""
    import http.server

    class Garbage(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            rng = np.random.default_rng(0)
            try:
                for _ in range(200):
                    self.wfile.write(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
                    time.sleep(0.01)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reader = CameraReader(
        "noise", f"http://127.0.0.1:{server.server_address[1]}/x.ts",
        ReaderConfig(clip_len=8, stride=8, resize=(36,), crop=(32, 32), open_timeout_s=5, read_timeout_s=3),
    )  # fmt: skip
    try:
        status = poll(
            "the corrupt camera to be failed", lambda: (s := reader.status())["state"] == "failed" and s, 60
        )
        assert status["reason"] and "\n" not in status["reason"], status
        assert reader.take(16, 0.1)["clips"] == []
    finally:
        reader.stop()
        server.shutdown()
        server.server_close()


def test_a_serve_config_file_or_serve_run_gives_the_same_settings_as_the_flags():
    from anomaly.errors import AnomalyError
    from anomaly.live.app import LiveConfig

    text = LiveConfig.from_dict(
        {"checkpoint": "run", "out": "o", "threshold": "0.7", "window_clips": "5", "crop": "32,32",
         "cameras": "gate=rtsp://u:p@h/x", "clip_len": "None"}
    )  # fmt: skip
    assert (text.threshold, text.window_clips, text.crop, text.clip_len) == (0.7, 5, (32, 32), None)
    assert text.cameras == {"gate": "rtsp://u:p@h/x"}
    listed = LiveConfig.from_dict({"checkpoint": "run", "out": "o", "cameras": ["a=x.mp4", "b=y.mp4"]})
    assert listed.cameras == {"a": "x.mp4", "b": "y.mp4"}
    with pytest.raises(AnomalyError, match="unknown keys"):
        LiveConfig.from_dict({"checkpoint": "run", "out": "o", "thresold": 0.7})


def test_the_webhook_retries_a_bounded_number_of_times_and_never_blocks():
    import http.server

    from anomaly.live.sinks import Webhook

    received, attempts = [], []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802 - http.server's name
            attempts.append(1)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if len(attempts) == 1:  # the first attempt fails: the event comes again
                self.send_response(503)
                self.end_headers()
                return
            received.append(body)
            self.send_response(204)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Webhook(f"http://127.0.0.1:{server.server_address[1]}/hook")
        hook.post({"event": "opened", "camera": "cam1"})
        poll("the webhook to deliver after one retry", lambda: received, 30)
        assert received == [{"event": "opened", "camera": "cam1"}] and len(attempts) == 2
    finally:
        server.shutdown()
        server.server_close()
        hook.close()
    assert not hook.running
    dead = Webhook(f"http://127.0.0.1:{free_port()}/hook", retries=2, max_queue=10)
    for k in range(1000):  # a dead receiver: posting never waits for it, the queue stays bounded
        dead.post({"event": "opened", "n": k})
    assert dead.queue.qsize() <= 10 and dead.dropped >= 990 - 1
    poll("the dead webhook to give up on an event", lambda: dead.failed >= 1, 30)
    # Closing does not wait out the dead receiver's retries: the thread ends, the rest is counted.
    dead.close(wait_s=0)
    assert not dead.running
    assert dead.sent == 0 and dead.failed + dead.dropped == 1000
