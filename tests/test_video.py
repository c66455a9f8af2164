"""anomaly.video: clips equal a direct PyAV decode, the sampling rule, URIs, errors, rotation, memory bound."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import moving_square, write_h264

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.video import (
    Clip,
    VideoInfo,
    clip_starts,
    iter_clips,
    open_video,
    probe_video,
    video_id_from_uri,
)


def _write(
    path: Path,
    frames: np.ndarray,
    *,
    rate: int = 25,
    container_format: str = "mp4",
    rotation: int | None = None,
    pts: list[int] | None = None,
    faststart: bool = True,
) -> Path:
    """Encode RGB frames with libx264 (default preset: B-frames); ``pts`` (in 1/1000 s) makes a VFR file."""
    return write_h264(
        path,
        frames,
        rate=rate,
        container_format=container_format,
        rotation=rotation,
        pts_ms=pts,
        faststart=faststart,
        options={"threads": "1"},
    )


def _direct_decode(path: Path, **reformat) -> np.ndarray:
    """The reference: every frame PyAV decodes, converted the plain way."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24", **reformat) for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def video70(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("v") / "Abuse028_x264.mp4", moving_square(70))


# --------------------------------------------------------------------------- clips and the sampling rule


@pytest.mark.parametrize(("clip_len", "stride"), [(16, 16), (16, 8), (8, 20), (1, 1)])
def test_clips_equal_direct_decode(video70, clip_len, stride):
    reference = _direct_decode(video70)
    clips = list(iter_clips(str(video70), clip_len=clip_len, stride=stride))
    starts = clip_starts(70, clip_len, stride)
    assert [c.start_frame for c in clips] == starts
    assert [c.index for c in clips] == list(range(len(starts)))
    for clip in clips:
        assert isinstance(clip, Clip)
        assert clip.frames.dtype == np.uint8 and clip.frames.shape == (clip_len, 48, 64, 3)
        np.testing.assert_array_equal(clip.frames, reference[clip.start_frame : clip.start_frame + clip_len])
    # The ends: the first clip starts at frame 0; the last is the last complete one.
    assert clips[0].start_frame == 0
    assert clips[-1].start_frame + clip_len <= 70 < clips[-1].start_frame + clip_len + stride


def test_short_video_gives_one_clip_padded_with_its_last_frame(tmp_path):
    path = _write(tmp_path / "short.mp4", moving_square(10))
    reference = _direct_decode(path)
    assert len(reference) == 10
    (clip,) = list(iter_clips(str(path), clip_len=16, stride=16))
    assert clip.start_frame == 0 and clip.frames.shape[0] == 16
    np.testing.assert_array_equal(clip.frames[:10], reference)
    for padded in clip.frames[10:]:
        np.testing.assert_array_equal(padded, reference[-1])
    assert clip_starts(10, 16, 16) == [0]


def test_clip_starts_edge_cases():
    assert clip_starts(0, 16, 16) == []
    assert clip_starts(1, 16, 16) == [0]
    assert clip_starts(15, 16, 16) == [0]
    assert clip_starts(16, 16, 16) == [0]
    assert clip_starts(31, 16, 16) == [0]  # a 15-frame tail is dropped
    assert clip_starts(32, 16, 16) == [0, 16]
    assert clip_starts(40, 16, 8) == [0, 8, 16, 24]
    assert clip_starts(60, 16, 20) == [0, 20, 40]  # gaps between clips
    assert clip_starts(18, 16, 1) == [0, 1, 2]
    for bad in [(10, 0, 16), (10, 16, 0), (10, -1, 1)]:
        with pytest.raises(ValueError):
            clip_starts(*bad)


def test_size_and_crop(video70):
    resized = _direct_decode(video70, width=40, height=30, interpolation="BILINEAR")
    (first, *_rest) = list(iter_clips(str(video70), clip_len=8, stride=8, size=(30, 40), crop=(16, 24)))
    assert first.frames.shape == (8, 16, 24, 3)
    np.testing.assert_array_equal(first.frames, resized[:8, 7:23, 8:32])
    with pytest.raises(AnomalyError, match="crop 64x64 is larger"):
        list(iter_clips(str(video70), crop=(64, 64)))


def test_probe(video70):
    info = probe_video(str(video70))
    assert info == VideoInfo(
        uri=str(video70), video_id="Abuse028_x264", num_frames=70, fps=25.0, width=64, height=48, rotation=0
    )


def test_variable_frame_rate_counts_decoded_frames(tmp_path):
    # 30 frames with irregular gaps (20-120 ms): no frame may be duplicated or dropped.
    gaps = np.random.default_rng(0).integers(20, 120, size=30)
    pts = [int(x) for x in np.concatenate([[0], np.cumsum(gaps)[:-1]])]
    path = _write(tmp_path / "vfr.mp4", moving_square(30), pts=pts)
    info = probe_video(str(path))
    assert info.num_frames == 30
    assert 5 < info.fps < 50
    reference = _direct_decode(path)
    clips = list(iter_clips(str(path), clip_len=10, stride=10))
    assert [c.start_frame for c in clips] == [0, 10, 20]
    np.testing.assert_array_equal(np.concatenate([c.frames for c in clips]), reference)


def test_rotated_video_comes_out_upright(tmp_path):
    # What the camera saw, upright: portrait, with a white bar along the top edge.
    upright = moving_square(20, height=64, width=48)
    upright[:, :6] = 255
    # A phone stores the sensor's landscape image plus "turn it 90° counter-clockwise to display".
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))
    path = _write(tmp_path / "phone.mp4", stored, rotation=90)
    info = probe_video(str(path))
    assert info.rotation == 90 and (info.height, info.width) == (64, 48)
    (clip, *_rest) = list(iter_clips(str(path), clip_len=4, stride=4))
    assert clip.frames.shape == (4, 64, 48, 3)
    top, bottom = clip.frames[:, :4].mean(), clip.frames[:, -10:].mean()
    assert top > 240 and bottom < 200
    np.testing.assert_array_equal(clip.frames[0], np.rot90(_direct_decode(path)[0], k=1))
    (small, *_rest) = list(iter_clips(str(path), clip_len=4, stride=4, size=(32, 24)))
    assert small.frames.shape == (4, 32, 24, 3)
    assert small.frames[:, :2].mean() > 240


# --------------------------------------------------------------------------- storage


def test_s3_reads_identical_clips(video70, s3_bucket):
    uri = f"{s3_bucket}/videos/Abuse028_x264.mp4"
    uris.write_bytes_atomic(uri, video70.read_bytes())
    local = list(iter_clips(str(video70), clip_len=16, stride=12))
    remote = list(iter_clips(uri, clip_len=16, stride=12))
    assert [c.start_frame for c in remote] == [c.start_frame for c in local]
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
    info = probe_video(uri)
    assert info.video_id == "Abuse028_x264" and info.num_frames == 70 and info.uri == uri
    with pytest.raises(AnomalyError, match="no such file or object") as caught:
        probe_video(f"{s3_bucket}/videos/missing_x264.mp4")
    assert f"{s3_bucket}/videos/missing_x264.mp4" in str(caught.value)


# --------------------------------------------------------------------------- bad inputs


def _bad_inputs(tmp: Path, good: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    cases = {
        "zero-byte": (b"", "empty file (0 bytes)"),
        "truncated-index-first": (data[: len(data) // 2], "truncated"),
        "random-bytes": (np.random.default_rng(0).bytes(5000), "not a video"),
        "text": (b"this is a text file\nnot a video\n", "not a video"),
    }
    out = {}
    for name, (payload, reason) in cases.items():
        path = tmp / f"{name}.mp4"
        path.write_bytes(payload)
        out[name] = (path, reason)
    # The usual MP4 layout (index at the end) cut in half: no moov atom at all.
    plain = _write(tmp / "plain.mp4", moving_square(70), faststart=False).read_bytes()
    (tmp / "truncated-no-moov.mp4").write_bytes(plain[: len(plain) // 2])
    out["truncated-no-moov"] = (tmp / "truncated-no-moov.mp4", "no moov atom")
    out["missing"] = (tmp / "missing.mp4", "no such file or object")
    with av.open(str(tmp / "audio.wav"), mode="w") as container:  # a real media file without video
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    out["audio-only"] = (tmp / "audio.wav", "no video stream")
    return out


BAD_CASES = [
    "zero-byte",
    "truncated-index-first",
    "truncated-no-moov",
    "random-bytes",
    "text",
    "missing",
    "audio-only",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs_raise_anomaly_error(tmp_path, video70, case):
    path, reason = _bad_inputs(tmp_path, video70)[case]
    for attempt in (lambda: probe_video(str(path)), lambda: list(iter_clips(str(path)))):
        with pytest.raises(AnomalyError) as caught:
            attempt()
        message = str(caught.value)
        assert str(path) in message and reason in message
        assert "\n" not in message


@pytest.mark.parametrize("container_format", ["matroska", "avi"])
def test_stream_that_breaks_midway_raises_after_the_good_clips(tmp_path, container_format):
    # No full index at the start of these containers: frames decode until the cut.
    path = _write(tmp_path / f"cut.{container_format}", moving_square(150), container_format=container_format)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    clips = []
    with pytest.raises(AnomalyError, match="truncated") as caught:
        for clip in iter_clips(str(path)):
            clips.append(clip)
    assert clips, "the complete clips before the cut are still delivered"
    assert str(path) in str(caught.value)
    with pytest.raises(AnomalyError, match="truncated"):
        probe_video(str(path))


def test_corrupt_packets_raise(tmp_path, video70):
    data = bytearray(video70.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = b"\x00" * 4000
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(AnomalyError, match="decoding failed after"):
        list(iter_clips(str(path)))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied(tmp_path, video70):
    path = tmp_path / "locked.mp4"
    path.write_bytes(video70.read_bytes())
    path.chmod(0)
    try:
        with pytest.raises(AnomalyError, match="access denied"):
            probe_video(str(path))
    finally:
        path.chmod(0o644)


def test_a_folder_is_probed_as_frames_not_as_a_file(tmp_path):
    """probe_video on a folder reads its images as the frames (the folder's own errors: test_frame_folders)."""
    from PIL import Image

    folder = tmp_path / "Cam_07"
    folder.mkdir()
    for t, frame in enumerate(moving_square(3)):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")
    info = probe_video(str(folder), fps=10.0)
    assert (info.video_id, info.num_frames, info.fps, info.width, info.height) == ("Cam_07", 3, 10.0, 64, 48)


def test_avi_whose_header_declares_twice_its_frames_is_extracted_with_a_warning(tmp_path, caplog):
    """Container frame counts are hints: every frame decodes, so the video is whole, not 'truncated'."""
    from anomaly.synthetic import make_video

    path = str(tmp_path / "odd.avi")
    make_video(path, num_frames=40, height=32, width=32, container="avi", declared_frames=80)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 80  # the lie is what FFmpeg reports
    reader = open_video(path)
    with caplog.at_level("WARNING", logger="anomaly.video.pyav"):
        clips = list(reader.iter_clips(clip_len=8, stride=8))
    assert len(clips) == 5 and reader.eof and reader.num_frames == 40
    assert "declares 80 frames, 40 decode" in caplog.text


# --------------------------------------------------------------------------- ids


def test_video_id_from_uri():
    assert video_id_from_uri("s3://b/x/Abuse028_x264.mp4") == "Abuse028_x264"
    assert video_id_from_uri("/data/Normal_Videos_003_x264.mp4") == "Normal_Videos_003_x264"
    assert video_id_from_uri("s3://b/frames/Arson011_x264/") == "Arson011_x264"  # a frame folder
    assert video_id_from_uri("../x.mp4") == "x"
    assert video_id_from_uri("../../etc/passwd") == "passwd"
    assert video_id_from_uri("C:\\videos\\..\\Fight_1.avi") == "Fight_1"
    assert video_id_from_uri("https://host/v/Robbery050_x264.mp4?X-Amz-Signature=a/b") == "Robbery050_x264"
    for bad in ["", ".", "..", "a/..", "x/./", "clip\x00.mp4", "s3://b/videos/.mp4", "/videos/.hidden.mp4"]:
        with pytest.raises(AnomalyError):
            video_id_from_uri(bad)
    for uri in ["../x.mp4", "a\\b\\..\\c.mp4", "s3://b/../../y.mp4"]:
        video_id = video_id_from_uri(uri)
        assert "/" not in video_id and "\\" not in video_id and video_id not in (".", "..")


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(("clip_len", "stride"), [(16, 16), (16, 4), (8, 32)])
def test_memory_stays_bounded_on_a_long_video(tmp_path_factory, clip_len, stride):
    path = tmp_path_factory.getbasetemp() / "long.mp4"
    if not path.exists():
        _write(path, moving_square(600, height=32, width=32))
    reader = open_video(str(path))
    clips = reader.iter_clips(clip_len=clip_len, stride=stride)
    first = next(clips)
    # Streaming: the first clip arrives while most of the video is still undecoded.
    assert first.start_frame == 0 and reader.frames_decoded is None
    count = 1
    for _ in clips:
        count += 1
        assert reader.peak_buffered <= clip_len + stride
    assert count == len(clip_starts(600, clip_len, stride))
    assert reader.frames_decoded == 600
    assert 0 < reader.peak_buffered <= clip_len
