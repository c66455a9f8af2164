"""anomaly.synthetic.videos: real H.264 files, visible events, UCF-Crime names and annotation formats."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest

from anomaly.errors import AnomalyError
from anomaly.synthetic import EVENT_CLASSES, EVENTS, make_video, make_video_set, write_annotations
from anomaly.video import iter_clips, probe_video

# The official files' layouts, checked against the real files below so they cannot drift.
TEMPORAL_LINE = re.compile(r"^(\S+\.mp4)  ([A-Za-z]+)  (-?\d+)  (-?\d+)  (-?\d+)  (-?\d+)  $")
TEST_COUNTS_LINE = re.compile(r"^([A-Za-z_]+)/(\S+\.mp4) (\d+) ([A-Za-z]+) (-?\d+) (-?\d+) (-?\d+) (-?\d+)$")
TRAIN_COUNTS_LINE = re.compile(r"^([A-Za-z_]+)/(\S+\.mp4) (\d+)$")


def _frames(uri: str) -> np.ndarray:
    return np.concatenate([c.frames for c in iter_clips(uri, clip_len=1, stride=1)]).astype(np.float32)


def test_video_is_real_h264_with_the_right_length(tmp_path):
    video = make_video(str(tmp_path / "Normal_Videos_001_x264.mp4"), num_frames=60, fps=25.0)
    with av.open(video.uri) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.height, stream.width) == (96, 128)
        assert stream.average_rate == 25
        assert sum(1 for _ in container.decode(stream)) == 60
    info = probe_video(video.uri)
    assert (info.num_frames, info.fps, info.height, info.width) == (60, 25.0, 96, 128)
    assert video.video_id == "Normal_Videos_001_x264" and video.anomaly_class == "Normal"
    assert video.interval is None


@pytest.mark.parametrize("event", EVENTS)
def test_the_anomalous_interval_is_strongly_different(tmp_path, event):
    start, end = 40, 70
    video = make_video(
        str(tmp_path / f"{EVENT_CLASSES[event]}001_x264.mp4"),
        num_frames=100,
        event=event,
        interval=(start, end),
        seed=3,
    )
    assert video.anomaly_class == EVENT_CLASSES[event] and video.interval == (start, end)
    frames = _frames(video.uri)
    assert len(frames) == 100
    inside = np.zeros(100, bool)
    inside[start:end] = True
    brightness = frames.mean(axis=(1, 2, 3))
    # Motion: mean |frame t - frame t-1|, for frames whose pair lies wholly on one side.
    motion = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    pair_inside, pair_outside = inside[1:] & inside[:-1], ~inside[1:] & ~inside[:-1]
    if event == "flash":
        assert brightness[inside].mean() > brightness[~inside].mean() + 50
        assert brightness[inside].min() > brightness[~inside].max() + 20
    else:
        assert motion[pair_inside].mean() > 5 * motion[pair_outside].mean()
        assert motion[pair_inside].mean() > 3.0
    # Outside the interval the scene is calm.
    assert motion[pair_outside].max() < 2.0


def test_normal_video_stays_calm_and_generation_is_deterministic(tmp_path):
    a = make_video(str(tmp_path / "a" / "Normal_Videos_001_x264.mp4"), num_frames=50, seed=7)
    b = make_video(str(tmp_path / "b" / "Normal_Videos_001_x264.mp4"), num_frames=50, seed=7)
    c = make_video(str(tmp_path / "c" / "Normal_Videos_001_x264.mp4"), num_frames=50, seed=8)
    assert Path(a.uri).read_bytes() == Path(b.uri).read_bytes()
    assert Path(a.uri).read_bytes() != Path(c.uri).read_bytes()
    frames = _frames(a.uri)
    motion = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    assert 0 < motion.max() < 2.0  # people walk, slowly
    assert frames.mean(axis=(1, 2, 3)).std() < 2.0


def test_bad_arguments(tmp_path):
    with pytest.raises(AnomalyError, match="unknown event"):
        make_video(str(tmp_path / "x.mp4"), event="earthquake")
    with pytest.raises(AnomalyError, match="even"):
        make_video(str(tmp_path / "x.mp4"), height=95)
    with pytest.raises(AnomalyError, match="interval"):
        make_video(str(tmp_path / "x.mp4"), num_frames=50, event="flash", interval=(40, 60))
    with pytest.raises(AnomalyError, match="without an event"):
        make_video(str(tmp_path / "x.mp4"), interval=(1, 5))


def test_video_set_on_s3(s3_bucket):
    videos = make_video_set(
        f"{s3_bucket}/videos", num_normal=2, num_abnormal=3, num_frames=40, height=48, width=64, seed=1
    )
    assert len(videos) == 5
    for video in videos:
        assert video.uri.startswith(f"{s3_bucket}/videos/")
        info = probe_video(video.uri)
        assert (info.video_id, info.num_frames, info.height, info.width) == (video.video_id, 40, 48, 64)


@pytest.fixture(scope="module")
def video_set(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("set")
    return make_video_set(str(out), num_normal=4, num_abnormal=6, num_frames=50, height=48, width=64, seed=5)


def test_video_set_names_labels_intervals_and_split(video_set):
    normal = [v for v in video_set if v.anomaly_class == "Normal"]
    abnormal = [v for v in video_set if v.anomaly_class != "Normal"]
    assert [v.video_id for v in normal] == [f"Normal_Videos_{i:03d}_x264" for i in (1, 2, 3, 4)]
    assert sorted(v.video_id for v in abnormal) == sorted(
        f"{klass}{i:03d}_x264" for klass in ("Explosion", "Fighting", "Stampede") for i in (1, 2)
    )
    for video in video_set:
        # The project's rule: the class is the id's leading letters; Normal... is normal.
        leading = re.match(r"[A-Za-z]+", video.video_id).group(0)
        assert leading == ("Normal" if video.anomaly_class == "Normal" else video.anomaly_class)
        assert Path(video.uri).name == f"{video.video_id}.mp4"
        assert probe_video(video.uri).num_frames == video.num_frames == 50
    for video in normal:
        assert video.interval is None
    for video in abnormal:
        start, end = video.interval
        assert start >= 5 and end <= 50  # not at the very start
        assert 0.2 * 50 - 1 <= end - start <= 0.4 * 50 + 1
    for group in (normal, abnormal):
        assert sum(v.split == "test" for v in group) == len(group) // 2
        assert {v.split for v in group} == {"test", "train"}
    assert len({v.anomaly_class for v in abnormal if v.split == "test"}) >= 2  # kinds mix across splits


def test_official_formats_match_the_real_files(shared_data):
    real = (shared_data / "Temporal_Anomaly_Annotation.txt").read_text().splitlines()
    assert real and all(TEMPORAL_LINE.match(line) for line in real)
    for name, pattern in [
        ("Test_Annotation_with_frame_counts.txt", TEST_COUNTS_LINE),
        ("Train_Annotation_with_frame_counts.txt", TRAIN_COUNTS_LINE),
    ]:
        lines = (shared_data / name).read_text().splitlines()
        assert lines and all(pattern.match(line) for line in lines), name


def test_annotations_round_trip(video_set, tmp_path):
    annotation = tmp_path / "Temporal_Anomaly_Annotation.txt"
    counts = tmp_path / "frame_counts.txt"
    write_annotations(video_set, str(annotation), frame_counts_uri=str(counts))
    test_videos = {v.video_id: v for v in video_set if v.split == "test"}

    lines = annotation.read_text().splitlines()
    assert len(lines) == len(test_videos)
    for line in lines:
        match = TEMPORAL_LINE.match(line)
        assert match, line
        name, klass, s1, e1, s2, e2 = match.groups()
        video = test_videos[name.removesuffix(".mp4")]
        assert klass == video.anomaly_class
        if video.interval is None:
            assert (s1, e1, s2, e2) == ("-1", "-1", "-1", "-1")
        else:
            # Official numbers are 1-based inclusive: [start, end) is written "start+1  end".
            assert (int(s1) - 1, int(e1)) == video.interval and (s2, e2) == ("-1", "-1")

    by_id = {v.video_id: v for v in video_set}
    seen = set()
    for line in counts.read_text().splitlines():
        test_match, train_match = TEST_COUNTS_LINE.match(line), TRAIN_COUNTS_LINE.match(line)
        match = test_match or train_match
        assert match, line
        folder, name, frames = match.groups()[:3]
        video = by_id[name.removesuffix(".mp4")]
        seen.add(video.video_id)
        assert int(frames) == video.num_frames
        assert (test_match is not None) == (video.split == "test")
        if video.anomaly_class == "Normal":
            assert folder == ("Testing" if video.split == "test" else "Training") + "_Normal_Videos_Anomaly"
        else:
            assert folder == video.anomaly_class
        if test_match:
            s1, e1 = int(test_match.group(5)), int(test_match.group(6))
            assert ((s1 - 1, e1) if s1 >= 0 else None) == video.interval
    assert seen == set(by_id)


def test_the_project_reader_reads_what_we_write(video_set, tmp_path):
    annotations = pytest.importorskip("anomaly.ground_truth")
    annotation = tmp_path / "Temporal_Anomaly_Annotation.txt"
    counts = tmp_path / "frame_counts.txt"
    write_annotations(video_set, str(annotation), frame_counts_uri=str(counts))
    table = annotations.read_temporal_annotations(str(annotation))
    frame_counts = annotations.read_frame_counts(str(counts))
    for video in video_set:
        assert frame_counts[video.video_id] == video.num_frames
        if video.split == "test":
            listed = table[video.video_id]
            assert listed.anomaly_class == video.anomaly_class
            assert [tuple(iv) for iv in listed.intervals] == ([video.interval] if video.interval else [])
        else:
            assert video.video_id not in table
