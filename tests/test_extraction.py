"""Video -> feature store extraction: real videos (PyAV), real Ray Data, real S3 (moto), a real backbone.

The backbone is r3d_18 with its seeded random weights at 8 x 32 x 32, small enough for 2 CPU cores.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import job_command, job_env, run_and_kill, tiny_settings

from anomaly import cli, uris
from anomaly import store as feature_store
from anomaly.errors import AnomalyError
from anomaly.extraction import (
    VideoTracker,
    decode_video,
    extract,
    list_videos,
    sampling_of,
)
from anomaly.ground_truth import GroundTruth
from anomaly.listing import assign_ids
from anomaly.segments import SegmentAccumulator, pool_segments
from anomaly.synthetic import make_video_set, write_annotations
from ray_jobs import extract as extract_job

SETTINGS = tiny_settings(clip_len=8, batch_size=8, flush_every=2)
CLI_SETTINGS = ["--backbone", "r3d_18", "--weights", "none", "--clip-len", "8", "--crop", "32,32"]
DIM = 512
NUM_FRAMES = 80  # 10 clips of 8 frames


def store_rows(store: str) -> dict[str, dict]:
    table = feature_store.read_table(store)
    features = feature_store.features_from_arrow(table.column("features"))
    rows = table.drop(["features"]).to_pylist()
    return {row["video_id"]: {**row, "features": feats} for row, feats in zip(rows, features, strict=True)}


def part_files(store: str) -> list[str]:
    fs, path = uris.filesystem(store)
    return sorted(p for p in fs.ls(path, detail=False) if os.path.basename(p).startswith("part-"))


def listing(store: str) -> dict[str, int]:
    fs, path = uris.filesystem(store)
    return {p: info["size"] for p, info in fs.find(path, detail=True).items()}


@pytest.fixture(scope="module")
def local_videos(tmp_path_factory):
    """6 good synthetic videos (3 test) and 3 bad files: empty, truncated, text named .mp4."""
    root = tmp_path_factory.mktemp("extract-local")
    folder = root / "videos"
    videos = make_video_set(
        str(folder), num_normal=3, num_abnormal=3, num_frames=NUM_FRAMES, height=48, width=64, seed=3
    )
    annotations = str(root / "Temporal_Anomaly_Annotation.txt")
    write_annotations(videos, annotations)
    (folder / "Empty001_x264.mp4").write_bytes(b"")
    whole = Path(videos[0].uri).read_bytes()
    (folder / "Truncated001_x264.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "Text001_x264.mp4").write_text("this is not a video\n")
    (folder / "notes.md").write_text("not listed: no video extension\n")
    return str(folder), annotations, videos


@pytest.fixture(scope="module")
def local_run(local_videos, tmp_path_factory, ray_cluster):
    folder, annotations, videos = local_videos
    store = str(tmp_path_factory.mktemp("extract-store") / "store")
    report = extract(folder, store, SETTINGS, GroundTruth.load(annotations, None))
    return store, report


# ------------------------------------------------------------------------------------------ end to end


def test_extract_from_s3_into_s3_store(s3_bucket, ray_cluster):
    videos = make_video_set(
        f"{s3_bucket}/videos", num_normal=2, num_abnormal=2, num_frames=40, height=48, width=64, seed=1
    )
    annotations = f"{s3_bucket}/meta/Temporal_Anomaly_Annotation.txt"
    write_annotations(videos, annotations)
    store = f"{s3_bucket}/stores/r3d"
    truth = GroundTruth.load(annotations, None)

    report = extract(f"{s3_bucket}/videos/", store, SETTINGS, truth)

    assert sorted(report.extracted) == sorted(v.video_id for v in videos)
    assert report.skipped == [] and report.failed == [] and report.num_clips == 4 * 5
    rows = store_rows(store)
    assert set(rows) == {v.video_id for v in videos}
    for video in videos:
        row = rows[video.video_id]
        assert row["features"].shape == (32, DIM) and row["features"].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(row["features"], axis=1), 1.0, rtol=1e-5)
        assert row["split"] == video.split
        assert row["label"] == (video.anomaly_class != "Normal")
        assert row["anomaly_class"] == video.anomaly_class
        expected = [list(video.interval)] if video.split == "test" and video.interval else []
        assert row["anomaly_intervals"] == expected
        assert row["num_frames"] == 40 and row["fps"] == pytest.approx(25.0)
        assert row["backbone"] == "r3d_18" and row["source_uri"] == video.uri
    assert any(v.split == "test" and v.interval for v in videos)  # the interval check had something to check
    meta = feature_store.read_metadata(store)
    assert meta.backbone == "r3d_18" and meta.feature_dim == DIM
    assert meta.weights_sha256 == "random" and meta.random_weights is True
    assert (meta.clip_len, meta.stride, meta.crop, meta.source) == (8, 8, (32, 32), "extract")
    assert not uris.exists(f"{store}/_failures.parquet")

    # A re-run is a no-op: nothing to extract, no new part file.
    parts = part_files(store)
    again = extract({v.video_id: v.uri for v in videos}, store, SETTINGS, truth)  # ids given as a mapping
    assert again.extracted == [] and sorted(again.skipped) == sorted(rows) and again.failed == []
    assert again.summary().startswith("0 extracted, 4 skipped as done, 0 failed — see ")
    assert part_files(store) == parts


def test_extract_local_folder_with_bad_files(local_videos, local_run):
    folder, _, videos = local_videos
    store, report = local_run
    good = {v.video_id for v in videos}
    assert set(report.extracted) == good and report.skipped == []
    reasons = {f["video_id"]: f["reason"] for f in report.failed}
    assert set(reasons) == {"Empty001_x264", "Truncated001_x264", "Text001_x264"}
    assert "empty file" in reasons["Empty001_x264"]
    assert "truncated" in reasons["Truncated001_x264"]
    assert "not a video" in reasons["Text001_x264"]
    assert report.summary() == f"6 extracted, 0 skipped as done, 3 failed — see {store}/_failures.parquet"
    assert not report.all_failed

    rows = store_rows(store)
    assert set(rows) == good
    by_id = {v.video_id: v for v in videos}
    for video_id, row in rows.items():
        assert row["features"].shape == (32, DIM) and row["num_frames"] == NUM_FRAMES
        assert row["split"] == by_id[video_id].split
    failures = pq.read_table(f"{store}/_failures.parquet").to_pylist()
    assert {(f["video_id"], f["stage"]) for f in failures} == {(vid, "decode") for vid in reasons}
    assert all(f["uri"].startswith(folder) and "\n" not in f["reason"] for f in failures)
    assert len(part_files(store)) == 3  # flush_every=2 over 6 videos: atomic part files of whole videos
    assert feature_store.clip_files(store) == []  # clip files of settled videos are removed
    assert not os.path.exists(os.path.join(store, feature_store.CLIPS_DIR))
    # Part files are named after their video ids: a retried or repeated commit overwrites itself.
    for part in part_files(store):
        ids = pq.read_table(part, columns=["video_id"]).column("video_id").to_pylist()
        assert os.path.basename(part) == feature_store.part_name(ids)


def test_killed_run_resumes_to_the_same_store(local_videos, local_run, tmp_path, ray_cluster):
    """SIGKILL the real command after its first part file, resume, compare with an uninterrupted run."""
    folder, annotations, videos = local_videos
    reference, _ = local_run
    store = str(tmp_path / "store")
    resumable = ["--batch-size", 4, "--flush-every", 1, "--annotations", annotations, "--frame-counts"]
    command = job_command("extract", folder, "--out", store, *CLI_SETTINGS, *resumable)
    log = tmp_path / "extract.log"
    status = run_and_kill(
        command, job_env(ray_cluster), log, lambda: os.path.isdir(store) and part_files(store), poll_s=0.02
    )
    killed_ids = feature_store.video_ids(store)
    assert status == -signal.SIGKILL, log.read_text()[-3000:]
    assert 1 <= len(killed_ids) < len(videos), "the kill should land after the first video, before the last"
    # A write cut short is at most a dot-prefixed temporary file (readers skip it); every part file is whole.
    for part in part_files(store):
        assert pq.read_table(part).num_rows >= 1, part

    report = extract(folder, store, SETTINGS, GroundTruth.load(annotations, None))
    assert not [p for p in os.listdir(store) if p.startswith(".")]  # the re-run removed stale temporary files
    assert set(report.skipped) == killed_ids
    assert set(report.extracted) == {v.video_id for v in videos} - killed_ids
    resumed, uninterrupted = store_rows(store), store_rows(reference)
    assert set(resumed) == set(uninterrupted)
    for video_id, row in uninterrupted.items():
        assert np.allclose(resumed[video_id]["features"], row["features"], atol=1e-5), video_id
        for key in ("split", "label", "anomaly_class", "anomaly_intervals", "num_frames", "fps"):
            assert resumed[video_id][key] == row[key], (video_id, key)
    assert not os.path.exists(os.path.join(store, "_clips"))  # the killed run's folder adopted, removed


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_a_resumed_run_commits_a_killed_runs_complete_videos_from_their_clips(
    local_videos, local_run, tmp_path
):
    """A killed run's folder (claimed by a process that is gone) whose manifest records complete
    videos: the next run commits them from their clip files without decoding, then removes the folder.
    The folder is made by a real run that kept its clips, claimed again by a dead process id,
    with its bags removed as a kill between manifest and commit would leave them."""
    import json

    from anomaly.extraction import clip_runs

    folder, annotations, videos = local_videos
    reference, _ = local_run
    store = str(tmp_path / "store")
    truth = GroundTruth.load(annotations, None)
    extract(folder, store, replace(SETTINGS, keep_clips=True), truth)
    (run,) = os.listdir(os.path.join(store, "_clips"))
    rows = store_rows(store)
    manifest = []
    for video_id, row in rows.items():
        clips = feature_store.read_clips(store, [video_id])
        files = [
            path
            for path in feature_store.clip_files(store)
            if video_id in set(pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist())
        ]
        num = int(row["num_frames"])
        manifest.append(
            {
                "video_id": video_id,
                "uri": row["source_uri"],
                "num_frames": num,
                "fps": row["fps"],
                "num_clips": clips.num_rows,
                "files": files,
            }
        )
    clip_runs.write_manifest(store, run, manifest)
    owner = {"host": __import__("socket").gethostname(), "pid": _dead_pid(), "heartbeat": 0}
    Path(store, "_clips", run, clip_runs.OWNER_FILE).write_text(json.dumps(owner))
    for part in part_files(store):
        os.remove(part)
    assert clip_runs.abandoned(store, own="") == [run]

    report = extract(folder, store, SETTINGS, truth)
    assert sorted(report.adopted) == sorted(rows) and sorted(report.extracted) == sorted(rows)
    assert "from a killed run's clips" in report.summary()
    assert not os.path.exists(os.path.join(store, "_clips"))  # adopted, then removed whole
    resumed, uninterrupted = store_rows(store), store_rows(reference)
    assert set(resumed) == set(uninterrupted)
    for video_id, row in uninterrupted.items():
        assert np.allclose(resumed[video_id]["features"], row["features"], atol=1e-5), video_id


def test_only_folders_whose_owner_is_gone_count_as_abandoned(tmp_path):
    import json

    from anomaly.extraction import clip_runs

    store = str(tmp_path / "store")
    for run, owner in (
        ("run-1-live", {"pid": os.getpid(), "heartbeat": 0}),  # this process: alive
        ("run-2-dead", {"pid": _dead_pid(), "heartbeat": 0}),
        ("run-3-elsewhere-fresh", {"host": "another-host", "pid": 1, "heartbeat": 9e99}),
        ("run-4-elsewhere-stale", {"host": "another-host", "pid": 1, "heartbeat": 0}),
    ):
        owner.setdefault("host", __import__("socket").gethostname())
        Path(store, "_clips", run).mkdir(parents=True)
        Path(store, "_clips", run, clip_runs.OWNER_FILE).write_text(json.dumps(owner))
    Path(store, "_clips", "run-5-released").mkdir()  # no owner: released, or kept clips
    assert clip_runs.abandoned(store, own="run-2-dead") == ["run-4-elsewhere-stale"]
    assert clip_runs.abandoned(store, own="") == ["run-2-dead", "run-4-elsewhere-stale"]


def test_incompatible_settings_are_refused_before_writing(local_videos, local_run, capsys):
    folder, annotations, _ = local_videos
    store, _ = local_run
    before = listing(store)
    with pytest.raises(AnomalyError) as info:
        extract(folder, store, replace(SETTINGS, clip_len=4), GroundTruth.load(annotations, None))
    assert "clip_len=8 (store) vs 4 (this run)" in str(info.value)
    assert listing(store) == before

    argv = [folder, "--out", store, *CLI_SETTINGS[:-1], "48,48", "--annotations", annotations]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(extract_job.main, extract_job.get_args_parser(), argv)
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the random-weights warning
    assert err.startswith(f"error: {store}: store was made with other settings")
    assert "crop=[32, 32] (store) vs [48, 48] (this run)" in err
    assert listing(store) == before


# ------------------------------------------------------------------------------------------ the parts


def test_list_videos_folder_list_file_and_duplicates(tmp_path):
    (tmp_path / "a" / "Abuse").mkdir(parents=True)
    for name in ("a/Abuse/Abuse001_x264.mp4", "a/Normal_1.AVI", "a/clip.webm", "a/.hidden.mp4", "a/x.json"):
        (tmp_path / name).write_bytes(b"x")
    found = list_videos(str(tmp_path / "a"))
    assert [os.path.relpath(p, tmp_path) for p in found] == [
        "a/Abuse/Abuse001_x264.mp4",
        "a/Normal_1.AVI",
        "a/clip.webm",
    ]
    listed = tmp_path / "videos.txt"
    listed.write_text(f"# my videos\n\na/Abuse/Abuse001_x264.mp4\n{tmp_path}/a/clip.webm\ns3://b/v/X.mp4\n")
    assert list_videos(str(listed)) == sorted(
        [str(tmp_path / "a/Abuse/Abuse001_x264.mp4"), str(tmp_path / "a/clip.webm"), "s3://b/v/X.mp4"]
    )
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "x.json").write_bytes(b"{}")
    with pytest.raises(AnomalyError, match="no videos found"):
        list_videos(str(tmp_path / "nothing"))
    with pytest.raises(AnomalyError, match="no such folder"):
        list_videos(str(tmp_path / "missing"))

    ids, failures = assign_ids(["s3://b/x/A1.mp4", "/data/B1.avi"], None)
    assert ids == {"A1": "s3://b/x/A1.mp4", "B1": "/data/B1.avi"} and failures == []
    store = str(tmp_path / "store")
    with pytest.raises(AnomalyError, match=r"1 duplicate video ids .*A1: /y/A1.avi, s3://b/x/A1.mp4"):
        extract(["s3://b/x/A1.mp4", "/y/A1.avi", "/y/B.mp4"], store, SETTINGS)
    assert not os.path.exists(store)  # refused before anything was written


@pytest.mark.parametrize("num_clips", [1, 5, 31, 32, 33, 100, 257])
def test_segment_accumulator_matches_pool_segments(num_clips):
    rng = np.random.default_rng(num_clips)
    feats = rng.normal(size=(num_clips, 16)).astype(np.float32)
    acc = SegmentAccumulator(num_clips, 16)
    order = rng.permutation(num_clips)
    for chunk in np.array_split(order, min(4, num_clips)):  # out of order, in pieces
        assert not acc.complete
        acc.add(chunk, feats[chunk])
    acc.add(order[:1], feats[order[:1]] + 100)  # a retried task's duplicate counts once
    assert acc.complete and acc.count == num_clips
    np.testing.assert_allclose(acc.pooled(), pool_segments(feats), rtol=1e-5, atol=1e-6)
    if num_clips >= 32:
        assert acc.rows is None  # long videos keep (32, D) sums, not every clip


def _summary(video_id, kind, *, window=0, num_windows=1, runs=(), cell=-1, error="", eof=False, frames=-1):
    """Summary rows as the clip-table writer returns them: runs of clip indices, or a window's end row."""
    rows = [
        dict(kind="clips", lo=lo, hi=hi, cell=cell, file=f"/s/_clips/{video_id}-{lo}.parquet")
        for lo, hi in runs
    ]
    if kind == "end":
        rows = [dict(kind="end", lo=-1, hi=-1, cell=-1, file="")]
    n = len(rows)
    batch = {key: np.array([r[key] for r in rows], dtype=object) for key in ("kind", "file")}
    batch.update(
        video_id=np.array([video_id] * n, dtype=object),
        uri=np.array([f"/v/{video_id}.mp4"] * n, dtype=object),
        window=np.full(n, window),
        num_windows=np.full(n, num_windows),
        cell=np.array([r["cell"] for r in rows]),
        lo=np.array([r["lo"] for r in rows]),
        hi=np.array([r["hi"] for r in rows]),
        num_frames=np.full(n, frames),
        eof=np.full(n, eof),
        fps=np.full(n, 25.0),
        error=np.array([error] * n, dtype=object),
        window_clips=np.zeros(n, dtype=np.int64),
    )
    return batch


def test_tracker_completes_only_whole_videos_and_fails_broken_ones():
    """Out-of-order runs, duplicates and windows: complete only when every window ended and every clip is in."""
    tracker = VideoTracker(clip_len=8, stride=8, cells=0)
    done, failed = [], []

    def feed(batch):
        complete, broken = tracker.consume(batch)
        done.extend(video_id for video_id, _ in complete)
        failed.extend(broken)

    # "Long": 3 windows, 80 frames = 10 clips; the end rows overtake some clip runs; a run arrives twice.
    feed(_summary("Long", "clips", window=0, num_windows=3, runs=[(0, 3)]))
    feed(_summary("Long", "end", window=1, num_windows=3))
    feed(_summary("Long", "end", window=0, num_windows=3))
    feed(_summary("Long", "end", window=2, num_windows=3, eof=True, frames=80))
    feed(_summary("Long", "clips", window=1, num_windows=3, runs=[(4, 6), (4, 5)]))
    assert done == []  # clips 7..9 still missing
    feed(_summary("Long", "clips", window=2, num_windows=3, runs=[(7, 9)]))
    assert done == ["Long"]
    # "Broken": clips, then a window's error: failed, and later rows are ignored.
    feed(_summary("Broken", "clips", runs=[(0, 1)], num_windows=2))
    feed(
        _summary(
            "Broken",
            "end",
            window=1,
            num_windows=2,
            error="truncated or corrupt: decoding failed after 20 frames",
        )
    )
    feed(_summary("Broken", "end", window=0, num_windows=2))
    # "Short": all windows ended, clips missing at the end of the stream.
    feed(_summary("Short", "clips", runs=[(0, 1)]))
    feed(_summary("Short", "end", eof=True, frames=24))
    failed.extend(tracker.finish(["Long", "Broken", "Short", "Never"]))
    assert done == ["Long"]
    assert {video_id: reason for video_id, _, reason in failed} == {
        "Broken": "truncated or corrupt: decoding failed after 20 frames",
        "Short": "incomplete: 2 of 3 clips",
        "Never": "no output from the decode stage",
    }


def test_decode_stage_never_raises(local_videos, tmp_path):
    folder, _, videos = local_videos
    sampling = sampling_of(SETTINGS, SETTINGS.spec())
    rows = list(decode_video({"uri": videos[0].uri, "video_id": videos[0].video_id}, sampling=sampling))
    clips, [end] = rows[:-1], rows[-1:]
    assert [r["clip_index"] for r in clips] == list(range(NUM_FRAMES // 8))
    assert all(r["kind"] == "clip" and r["error"] == "" and r["clip"].shape == (8, 32, 32, 3) for r in clips)
    assert (
        end["kind"] == "end" and end["eof"] and end["num_frames"] == NUM_FRAMES and end["window_clips"] == 10
    )
    for name in ("Empty001_x264.mp4", "Text001_x264.mp4", "Missing001.mp4"):
        [row] = decode_video({"uri": f"{folder}/{name}", "video_id": name[:-4]}, sampling=sampling)
        assert row["error"] and row["kind"] == "end" and row["clip"].shape == (8, 32, 32, 3)
