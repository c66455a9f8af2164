"""Extraction that scales out (issue 12): workers write the clip table, windows, ids from paths, one decode.

Real H.264 files, a real moto S3, a real local Ray and a real backbone (r3d_18, random weights, 8x32x32).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import tiny_settings

from anomaly import store as feature_store
from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.extraction import ExtractionSettings, commit_videos, decode_video, extract, sampling_of
from anomaly.extractors import ClipFeatureExtractor
from anomaly.listing import assign_ids, list_inputs
from anomaly.segments import pool_segments
from anomaly.synthetic import make_video

REPO = Path(__file__).resolve().parents[1]
SETTINGS = tiny_settings(clip_len=8, batch_size=8, flush_every=2, window_seconds=2.0)


def direct_features(uri: str, settings: ExtractionSettings) -> tuple[np.ndarray, int]:
    """The reference without Ray and without windows: one decode, the same backbone, pool_segments."""
    sampling = replace(sampling_of(settings, settings.spec()), window_seconds=0)
    rows = list(decode_video({"uri": uri, "video_id": "v"}, sampling=sampling))
    assert rows[-1]["kind"] == "end" and not rows[-1]["error"], rows[-1]["error"]
    clips = [r for r in rows if r["kind"] == "clip"]
    spec = settings.spec()
    model = ClipFeatureExtractor("r3d_18", None, crop=spec.crop, clip_len=spec.clip_len, device="cpu")
    features = model({"clip": np.stack([r["clip"] for r in clips])})["features"]
    return pool_segments(features), len(clips)


def test_decode_stage_imports_no_torch(tmp_path):
    """A decode worker imports the decode stage and decodes; torch must never be loaded (~650 MiB less)."""
    video = make_video(str(tmp_path / "v.mp4"), num_frames=20, height=32, width=32)
    script = (
        "import sys\n"
        "from anomaly.extraction.decode import ClipSampling, decode_video\n"
        "s = ClipSampling(clip_len=8, stride=8, crop=(32, 32), resize=(32, 32))\n"
        f"rows = list(decode_video({{'uri': {video.uri!r}, 'video_id': 'v'}}, sampling=s))\n"
        "assert [r['kind'] for r in rows] == ['clip', 'clip', 'end'], rows[-1]['error']\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def test_windows_give_the_clips_of_one_pass(tmp_path):
    """A long video split into windows (separate decodes, seeking) gives exactly the clips of one pass."""
    video = make_video(str(tmp_path / "long.mp4"), num_frames=230, fps=25.0, height=32, width=48, seed=4)
    sampling = sampling_of(SETTINGS, SETTINGS.spec())
    whole = list(
        decode_video({"uri": video.uri, "video_id": "v"}, sampling=replace(sampling, window_seconds=0))
    )
    split = list(
        decode_video({"uri": video.uri, "video_id": "v"}, sampling=replace(sampling, window_seconds=2))
    )
    ends = [r for r in split if r["kind"] == "end"]
    assert len(ends) == 5 and [e["window"] for e in ends] == list(range(5))  # 230 frames / 50 a window
    assert [e["eof"] for e in ends] == [False] * 4 + [True] and ends[-1]["num_frames"] == 230
    clips = {r["clip_index"]: r["clip"] for r in split if r["kind"] == "clip"}
    reference = [r for r in whole if r["kind"] == "clip"]
    assert sorted(clips) == [r["clip_index"] for r in reference] == list(range(230 // 8))
    for row in reference:
        np.testing.assert_array_equal(clips[row["clip_index"]], row["clip"])


def test_ids_are_relative_paths_and_duplicates_stop_the_run(tmp_path):
    for name in (
        "cam01/2026-11-20/0900.mp4",
        "cam02/2026-11-20/0900.mp4",
        "Abuse028_x264.mp4",
        "x/a.mp4",
        "x/a.avi",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found, root = list_inputs(str(tmp_path))
    with pytest.raises(AnomalyError, match=r"1 duplicate video ids \(ids are relative paths .*x/a: "):
        assign_ids(found, root)
    (tmp_path / "x" / "a.avi").unlink()
    ids, failures = assign_ids(*list_inputs(str(tmp_path)))
    assert sorted(ids) == ["Abuse028_x264", "cam01/2026-11-20/0900", "cam02/2026-11-20/0900", "x/a"]
    assert failures == []


def test_pooling_counts_a_clip_written_twice_once(tmp_path):
    """Two clip files holding the same clips (a retried task under another batching) pool like one."""
    store = str(tmp_path / "store")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 16)).astype(np.float32)

    def columns(index):
        return {
            "video_id": np.array(["cam/v"] * len(index)),
            "window": np.zeros(len(index), dtype=np.int32),
            "clip_index": index,
            "cell": np.full(len(index), -1),
            "first_frame": index * 8,
            "last_frame": index * 8 + 7,
            "time": index * 8 / 25.0,
            "features": feats[index],
        }

    files = [
        feature_store.write_clip_file(store, feature_store.clips_to_table(columns(np.arange(0, 30)))),
        feature_store.write_clip_file(store, feature_store.clips_to_table(columns(np.arange(20, 40)))),
    ]
    paths = [uris.filesystem(f)[1] for f in files]
    row = {"video_id": "cam/v", "split": "train", "label": 0, "anomaly_class": "Normal", "backbone": "r3d_18"}
    result = commit_videos(
        store, [{"row": {**row, "source_uri": "/v.mp4"}, "num_clips": 40, "cells": 0, "files": paths}], 16
    )
    assert result["committed"] == ["cam/v"] and result["failed"] == []
    [stored] = feature_store.features_from_arrow(feature_store.read_table(store).column("features"))
    np.testing.assert_allclose(stored, pool_segments(feats), rtol=1e-5, atol=1e-6)
    clips = feature_store.read_clips(store)
    assert clips.column("clip_index").to_pylist() == list(range(40))  # one row per clip, sorted
    # A commit task retried after its write succeeded writes the same part file again: no duplicate.
    again = commit_videos(
        store, [{"row": {**row, "source_uri": "/v.mp4"}, "num_clips": 40, "cells": 0, "files": paths}], 16
    )
    assert again["part"] == result["part"] and feature_store.read_table(store).num_rows == 1
    assert feature_store.part_files(store) == [uris.filesystem(result["part"])[1]]


def test_two_runs_with_other_settings_at_once_one_is_refused(tmp_path, s3_bucket):
    """_store.json is created exclusively: of two runs that start together, the second sees the first's."""
    for store in (str(tmp_path / "store"), f"{s3_bucket}/store"):
        barrier, outcomes = threading.Barrier(2), []

        def run(clip_len, store=store, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                feature_store.ensure_metadata(
                    store, feature_store.StoreMetadata(backbone="r3d_18", clip_len=clip_len)
                )
                outcomes.append("ok")
            except AnomalyError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=run, args=(n,)) for n in (8, 16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        refused = [outcome for outcome in outcomes if outcome != "ok"]
        assert len(refused) == 1 and outcomes.count("ok") == 1, outcomes
        assert refused[0].startswith(f"{store}: store was made with other settings: clip_len="), outcomes
        recorded = feature_store.read_metadata(store).clip_len
        assert f"clip_len={recorded!r} (store)" in refused[0]

        # Failure records of two writers at once: both kept (an append-only log, not a rewrite).
        writers = [
            threading.Thread(
                target=feature_store.record_failures,
                args=(
                    store,
                    [{"uri": f"/v/{k}.mp4", "video_id": k, "reason": "not a video: x", "stage": "decode"}],
                ),
            )
            for k in ("a", "b")
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert sorted(feature_store.read_failures(store).column("video_id").to_pylist()) == ["a", "b"]
        feature_store.clear_failures(store, ["/v/a.mp4"])
        assert feature_store.read_failures(store).column("video_id").to_pylist() == ["b"]


def test_gpus_not_in_the_cluster_are_waited_for_then_one_line(tmp_path, ray_cluster, caplog):
    """No refusal up front: the job waits (saying so) for a GPU node, and --wait-for-resources ends it."""
    video = make_video(str(tmp_path / "v.mp4"), num_frames=8, height=32, width=32)
    store = tmp_path / "store"
    settings = replace(SETTINGS, num_gpus_per_actor=1.0, wait_for_resources=2.0)
    with caplog.at_level("INFO", logger="anomaly.cluster"):
        with pytest.raises(AnomalyError, match=r"waited \d+ s for a node with 1 CPU, 1 GPU") as caught:
            extract([video.uri], str(store), settings)
    assert caught.value.where == "wait_for_resources" and "\n" not in str(caught.value)
    assert any("waiting for a node with 1 CPU, 1 GPU" in r.getMessage() for r in caplog.records)
    assert feature_store.video_ids(str(store)) == set()
    import torch

    if not torch.cuda.is_available():  # a node Ray gave a GPU to, where torch sees none
        with pytest.raises(AnomalyError, match="torch on this node sees no CUDA device"):
            ClipFeatureExtractor("r3d_18", None, crop=(32, 32), clip_len=8, require_gpu=True)


def test_clip_rows_span_clip_len_whatever_the_stride(tmp_path, ray_cluster):
    """Issue 22: with --stride 4 --clip-len 8 every clip row holds 8 frames (last = first + 7)."""
    video = make_video(str(tmp_path / "v.mp4"), num_frames=40, height=32, width=32)
    store = str(tmp_path / "store")
    report = extract([video.uri], store, replace(SETTINGS, stride=4, keep_clips=True))
    assert report.extracted == ["v"]
    clips = feature_store.read_clips(store, ["v"]).to_pydict()
    assert clips["clip_index"] == list(range(9))  # starts 0, 4, ..., 32
    assert clips["first_frame"] == [4 * i for i in range(9)]
    assert [last - first for first, last in zip(clips["first_frame"], clips["last_frame"], strict=True)] == [
        7
    ] * 9
    assert feature_store.read_metadata(store).extra["clip_table"] == "kept"


def test_camera_bucket_from_s3_to_s3(s3_bucket, ray_cluster, tmp_path):
    """Done-when: nested camera folders, a recording of many windows, a valid AVI whose header declares
    twice its frames, a broken file; S3 in, S3 out; every video a row or a failure; resume is a no-op."""
    videos = f"{s3_bucket}/cctv"
    cams = {
        "cam01/2026-11-20/0900": make_video(
            f"{videos}/cam01/2026-11-20/0900.mp4", num_frames=40, height=32, width=48, seed=1
        ),
        "cam02/2026-11-20/0900": make_video(
            f"{videos}/cam02/2026-11-20/0900.mp4", num_frames=48, height=32, width=48, seed=2
        ),
        "cam03/long": make_video(
            f"{videos}/cam03/long.mp4", num_frames=270, fps=25.0, height=32, width=48, seed=3
        ),
    }
    make_video(
        f"{videos}/cam04/odd.avi", num_frames=40, height=32, width=48, container="avi", declared_frames=80
    )
    uris.write_bytes_atomic(f"{videos}/cam04/broken.mp4", b"not a video\n")
    store = f"{s3_bucket}/stores/cctv"

    report = extract(f"{videos}/", store, replace(SETTINGS, keep_clips=True))

    assert sorted(report.extracted) == sorted([*cams, "cam04/odd"])
    assert [(f["video_id"], f["stage"]) for f in report.failed] == [("cam04/broken", "decode")]
    rows = {r["video_id"]: r for r in feature_store.read_table(store).drop(["features"]).to_pylist()}
    assert {vid: rows[vid]["num_frames"] for vid in rows} == {
        "cam01/2026-11-20/0900": 40,
        "cam02/2026-11-20/0900": 48,
        "cam03/long": 270,
        "cam04/odd": 40,
    }
    features = dict(
        zip(
            feature_store.read_table(store, columns=["features"]).column("video_id").to_pylist(),
            feature_store.features_from_arrow(
                feature_store.read_table(store, columns=["features"]).column("features")
            ),
            strict=True,
        )
    )
    for video_id, uri in (("cam03/long", cams["cam03/long"].uri), ("cam04/odd", f"{videos}/cam04/odd.avi")):
        expected, num_clips = direct_features(uri, SETTINGS)
        np.testing.assert_allclose(features[video_id], expected, atol=1e-5, err_msg=video_id)
        clips = feature_store.read_clips(store, [video_id])
        assert clips.column("clip_index").to_pylist() == list(range(num_clips))
    windows = set(feature_store.read_clips(store, ["cam03/long"]).column("window").to_pylist())
    assert windows == set(range(6))  # 270 frames in windows of 50: six decode tasks, each with clips
    assert feature_store.read_failures(store).column("video_id").to_pylist() == ["cam04/broken"]

    again = extract(f"{videos}/", store, SETTINGS)
    assert again.extracted == [] and sorted(again.skipped) == sorted(rows) and len(again.failed) == 1
    assert len(feature_store.read_table(store)) == len(rows)


def test_clip_table_layout(tmp_path):
    """The documented clip table columns, in order."""
    assert feature_store.CLIP_SCHEMA.names == [
        "video_id",
        "window",
        "clip_index",
        "cell",
        "first_frame",
        "last_frame",
        "time",
        "features",
    ]
    assert feature_store.CLIP_SCHEMA.field("features").type == pa.list_(pa.float32())
