"""Where alarms go: Parquet part files under ``OUT/alarms/``, a webhook, and server-sent-event subscribers.

- :class:`PartWriter`: every closed alarm is one atomic Parquet part file
  (``OUT/alarms/part-CAMERA-STARTMS.parquet``, named after its content, so a
  re-write replaces itself), readable while the service runs
  (``pyarrow.parquet.read_table("OUT/alarms")``);
- :class:`Webhook`: a background thread POSTs each event as JSON with bounded
  retries and backoff; its queue is bounded and drops the oldest event when a
  dead webhook lets it fill, so scoring never waits for it;
- :class:`EventHub`: fan-out of events to SSE subscribers (bounded queues; a
  slow subscriber loses events, never blocks the others).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import queue
import re
import threading
import time
import urllib.request
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from anomaly import uris
from anomaly.live.masking import mask_text, mask_url

logger = logging.getLogger(__name__)

ALARMS_DIR = "alarms"
ALARM_SCHEMA = pa.schema(
    [
        ("camera", pa.string()),
        ("start", pa.timestamp("us", tz="UTC")),
        ("end", pa.timestamp("us", tz="UTC")),
        ("peak_score", pa.float64()),
        ("mean_score", pa.float64()),
        ("clips", pa.int64()),
    ]
)


def when(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, tz=timezone.utc) if t is not None else None


def alarm_json(alarm) -> dict:
    """A :class:`~anomaly.live.scorer.LiveAlarm` as the API's JSON (wall-clock ISO 8601 times)."""
    return {
        "camera": alarm.camera,
        "start": when(alarm.start).isoformat(),
        "end": when(alarm.end).isoformat() if alarm.end is not None else None,
        "peak_score": round(float(alarm.peak_score), 6),
        "mean_score": round(float(alarm.mean_score), 6),
    }


class PartWriter:
    """One atomic Parquet part per closed alarm under ``OUT/alarms/``."""

    def __init__(self, out: str) -> None:
        self.folder = uris.join(out, ALARMS_DIR)

    def write(self, alarm) -> str:
        table = pa.Table.from_pylist(
            [
                {
                    "camera": alarm.camera,
                    "start": when(alarm.start),
                    "end": when(alarm.end if alarm.end is not None else alarm.last_end),
                    "peak_score": float(alarm.peak_score),
                    "mean_score": float(alarm.mean_score),
                    "clips": int(alarm.clips),
                }
            ],
            schema=ALARM_SCHEMA,
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", alarm.camera)
        uri = uris.join(self.folder, f"part-{safe}-{int(alarm.start * 1000)}.parquet")
        uris.write_bytes_atomic(uri, buffer.getvalue())
        return uri


class Webhook:
    """POST events to ``url`` from a background thread: bounded queue, bounded retries, never blocking."""

    def __init__(self, url: str, *, retries: int = 3, timeout_s: float = 5.0, max_queue: int = 1000) -> None:
        self.url, self.shown = url, mask_url(url)
        self.retries, self.timeout_s = retries, timeout_s
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.sent = self.failed = self.dropped = 0
        self._deadline: float | None = None  # set by close(): events still queued after it are dropped
        self._stop = threading.Event()  # wakes a retry's back-off when close() gives up waiting
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def post(self, event: dict) -> None:
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()  # drop the oldest: a dead webhook must not hold memory or scoring
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _late(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        while True:
            event = self.queue.get()
            if event is None:
                return
            if self._late():  # closing and out of time: the rest is counted, not sent
                self.dropped += 1
                continue
            body = json.dumps(event).encode()
            for attempt in range(self.retries + 1):
                try:
                    request = urllib.request.Request(
                        self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
                    )
                    with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                        response.read()
                    self.sent += 1
                    break
                except Exception as exc:  # noqa: BLE001 - any failure of the receiver: retry, then log and drop
                    if attempt == self.retries or self._late():
                        self.failed += 1
                        logger.warning(
                            "webhook %s: event dropped after %d attempts: %s",
                            self.shown,
                            attempt + 1,
                            mask_text(str(exc), self.url),
                        )
                        break
                    self._stop.wait(0.5 * 2**attempt)

    @property
    def running(self) -> bool:
        """Whether the sending thread is still alive (it ends in :meth:`close`)."""
        return self._thread.is_alive()

    def close(self, wait_s: float = 10.0) -> None:
        """Deliver what is queued for up to ``wait_s``, then stop: the thread never outlives its owner.

        Events still queued at the deadline are counted in ``dropped``, not sent.
        """
        self._deadline = time.monotonic() + max(0.0, wait_s)
        self.post(None)
        self._thread.join(max(0.0, wait_s))
        self._stop.set()  # a retry waiting out its back-off wakes, sees the deadline, and gives up
        self._thread.join(self.timeout_s + 1.0)


class EventHub:
    """Events to every subscriber's bounded asyncio queue (the SSE endpoint's)."""

    def __init__(self, max_queue: int = 1000) -> None:
        self.max_queue = max_queue
        self.subscribers: set[asyncio.Queue] = set()

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=self.max_queue)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    def publish(self, event: dict) -> None:
        for q in list(self.subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                pass  # a subscriber that does not read loses events; the others do not wait


def sse(event: dict) -> str:
    """One server-sent event: ``event: opened|closed`` and the alarm as JSON."""
    return f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
