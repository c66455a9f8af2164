"""Scoring: the alarm rule, the clip-window rule, and ray_jobs.score on real H.264 videos through Ray Data.

Real parts only: videos made by anomaly.synthetic, a real (small, random) backbone, a MIL scorer
saved as a real checkpoint (random, or trained here on features of real videos), a real local Ray,
a real moto S3 server, a real SIGKILLed job.
"""

from __future__ import annotations

import csv
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import TINY_STORE_META, job_env, run_and_kill

from anomaly import cli
from anomaly import store as feature_store
from anomaly.alarms import AlarmSettings, find_alarms, sort_by_peak
from anomaly.checkpoints import checkpoint_payload
from anomaly.config import TrainConfig
from anomaly.extraction import ExtractionSettings
from anomaly.heads import MILScorer
from anomaly.losses import mil_loss
from anomaly.scoring import outputs
from anomaly.scoring.single import clip_features
from anomaly.scoring.windows import clip_frame_scores, score_clips, window_features
from anomaly.segments import pool_segments
from anomaly.synthetic import make_video
from ray_jobs import score as score_job

STORE_META = TINY_STORE_META


def _save_run(folder: Path, model: torch.nn.Module) -> Path:
    folder.mkdir(parents=True)
    torch.save(
        checkpoint_payload(model, TrainConfig(), epoch=0, metrics={}, store_metadata=STORE_META),
        folder / "model.pt",
    )
    return folder


@pytest.fixture()
def run_dir(tmp_path):
    torch.manual_seed(0)
    return _save_run(tmp_path / "run", MILScorer(512))


# ------------------------------------------------------------------------------------ the rules


def test_alarms_merge_gaps_before_dropping_short_ones_and_sort_by_peak():
    start = np.arange(20, dtype=float)  # 1 s clips
    scores = np.full(20, 0.1)
    scores[[2, 4]] = 0.9  # two 1-s bursts 1 s apart: one incident of 3 s
    scores[10] = 0.6  # a lone 1-s blip, more than the merge gap from the rest
    scores[15:19] = [0.7, 0.95, 0.8, 0.7]
    settings = AlarmSettings(threshold=0.5, min_duration_s=2.0, merge_gap_s=1.5)
    alarms = sort_by_peak(find_alarms("cam", start, start + 1, scores, settings))
    assert [(a.start_s, a.end_s) for a in alarms] == [(15.0, 19.0), (2.0, 5.0)]
    assert alarms[0].peak_score == pytest.approx(0.95)
    assert alarms[0].mean_score == pytest.approx(np.mean([0.7, 0.95, 0.8, 0.7]))
    assert alarms[1].mean_score == pytest.approx(np.mean([0.9, 0.1, 0.9]))  # the bridged clip counts
    no_merge = find_alarms("cam", start, start + 1, scores, AlarmSettings(0.5, 2.0, 0.5))
    assert [(a.start_s, a.end_s) for a in no_merge] == [(15.0, 19.0)]  # the bursts alone are too short


def test_a_window_as_long_as_a_training_segment_is_that_segment():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(320, 8)).astype(np.float32)  # 320 clips: 32 segments of 10
    pooled = pool_segments(feats)
    windows = window_features(feats, 10)
    for k in (0, 7, 31):  # clip 10k+4 is centred on segment k (window [10k, 10k+10))
        np.testing.assert_allclose(windows[10 * k + 4], pooled[k], rtol=1e-5, atol=1e-6)
    whole = feats[:5].mean(0) / np.linalg.norm(
        feats[:5].mean(0)
    )  # a video shorter than the window: one window
    np.testing.assert_allclose(window_features(feats[:5], 10), np.tile(whole, (5, 1)), rtol=1e-5, atol=1e-6)
    model = MILScorer(8).eval()
    scores = score_clips(model, feats, 10)
    with torch.no_grad():
        expected = model(torch.from_numpy(pooled)).numpy()
    np.testing.assert_allclose(scores[np.arange(32) * 10 + 4], expected, rtol=1e-5)
    assert clip_frame_scores(np.array([0.25, 0.75]), 20, 8).tolist() == [0.25] * 8 + [0.75] * 12


# ------------------------------------------------------------------------------- single video


@pytest.mark.slow
def test_one_video_writes_per_frame_csv_png_alarms_and_video(ray_cluster, tmp_path, run_dir, capsys):
    video = make_video(
        str(tmp_path / "Explosion001_x264.mp4"), num_frames=60, fps=20.0, event="flash", interval=(20, 40)
    )
    out = tmp_path / "out"
    argv = [video.uri, "--checkpoint", str(run_dir), "--out", str(out), "--threshold", "0.0"]
    args = score_job.get_args_parser().parse_args([*argv, "--min-duration", "0", "--annotated-video"])
    assert score_job.main(args) == 0
    with open(out / "Explosion001_x264.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(60))  # one row per frame
    assert float(rows[20]["time_s"]) == pytest.approx(20 / 20.0)
    clips = pq.read_table(out / "scores").sort_by("clip_index").to_pylist()
    assert [(c["first_frame"], c["last_frame"]) for c in clips] == [(8 * i, 8 * i + 7) for i in range(7)]
    assert clips[2]["start_s"] == pytest.approx(16 / 20.0) and clips[2]["end_s"] == pytest.approx(24 / 20.0)
    assert float(rows[17]["score"]) == pytest.approx(clips[2]["score"], abs=1e-6)  # clip resolution
    assert len({round(c["score"], 6) for c in clips}) > 1  # not one pooled value spread over the video
    assert (out / "Explosion001_x264_timeline.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "alarms.csv") as handle:
        alarms = list(csv.DictReader(handle))
    assert [(a["video_id"], float(a["start_s"]), float(a["end_s"])) for a in alarms] == [
        ("Explosion001_x264", 0.0, 56 / 20.0)  # threshold 0: one alarm over every clip
    ]
    assert (out / "timelines" / "Explosion001_x264.png").exists()
    assert "Explosion001_x264:" in capsys.readouterr().out
    import av

    with av.open(str(out / "Explosion001_x264_scored.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 60


def test_one_settings_rule_backbone_defaults_and_the_flag_table(tmp_path):
    """Issue 22: one job for both paths: the store's clip settings, else the backbone's (never a 16 of its own)."""
    from anomaly.extraction import ExtractionSettings
    from anomaly.scoring.job import scoring_job

    store = {**STORE_META}
    del store["clip_len"], store["stride"], store["crop"]
    torch.manual_seed(0)
    bare = _save_run(tmp_path / "bare", MILScorer(512))
    torch.save(checkpoint_payload(MILScorer(512), TrainConfig(), store_metadata=store), bare / "model.pt")
    job = scoring_job(str(bare))
    assert job.extraction == ExtractionSettings(backbone="r3d_18")  # the backbone's own input size
    spec = job.extraction.spec()
    rules = job.rules(spec, torch.load(bare / "model.pt", weights_only=True), MILScorer(512))
    assert (rules.clip_len, rules.stride) == (spec.clip_len, spec.clip_len)

    # the command's flags reach the same function through one table: unset flags change nothing
    run = _save_run(tmp_path / "run", MILScorer(512))
    args = score_job.get_args_parser().parse_args(["v", "--checkpoint", str(run)])
    assert score_job.job_from_args(args) == scoring_job(str(run))
    assert score_job.job_from_args(args).extraction.clip_len == 8  # the store's, not a default
    flags = ["--window", "3", "--min-duration", "2", "--decode-cpus", "0.5", "--fps-default", "12"]
    args = score_job.get_args_parser().parse_args(
        ["v", "--checkpoint", str(run), *flags, "--annotated-video"]
    )
    job = score_job.job_from_args(args)
    assert (job.window_seconds, job.alarms.min_duration_s, job.annotated_videos) == (3.0, 2.0, True)
    assert (job.extraction.decode_num_cpus, job.extraction.fps) == (0.5, 12.0)
    assert set(cli.settings_fields(args, cli.SCORING_PARAMETERS)) == set(cli.SCORING_PARAMETERS)
    with pytest.raises(TypeError, match="clip_length"):
        scoring_job(str(run), clip_length=8)


def test_the_single_video_and_pipeline_paths_give_the_same_clip_scores_by_default(ray_cluster, tmp_path):
    """No overrides, a store with clip_len 8 and no stride: both paths take stride 8 (the clip length;
    the single-video path once fell back to 16), 32x32, the same window and rule."""
    from anomaly.scoring.job import scoring_job
    from anomaly.scoring.pipeline import score
    from anomaly.scoring.single import score_video

    store = {key: value for key, value in STORE_META.items() if key != "stride"}
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(checkpoint_payload(MILScorer(512), TrainConfig(), store_metadata=store), run_dir / "model.pt")
    video = make_video(
        str(tmp_path / "Explosion002_x264.mp4"), num_frames=60, fps=20.0, event="flash", interval=(20, 40)
    )
    single = score_video(video.uri, str(run_dir))
    assert (single.clip_len, single.stride, len(single.clip_scores)) == (8, 8, 7)
    out = str(tmp_path / "out")
    job = scoring_job(str(run_dir))
    report = score(video.uri, out, job)
    assert report.scored == ["Explosion002_x264"] and not report.failed
    np.testing.assert_allclose(report.video.clip_scores, single.clip_scores, rtol=1e-4, atol=1e-5)
    assert (report.video.num_frames, report.video.fps) == (single.num_frames, single.fps) == (60, 20.0)
    assert len({round(float(x), 6) for x in single.clip_scores}) > 1
    assert report.written["csv"].endswith("Explosion002_x264.csv")
    np.testing.assert_allclose(score_video(video.uri, job).clip_scores, single.clip_scores, rtol=1e-5)


def test_score_with_wrong_backbone_width_is_one_line_error(tmp_path, run_dir, capsys):
    video = make_video(str(tmp_path / "Normal_Videos_001_x264.mp4"), num_frames=20, fps=10.0)
    argv = [video.uri, "--checkpoint", str(run_dir), "--backbone", "s3d", "--crop", "32,32"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(score_job.main, score_job.get_args_parser(), [*argv, "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "1024-d" in err and "512-d" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_score_refuses_other_weights_than_training(tmp_path, run_dir, capsys):
    from anomaly.extractors import load_backbone

    model, _ = load_backbone("r3d_18", None)
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, tmp_path / "other.pt")
    video = make_video(str(tmp_path / "Normal_Videos_002_x264.mp4"), num_frames=20, fps=10.0)
    argv = [video.uri, "--checkpoint", str(run_dir), "--weights", str(tmp_path / "other.pt")]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(score_job.main, score_job.get_args_parser(), [*argv, "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "differ from the random" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- a recording with a known event


def _train_scorer(tmp_path: Path) -> MILScorer:
    """A MIL scorer trained here on 32-segment bags of 4 normal and 4 'flash' videos (16 s at 4 fps)."""
    settings = ExtractionSettings(
        backbone="r3d_18", weights=None, clip_len=8, stride=8, crop=(32, 32), device="cpu", batch_size=8
    )
    bags = {0: [], 1: []}
    for i in range(8):
        label = i % 2
        video = make_video(
            str(tmp_path / "train" / f"V{i}.mp4"),
            num_frames=64,
            fps=4.0,
            height=48,
            width=64,
            event="flash" if label else None,
            interval=(24, 40) if label else None,
            seed=100 + i,
        )
        feats, _, _ = clip_features(video.uri, settings)
        bags[label].append(pool_segments(feats))
    normal, abnormal = (torch.from_numpy(np.stack(bags[k])) for k in (0, 1))
    segments = torch.cat([normal, abnormal]).reshape(-1, 512).numpy()
    torch.manual_seed(0)
    model = MILScorer(512)
    model.set_normalization(torch.from_numpy(segments.mean(0)), torch.from_numpy(segments.std(0)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        # the losses take logits
        mil_loss(model.member_outputs(abnormal)[0][0], model.member_outputs(normal)[0][0]).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.slow
def test_an_alarm_starts_within_seconds_of_a_short_event_in_a_three_minute_recording(ray_cluster, tmp_path):
    run = _save_run(tmp_path / "run", _train_scorer(tmp_path))
    fps, event = 4.0, (400, 448)  # a 12-s flash 100 s into a 3-minute recording
    video = make_video(
        str(tmp_path / "cams" / "gate" / "Explosion050_x264.mp4"),
        num_frames=720,
        fps=fps,
        height=48,
        width=64,
        event="flash",
        interval=event,
        seed=5,
    )
    out = tmp_path / "out"
    args = score_job.get_args_parser().parse_args(
        [str(tmp_path / "cams"), "--checkpoint", str(run), "--out", str(out)]
    )
    assert score_job.main(args) == 0
    alarms = pq.read_table(out / "alarms.parquet").to_pylist()
    start, end = event[0] / fps, event[1] / fps
    hits = [a for a in alarms if a["start_s"] < end and a["end_s"] > start]
    assert hits, f"no alarm overlaps the event {start}-{end} s: {alarms}"
    assert abs(hits[0]["start_s"] - start) <= 4.0, hits
    assert sum(a["duration_s"] for a in alarms) < 0.25 * video.num_frames / fps  # not alarmed throughout
    assert hits[0]["video_id"] == "gate/Explosion050_x264"  # ids are relative paths under the listed root
    assert (out / "timelines" / "gate" / "Explosion050_x264.png").exists()


# ---------------------------------------------------- S3, a corrupt file, a killed job resumed


@pytest.mark.slow
def test_nested_s3_folder_with_a_corrupt_file_killed_and_resumed_equals_an_uninterrupted_run(
    ray_cluster, s3_bucket, tmp_path, run_dir
):
    from anomaly import uris

    for i, camera in enumerate(["north/door", "north/yard", "south/gate", "south/dock"]):
        make_video(
            uris.join(s3_bucket, "cams", camera, f"Cam{i}_x264.mp4"), num_frames=24 + 8 * i, fps=8.0, seed=i
        )
    uris.write_bytes_atomic(uris.join(s3_bucket, "cams", "south", "Broken_x264.mp4"), b"\x00not a video" * 50)
    videos = uris.join(s3_bucket, "cams")
    flags = ["--checkpoint", str(run_dir), "--threshold", "0.0", "--min-duration", "0", "--flush-every", "1"]

    reference = uris.join(s3_bucket, "reference")
    assert score_job.main(score_job.get_args_parser().parse_args([videos, "--out", reference, *flags])) == 0
    failures = feature_store.read_failures(reference).to_pylist()
    assert [(f["video_id"].endswith("Broken_x264"), f["stage"]) for f in failures] == [(True, "decode")]
    assert "not a video" in failures[0]["reason"]

    out = uris.join(s3_bucket, "resumed")
    command = [sys.executable, "-m", "ray_jobs.score", videos, "--out", out, *flags, "--batch-size", "4"]
    status = run_and_kill(
        command,
        job_env(ray_cluster),
        tmp_path / "killed.log",
        lambda: len(outputs.scored_video_ids(out)) >= 1,
        poll_s=0.05,
    )
    assert status == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert 1 <= len(outputs.scored_video_ids(out)) < 4
    assert score_job.main(score_job.get_args_parser().parse_args([videos, "--out", out, *flags])) == 0

    def rows(where):
        table = outputs.read_scores(where).sort_by([("video_id", "ascending"), ("clip_index", "ascending")])
        return table.drop_columns(["score"]).to_pylist(), table.column("score").to_numpy()

    (ref_rows, ref_scores), (got_rows, got_scores) = rows(reference), rows(out)
    assert got_rows == ref_rows and len(ref_rows) == sum(3 + i for i in range(4))  # every clip once
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-5)
    ref_alarms, got_alarms = outputs.read_alarms(reference), outputs.read_alarms(out)
    for column in ("video_id", "source_uri", "start_s", "end_s"):
        assert got_alarms.column(column).to_pylist() == ref_alarms.column(column).to_pylist()
    assert got_alarms.num_rows == 4
    np.testing.assert_allclose(
        got_alarms.column("peak_score").to_numpy(), ref_alarms.column("peak_score").to_numpy(), atol=1e-5
    )
    assert feature_store.read_failures(out).column("uri").to_pylist() == [failures[0]["uri"]]


def test_wall_clock_times_come_from_the_containers_creation_time(tmp_path):
    import av

    from anomaly.scoring.pipeline import creation_time
    from anomaly.scoring.windows import clip_times

    plain = make_video(str(tmp_path / "plain.mp4"), num_frames=16, fps=8.0)
    stamped = str(tmp_path / "stamped.mp4")
    with av.open(plain.uri) as source, av.open(stamped, "w", format="mp4") as target:
        target.metadata["creation_time"] = "2026-11-20T03:00:00.000000Z"  # as cameras and FFmpeg write it
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    assert creation_time(plain.uri) == ""
    created = outputs.parse_creation_time(creation_time(stamped))
    assert created is not None and created.isoformat() == "2026-11-20T03:00:00+00:00"
    times = clip_times(2, 16, 8, 8, 8.0)
    rows = outputs.video_rows(
        "v", stamped, times, np.array([0.2, 0.8]), fps=8.0, num_frames=16, created=created
    )
    assert [t.isoformat() for t in rows.column("start_time").to_pylist()] == [
        "2026-11-20T03:00:00+00:00",
        "2026-11-20T03:00:01+00:00",
    ]
    no_clock = outputs.video_rows(
        "v", plain.uri, times, np.array([0.2, 0.8]), fps=8.0, num_frames=16, created=None
    )
    assert no_clock.column("start_time").null_count == 2


# ----------------------------------------------------------- what the driver sees: small rows only


@pytest.mark.slow
def test_the_driver_receives_summary_rows_never_clip_features_and_resumes_from_part_footers(
    ray_cluster, tmp_path, run_dir, monkeypatch
):
    from anomaly.extraction.commit import VideoTracker
    from anomaly.scoring import pipeline

    received: list[tuple[list[str], int]] = []

    class RecordingTracker(VideoTracker):  # what the driver iterates: the pipeline's output batches
        def consume(self, batch):
            received.append((sorted(batch), sum(np.asarray(column).nbytes for column in batch.values())))
            return super().consume(batch)

    monkeypatch.setattr(pipeline, "VideoTracker", RecordingTracker)
    for i in range(3):
        make_video(str(tmp_path / "cams" / f"Cam{i}_x264.mp4"), num_frames=96, fps=8.0, seed=i)
    out = tmp_path / "out"
    argv = [str(tmp_path / "cams"), "--checkpoint", str(run_dir), "--out", str(out), "--min-duration", "0"]
    assert score_job.main(score_job.get_args_parser().parse_args([*argv, "--threshold", "0.0"])) == 0
    clips = outputs.read_scores(str(out)).num_rows
    assert clips == 3 * 12
    assert received and all("features" not in columns and "clip" not in columns for columns, _ in received)
    dim = STORE_META["feature_dim"]
    assert sum(size for _, size in received) < clips * dim * 4 / 2  # under half a feature's bytes per clip
    assert not (out / feature_store.CLIPS_DIR).exists()  # the clip table lived until its videos were scored
    first = outputs.read_alarms(str(out))
    assert first.num_rows == 3  # threshold 0: one alarm per video

    def no_scores(*_args, **_kwargs):
        raise AssertionError("a resumed run read scores back")

    monkeypatch.setattr(outputs, "read_scores", no_scores)
    monkeypatch.setattr(outputs, "read_scores_part", no_scores)
    received.clear()
    assert score_job.main(score_job.get_args_parser().parse_args([*argv, "--threshold", "0.0"])) == 0
    assert received == []  # every video skipped: ids and alarms came from the part footers
    assert outputs.read_alarms(str(out)).to_pylist() == first.to_pylist()

    monkeypatch.undo()
    assert score_job.main(score_job.get_args_parser().parse_args([*argv, "--threshold", "0.9999"])) == 0
    expected = outputs.alarms_of(outputs.read_scores(str(out)), AlarmSettings(0.9999, 0.0))
    assert outputs.read_alarms(str(out)).num_rows == len(expected) < 3  # re-alarmed from the scores


@pytest.mark.parametrize("context", [0, 2])
def test_scoring_in_chunks_gives_the_whole_videos_scores(context):
    """Issue 20: a task scores a recording chunk by chunk (bounded memory), with the same scores."""
    from anomaly.scoring.windows import halo_clips, score_clip_range

    torch.manual_seed(0)
    model = MILScorer(16)
    feats = np.random.default_rng(0).normal(size=(103, 16)).astype(np.float32)
    whole = score_clips(model, feats, 7, context=context)
    n, chunk = len(feats), 20
    halo = halo_clips(7, n, context)
    parts = []
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        lo, hi = max(0, start - halo), min(n, end + halo)
        parts.append(
            score_clip_range(model, feats[lo:hi], lo=lo, n=n, window=7, start=start, end=end, context=context)
        )
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-6)
