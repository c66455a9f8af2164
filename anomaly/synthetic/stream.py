"""A live synthetic camera on 127.0.0.1: an HTTP server writing MPEG-TS in real time, events at known times.

For tests, the benchmark and the demo of :mod:`anomaly.live`. The scene is
:mod:`anomaly.synthetic.videos`' street; an event (``flash`` by default) happens
for ``event_s`` seconds every ``period_s`` seconds, starting ``first_event_s``
after the server starts. The camera's clock is the server's: every client sees
frame ``round((now - t0) * fps)``, as a real camera would, however late it joins.

PyAV writes MPEG-TS to any object with ``write``/``flush``, so each GET is
answered by an encoder (x264, ``zerolatency``, a key frame every second) writing
straight into the socket, paced at the frame rate. :attr:`event_times` records
the wall-clock time at which the first anomalous frame of each event went out on
the wire (the start of the latency the benchmark measures).
"""

from __future__ import annotations

import http.server
import logging
import socketserver
import threading
import time
from fractions import Fraction

import av
import numpy as np

from anomaly.synthetic.videos import make_scene

logger = logging.getLogger(__name__)


class _SocketSink:
    def __init__(self, wfile) -> None:
        self.wfile = wfile

    def write(self, data) -> int:
        self.wfile.write(data)
        return len(data)

    def flush(self) -> None:
        self.wfile.flush()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class SyntheticCamera:
    """``with SyntheticCamera(port=…) as cam: cam.url`` serves ``http://127.0.0.1:PORT/live.ts`` until closed."""

    def __init__(
        self,
        *,
        port: int = 0,
        fps: float = 16.0,
        height: int = 64,
        width: int = 80,
        event: str | None = "flash",
        first_event_s: float = 6.0,
        event_s: float = 3.0,
        period_s: float = 12.0,
        seed: int = 0,
    ) -> None:
        self.fps, self.height, self.width = fps, height, width
        self.first_event_s, self.event_s, self.period_s = first_event_s, event_s, period_s
        self.event = event
        self._scene = make_scene(height=height, width=width, event=event, seed=seed)
        self._render_lock = threading.Lock()
        self.event_times: list[float] = []  # wall time the first anomalous frame of each event was sent
        self._sent_events: set[int] = set()
        self._closed = threading.Event()
        self.clients = 0  # connections being served now
        self.t0 = time.time()
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                camera.clients += 1
                try:
                    camera._serve(self.wfile)
                except (BrokenPipeError, ConnectionResetError, OSError, av.FFmpegError):
                    pass  # the client went away, or the camera was closed
                finally:
                    camera.clients -= 1

        self._server = _Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/live.ts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def in_event(self, frame_no: int) -> int | None:
        """Which event (0, 1, …) frame ``frame_no`` belongs to, or None."""
        if not self.event:
            return None
        t = frame_no / self.fps - self.first_event_s
        if t < 0:
            return None
        k = int(t // self.period_s)
        return k if t - k * self.period_s < self.event_s else None

    def event_start(self, k: int) -> float:
        """Wall time event ``k`` starts by the camera's clock."""
        return self.t0 + self.first_event_s + k * self.period_s

    def _frame(self, frame_no: int) -> np.ndarray:
        """Frame ``frame_no``: the street goes on continuously; the event is drawn during its seconds."""
        event = self.in_event(frame_no)
        with self._render_lock:
            if event is None:
                self._scene.interval = None
            else:
                start = int(round((self.first_event_s + event * self.period_s) * self.fps))
                self._scene.interval = (start, start + int(round(self.event_s * self.fps)))
            return self._scene.render(frame_no)

    def _serve(self, wfile) -> None:
        sink = _SocketSink(wfile)
        options = {"flush_packets": "1"}
        with av.open(sink, "w", format="mpegts", options=options, buffer_size=4096) as container:
            self._stream_into(container, sink.flush)

    def push(
        self, url: str, *, container_format: str = "rtsp", options: dict | None = None
    ) -> threading.Thread:
        """Also push the camera to ``url`` (e.g. an RTSP server's ANNOUNCE/RECORD port) until closed."""

        def run() -> None:
            try:
                with av.open(url, "w", format=container_format, options=options or {}) as container:
                    self._stream_into(container, lambda: None)
            except (OSError, av.FFmpegError) as exc:
                logger.warning("push to %s ended: %s", url, exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def _stream_into(self, container, flush) -> None:
        stream = container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "threads": "1",
            "g": str(max(1, int(self.fps))),
        }
        frame_no = int((time.time() - self.t0) * self.fps)
        pts = 0
        while not self._closed.is_set():
            due = self.t0 + frame_no / self.fps
            wait = due - time.time()
            if wait > 0 and self._closed.wait(wait):
                break
            frame = av.VideoFrame.from_ndarray(self._frame(frame_no), format="rgb24")
            frame.pts = pts
            for packet in stream.encode(frame):
                container.mux(packet)
            flush()
            event = self.in_event(frame_no)
            if event is not None and event not in self._sent_events:
                self._sent_events.add(event)
                self.event_times.append(time.time())
            frame_no += 1
            pts += 1

    def close(self) -> None:
        """Stop serving: open connections end (a camera killed), the port is released."""
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SyntheticCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
