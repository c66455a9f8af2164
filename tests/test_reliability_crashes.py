"""Reliability under crashes (issue 7): a killed model actor, a job SIGKILLed twice, training killed and resumed.

Real processes are killed with SIGKILL, only processes this test started: the extractor actor is
found among the descendants of this pytest process (whose session Ray it belongs to), the jobs
are subprocesses started here. Nothing in the code under test is replaced.
"""

from __future__ import annotations

import collections
import csv
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import cmdline, descendants, job_command, job_env, run_and_kill, tiny_settings, write_h264

from anomaly import store as feature_store
from anomaly.extraction import decode_video, extract, sampling_of
from anomaly.extractors import ClipFeatureExtractor
from anomaly.segments import pool_segments
from anomaly.synthetic.features import make_feature_store

SETTINGS = tiny_settings(clip_len=4, batch_size=4, flush_every=1)
CLI_SETTINGS = ["--backbone", "r3d_18", "--weights", "none", "--clip-len", "4", "--crop", "32,32"]


def write_video(path: Path, num_frames: int, seed: int, height: int = 32, width: int = 32) -> Path:
    yy, xx = np.mgrid[0:height, 0:width]
    frames = (
        np.stack(
            [(xx * 5 + t * 9 + seed * 17) % 256, (yy * 7 + t * 5) % 256, np.full_like(xx, (seed * 30) % 256)],
            axis=-1,
        )
        for t in range(num_frames)
    )
    return write_h264(path, frames)


def make_videos(folder: Path, count: int, num_frames: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f"Clip{i:03d}.mp4", num_frames, seed=i) for i in range(count)]


def raw_ids(store: str) -> collections.Counter:
    """Every row of every part file, without the store reader's de-duplication."""
    ids: collections.Counter = collections.Counter()
    for part in feature_store.part_files(store):
        ids.update(pq.read_table(part, columns=["video_id"]).column("video_id").to_pylist())
    return ids


def store_features(store: str) -> dict[str, np.ndarray]:
    table = feature_store.read_table(store)
    features = feature_store.features_from_arrow(table.column("features"))
    return dict(zip(table.column("video_id").to_pylist(), features, strict=True))


def direct_features(uri: str, video_id: str) -> np.ndarray:
    """The reference without Ray: decode, run the same backbone, pool into 32 segments."""
    spec = SETTINGS.spec()
    rows = list(decode_video({"uri": uri, "video_id": video_id}, sampling=sampling_of(SETTINGS, spec)))
    assert rows and not rows[-1]["error"]
    rows = [r for r in rows if r["kind"] == "clip"]
    model = ClipFeatureExtractor("r3d_18", None, crop=spec.crop, clip_len=spec.clip_len, device="cpu")
    out = model({"clip": np.stack([r["clip"] for r in rows])})
    order = np.argsort([r["clip_index"] for r in rows])
    return pool_segments(out["features"][order])


# ------------------------------------------------------------------------------------ a killed actor


def test_killed_extractor_actor_is_restarted_and_every_video_lands_once(ray_cluster, tmp_path):
    videos = make_videos(tmp_path / "videos", count=10, num_frames=48)  # 12 clips each
    store = str(tmp_path / "store")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = extract(str(tmp_path / "videos"), store, SETTINGS)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed: list[int] = []
    committed_at_kill = None
    try:
        while thread.is_alive():
            if not killed and os.path.isdir(store) and feature_store.part_files(store):
                actors = [pid for pid in descendants([os.getpid()]) if "ClipFeatureExtractor" in cmdline(pid)]
                for pid in actors:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                if actors:
                    committed_at_kill = len(feature_store.video_ids(store))
            time.sleep(0.01)
    finally:
        thread.join()  # never leave a run going into the next test
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert killed, "no extractor actor was found to kill"
    assert committed_at_kill is not None and committed_at_kill < len(videos), "the kill came after the work"
    assert sorted(report.extracted) == [v.stem for v in videos] and report.failed == []
    assert raw_ids(store) == collections.Counter({v.stem: 1 for v in videos})  # exactly once each
    features = store_features(store)
    for video in videos[:: len(videos) // 3]:  # a few, against a decode + model pass without Ray
        np.testing.assert_allclose(features[video.stem], direct_features(str(video), video.stem), atol=1e-4)
    print(f"\nkilled actor pid(s) {killed} with {committed_at_kill}/{len(videos)} videos committed")


# ---------------------------------------------------------------------------- a job killed, twice


def test_job_killed_twice_then_resumed_equals_an_uninterrupted_run(ray_cluster, tmp_path):
    folder = tmp_path / "videos"
    videos = make_videos(folder, count=8, num_frames=40)
    (folder / "Text001.mp4").write_text("not a video\n")  # a failure row is rewritten with every flush
    reference = str(tmp_path / "reference")
    uninterrupted = extract(str(folder), reference, SETTINGS)
    assert len(uninterrupted.extracted) == len(videos) and len(uninterrupted.failed) == 1

    store = str(tmp_path / "store")
    command = job_command(
        "extract", folder, "--out", store, *CLI_SETTINGS, "--batch-size", 4, "--flush-every", 1
    )
    env = job_env(ray_cluster)
    progress = []
    for kill_after in (1, 2):  # the 1st part file of the first run, the 2nd of the second run
        before = len(feature_store.part_files(store))
        status = run_and_kill(
            command,
            env,
            tmp_path / f"run{kill_after}.log",
            lambda before=before, n=kill_after: len(feature_store.part_files(store)) >= before + n,
        )
        log = (tmp_path / f"run{kill_after}.log").read_text()
        assert status == -signal.SIGKILL, log[-3000:]
        for part in feature_store.part_files(store):  # whatever the kill cut, every part file is whole
            assert pq.read_table(part).num_rows == 1
        progress.append(len(feature_store.video_ids(store)))
    assert 1 <= progress[0] < progress[1] < len(videos), progress

    resumed = extract(str(folder), store, SETTINGS)
    assert set(resumed.skipped) == set(raw_ids(store)) - set(resumed.extracted)
    assert raw_ids(store) == collections.Counter({v.stem: 1 for v in videos})
    assert not [p for p in os.listdir(store) if p.startswith(".")]  # stale temporary files removed
    expected, got = store_features(reference), store_features(store)
    assert set(got) == set(expected)
    for video_id, features in expected.items():
        np.testing.assert_allclose(got[video_id], features, atol=1e-5, err_msg=video_id)
    columns = ["video_id", "split", "label", "anomaly_class", "num_frames", "fps", "source_uri"]
    ref_rows = sorted(feature_store.read_table(reference, columns=columns).to_pylist(), key=str)
    assert sorted(feature_store.read_table(store, columns=columns).to_pylist(), key=str) == ref_rows
    failures = feature_store.read_failures(store).to_pylist()
    assert [(f["video_id"], f["stage"]) for f in failures] == [("Text001", "decode")]
    print(f"\nkilled with {progress[0]} then {progress[1]} of {len(videos)} videos committed; resumed to all")


# ------------------------------------------------------------------------------ training killed, resumed


def _checkpoints(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "ray_results" / "train").glob("checkpoint_2*")}


def _epoch(run_dir: Path, name: str) -> int:
    """The epoch a checkpoint folder holds; -1 when its file was cut short by the kill."""
    path = run_dir / "ray_results" / "train" / name / "checkpoint.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - an incomplete file is not a checkpoint
        return -1


def test_training_killed_after_its_second_checkpoint_resumes_at_the_next_epoch(ray_cluster, tmp_path):
    from ray_jobs import train as train_job

    store = str(tmp_path / "store")
    # Epochs long enough (a one-worker fit starts in about a second) for the kill to fall mid-run.
    make_feature_store(store, num_train=48, num_test=8, feature_dim=256, signal=1.0, seed=3)
    config = tmp_path / "fast.yaml"
    max_epochs = 30
    config.write_text(f"max_epochs: {max_epochs}\npatience: 100\nbatch_size: 4\n")
    run_dir = tmp_path / "run"
    argv = ["--features", store, "--out", str(run_dir), "--config", str(config), "--max-failures", "0"]
    seen: set[str] = set()

    def two_checkpoints() -> bool:
        seen.update(_checkpoints(run_dir) if (run_dir / "ray_results").exists() else set())
        return len(seen) >= 2

    command = job_command("train", *argv)
    status = run_and_kill(command, job_env(ray_cluster), tmp_path / "train1.log", two_checkpoints)
    assert status == -signal.SIGKILL, (tmp_path / "train1.log").read_text()[-3000:]
    assert not (run_dir / "model.pt").exists()  # killed before the end
    left = _checkpoints(run_dir)
    last_epoch = max(_epoch(run_dir, name) for name in left)
    assert 1 <= last_epoch < max_epochs - 1, last_epoch
    snapshot = run_dir / "ray_results" / "train" / "checkpoint_manager_snapshot.json"
    recorded = "Ray's snapshot present" if snapshot.exists() else "before Ray wrote its snapshot"

    # The re-run (same --out): count the checkpoints it adds while it runs.
    new: set[str] = set()
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault(
            "code", train_job.main(train_job.get_args_parser().parse_args(argv))
        )
    )
    thread.start()
    try:
        while thread.is_alive():
            new.update(_checkpoints(run_dir) - left)
            time.sleep(0.01)
    finally:
        thread.join()
    new.update(_checkpoints(run_dir) - left)
    assert outcome.get("code") == 0
    with open(run_dir / "history.csv") as handle:
        epochs = [int(float(row["epoch"])) for row in csv.DictReader(handle)]
    assert epochs == list(range(max_epochs))  # every epoch once: the killed run's, then the resumed run's
    assert len(new) == max_epochs - 1 - last_epoch, (sorted(new), last_epoch)  # nothing retrained
    print(
        f"\ntraining killed after epoch {last_epoch} ({recorded}); "
        f"the re-run trained epochs {last_epoch + 1}..{max_epochs - 1}"
    )


@pytest.mark.parametrize(("workers", "process"), [(1, "ray::train_worker"), (2, "RayTrainWorker")])
def test_train_worker_killed_mid_run_resumes_from_its_checkpoint_without_hanging(
    ray_cluster, tmp_path, workers, process
):
    """A training worker SIGKILLed after its first checkpoint, --max-failures 1, and the run finishes.

    One worker: its Ray task is retried and resumes from the stored checkpoint. Two workers: Ray
    Train restarts the worker group, which resumes from the checkpoint and reads the validation
    set afresh (a Ray Train dataset, no longer a split made once in the driver)."""
    from ray_jobs import train as train_job

    store = str(tmp_path / "store")
    make_feature_store(store, num_train=48, num_test=8, feature_dim=256, signal=1.0, seed=3)
    config = tmp_path / "fast.yaml"
    max_epochs = 30 if workers == 1 else 5  # a one-worker epoch takes a fraction of a second
    config.write_text(f"max_epochs: {max_epochs}\nbatch_size: 4\nval_fraction: 0.3\n")
    run_dir = tmp_path / "run"
    argv = ["--features", store, "--out", str(run_dir), "--config", str(config), "--max-failures", "1"]
    argv += ["--num-workers", str(workers)]
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["code"] = train_job.main(train_job.get_args_parser().parse_args(argv))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed: list[int] = []
    try:
        while thread.is_alive():
            if not killed and (run_dir / "ray_results").exists() and _checkpoints(run_dir):
                found = [pid for pid in descendants([os.getpid()]) if process in cmdline(pid)]
                for pid in found:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.01)
    finally:
        thread.join()
    assert "error" not in outcome, outcome.get("error")
    assert killed, f"no {process} process was found to kill"
    assert outcome["code"] == 0 and (run_dir / "model.pt").exists()
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(float(row["epoch"])) for row in rows][-1] == max_epochs - 1
    assert all(0 <= float(row["val_video_auc"]) <= 1 for row in rows if row["val_video_auc"] != "nan")
