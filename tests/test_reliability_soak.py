"""Soak: many tiny clips through the real pipeline with 2 model actors; every input accounted for, flat driver RSS.

CI runs ``ANOMALY_SOAK_VIDEOS`` clips (default 48); ``ANOMALY_SOAK_VIDEOS=200 python -m pytest -s
tests/test_reliability_soak.py`` is the full soak whose figures are in benchmarks/RESULTS.md.
Every 16th input is a text file named .mp4, so failure records are written throughout the run too.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from helpers import tiny_settings, write_h264

from anomaly import store as feature_store
from anomaly.extraction import extract

NUM_VIDEOS = int(os.environ.get("ANOMALY_SOAK_VIDEOS", "48"))
BAD_EVERY = 16
SETTINGS = tiny_settings(
    clip_len=4,
    batch_size=16,
    flush_every=16,
    concurrency=(2, 2),  # two model actors ...
    num_cpus_per_actor=0.5,  # ... on half a core each, so decoding keeps a core on 2-core machines
    decode_num_cpus=0.5,
)


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_clips(folder: Path, count: int) -> tuple[list[str], list[str]]:
    """``count`` inputs: 16-frame 32x32 H.264 clips, every ``BAD_EVERY``-th a text file; (good ids, bad ids)."""
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:32, 0:32]
    good, bad = [], []
    for i in range(count):
        name = f"Soak{i:04d}"
        if i % BAD_EVERY == BAD_EVERY - 1:
            (folder / f"{name}.mp4").write_text("not a video\n")
            bad.append(name)
            continue
        frames = [
            np.stack([(xx * 7 + t * 11 + i) % 256, (yy * 5 + i * 3) % 256, (xx + yy + t) % 256], -1)
            for t in range(16)
        ]
        write_h264(folder / f"{name}.mp4", frames, options={"preset": "ultrafast", "threads": "1"})
        good.append(name)
    return good, bad


def test_soak_every_input_accounted_for_and_driver_memory_flat(ray_cluster, tmp_path):
    started = time.monotonic()
    good, bad = write_clips(tmp_path / "videos", NUM_VIDEOS)
    generated = time.monotonic() - started
    store = str(tmp_path / "store")
    samples: list[tuple[float, int, int]] = []  # (seconds, rss, videos committed so far)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            parts = feature_store.part_files(store) if os.path.isdir(store) else []
            samples.append((time.monotonic() - started, rss_bytes(), len(parts) * SETTINGS.flush_every))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    before = rss_bytes()
    sampler.start()
    try:
        report = extract(str(tmp_path / "videos"), store, SETTINGS)
    finally:
        done.set()
        sampler.join()
    after = rss_bytes()

    # Every input is a row or a failure record, exactly once.
    ids = []
    for part in feature_store.part_files(store):
        ids += pq.read_table(part, columns=["video_id"]).column("video_id").to_pylist()
    failures = feature_store.read_failures(store).to_pylist()
    assert sorted(ids) == sorted(good) and sorted(report.extracted) == sorted(good)
    assert sorted(f["video_id"] for f in failures) == sorted(bad)
    assert all(f["reason"].startswith("not a video") for f in failures)

    # Flat: the driver's RSS once the run is under way (after the first part file) vs its peak after that.
    running = [rss for _, rss, committed in samples if committed > 0] or [after]
    settled, peak = running[0], max(running + [after])
    mib = 1024 * 1024
    figures = (
        f"soak: {NUM_VIDEOS} inputs ({len(good)} clips of 16 frames 32x32, {len(bad)} bad), 2 actors; "
        f"generated in {generated:.1f} s, extracted in {report.seconds:.1f} s "
        f"({len(good) / report.seconds:.1f} videos/s); driver RSS {before / mib:.0f} MiB before, "
        f"{settled / mib:.0f} MiB at the first part file, peak {peak / mib:.0f} MiB, {after / mib:.0f} MiB after "
        f"({len(samples)} samples)"
    )
    print("\n" + figures)
    assert peak - settled < 150 * mib, figures
