"""anomaly.video.frame_folder: natural order, clips equal the images, formats, errors, S3 prefixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import moving_square
from PIL import Image

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.video import iter_clips, open_video, probe_video
from anomaly.video.frame_folder import DEFAULT_FPS, FrameFolderVideo, natural_key


def write_folder(
    folder: Path, frames: np.ndarray, *, ext: str = "png", names=None, mode: str = "RGB"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        name = names[t] if names else f"{t:03d}.{ext}"
        image = Image.fromarray(frame) if mode == "RGB" else Image.fromarray(frame[..., 0], mode="L")
        image.save(folder / name)
    return folder


@pytest.fixture(scope="module")
def frames24() -> np.ndarray:
    return moving_square(24, 32, 48)


# --------------------------------------------------------------------------------------- ordering


def test_natural_key_orders_digit_runs_by_value():
    names = ["10.png", "2.png", "1.png", "frame_100.jpg", "frame_20.jpg", "frame_3.jpg", "002.png"]
    assert sorted(names, key=natural_key) == [
        "1.png",
        "002.png",
        "2.png",
        "10.png",
        "frame_3.jpg",
        "frame_20.jpg",
        "frame_100.jpg",
    ]


def test_unpadded_names_are_read_in_numeric_order(tmp_path, frames24):
    folder = write_folder(tmp_path / "Cam_01", frames24, names=[f"{t}.png" for t in range(24)])
    clips = list(iter_clips(str(folder), clip_len=24, stride=24))
    np.testing.assert_array_equal(clips[0].frames, frames24)  # 2.png before 10.png


# ------------------------------------------------------------------------------------ clips = images


def test_png_folder_clips_equal_the_images(tmp_path, frames24):
    folder = write_folder(tmp_path / "Test001", frames24)
    video = open_video(str(folder))
    assert isinstance(video, FrameFolderVideo)
    info = video.info
    assert (info.video_id, info.num_frames, info.width, info.height) == ("Test001", 24, 48, 32)
    assert info.fps == DEFAULT_FPS == 25.0 and info.rotation == 0
    clips = list(video.iter_clips(clip_len=8, stride=8))
    assert [c.start_frame for c in clips] == [0, 8, 16]
    for clip in clips:
        np.testing.assert_array_equal(clip.frames, frames24[clip.start_frame : clip.start_frame + 8])
    assert video.frames_decoded == 24 and video.peak_buffered <= 8


def test_resize_and_crop_follow_the_video_rules(tmp_path, frames24):
    folder = write_folder(tmp_path / "v", frames24)
    clips = list(iter_clips(str(folder), clip_len=4, stride=10, size=(16, 24), crop=(8, 8)))
    assert [c.start_frame for c in clips] == [0, 10, 20]
    expected = np.asarray(Image.fromarray(frames24[10]).resize((24, 16), resample=Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(clips[1].frames[0], expected[4:12, 8:16])


def test_grayscale_tif_becomes_three_equal_channels(tmp_path, frames24):
    folder = write_folder(tmp_path / "Train001", frames24[:20], ext="tif", mode="L")
    clip = next(iter_clips(str(folder), clip_len=20, stride=20))
    assert clip.frames.shape == (20, 32, 48, 3)
    for channel in range(3):
        np.testing.assert_array_equal(clip.frames[..., channel], frames24[:20, ..., 0])


def test_jpeg_and_bmp_frames_are_read(tmp_path, frames24):
    jpg = write_folder(tmp_path / "jpg", frames24[:20], ext="jpg")
    clip = next(iter_clips(str(jpg), clip_len=20, stride=20))
    assert np.abs(clip.frames.astype(int) - frames24[:20]).mean() < 12  # lossy, but the same pictures
    bmp = write_folder(tmp_path / "bmp", frames24[:20], ext="BMP")
    np.testing.assert_array_equal(next(iter_clips(str(bmp), clip_len=20, stride=20)).frames, frames24[:20])


def test_other_files_and_subfolders_are_ignored(tmp_path, frames24):
    folder = write_folder(tmp_path / "01_0014", frames24[:20])
    (folder / "notes.txt").write_text("not a frame")
    (folder / "Thumbs.db").write_bytes(b"\0" * 10)
    (folder / ".hidden.png").write_bytes(b"junk")
    write_folder(folder / "sub", frames24[:3])
    assert probe_video(str(folder)).num_frames == 20


def test_fps_comes_from_the_setting(tmp_path, frames24):
    folder = write_folder(tmp_path / "v", frames24[:20])
    assert probe_video(str(folder), fps=10).fps == 10.0
    with pytest.raises(AnomalyError, match="frame rate"):
        open_video(str(folder), fps=-1)


def test_read_frame_is_random_access(tmp_path, frames24):
    folder = write_folder(tmp_path / "v", frames24[:20])
    video = open_video(str(folder))
    np.testing.assert_array_equal(video.read_frame(13), frames24[13])
    with pytest.raises(AnomalyError, match="out of range"):
        video.read_frame(20)


# ------------------------------------------------------------------------------------------- errors


def test_empty_folder_has_no_image_frames(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(AnomalyError, match="no image frames"):
        probe_video(str(tmp_path / "empty"))


def test_corrupt_frame_names_the_frame(tmp_path, frames24):
    folder = write_folder(tmp_path / "v", frames24[:20])
    (folder / "007.png").write_bytes(b"this is not a png")
    with pytest.raises(AnomalyError) as info:
        list(iter_clips(str(folder), clip_len=4, stride=4))
    assert info.value.where == str(folder)
    assert "frame 007.png" in info.value.what and "\n" not in str(info.value)


def test_truncated_frame_is_unreadable(tmp_path, frames24):
    folder = write_folder(tmp_path / "v", frames24[:20])
    data = (folder / "012.png").read_bytes()
    (folder / "012.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(AnomalyError, match="frame 012.png"):
        list(iter_clips(str(folder), clip_len=4, stride=4))


def test_zero_byte_frame(tmp_path, frames24):
    folder = write_folder(tmp_path / "v", frames24[:20])
    (folder / "000.png").write_bytes(b"")
    with pytest.raises(AnomalyError, match="empty file"):
        probe_video(str(folder))


def test_frames_of_different_sizes_are_refused(tmp_path, frames24):
    folder = write_folder(tmp_path / "v", frames24[:20])
    Image.fromarray(moving_square(1, 16, 16)[0]).save(folder / "015.png")
    with pytest.raises(AnomalyError, match="frame 015.png: is 16x16 but the first frame is 48x32"):
        list(iter_clips(str(folder), clip_len=4, stride=4))


# ------------------------------------------------------------------------------------------------ S3


def test_s3_prefix_is_a_frame_folder(tmp_path, frames24, s3_bucket):
    local = write_folder(tmp_path / "Test002", frames24[:20], names=[f"{t}.png" for t in range(20)])
    fs, _ = uris.filesystem(s3_bucket)
    for path in local.iterdir():
        fs.pipe_file(f"{s3_bucket[5:]}/videos/Test002/{path.name}", path.read_bytes())
    for uri in (f"{s3_bucket}/videos/Test002", f"{s3_bucket}/videos/Test002/"):
        video = open_video(uri, fps=10)
        assert video.info.num_frames == 20 and video.info.fps == 10.0 and video.video_id == "Test002"
        clips = list(video.iter_clips(clip_len=5, stride=5))
        np.testing.assert_array_equal(np.concatenate([c.frames for c in clips]), frames24[:20])


# --------------------------------------------------------------------------------- extraction


def test_listing_takes_image_folders_as_videos(tmp_path, frames24, s3_bucket):
    from anomaly.extraction import list_videos

    root = tmp_path / "mixed"
    root.mkdir()
    (root / "Normal_Videos_001_x264.mp4").write_bytes(b"listed by name only")
    write_folder(root / "frames" / "Test001", frames24[:3], ext="tif")
    write_folder(root / "frames" / "Test002", frames24[:3], ext="jpg")
    write_folder(root / "_cache" / "x", frames24[:3])  # hidden and _ folders are skipped
    (root / "frames" / "Test001" / "notes.txt").write_text("x")
    assert list_videos(str(root)) == sorted(
        [
            str(root / "Normal_Videos_001_x264.mp4"),
            str(root / "frames" / "Test001"),
            str(root / "frames" / "Test002"),
        ]
    )
    assert list_videos(str(root / "frames" / "Test001")) == [str(root / "frames" / "Test001")]
    fs, _ = uris.filesystem(s3_bucket)
    for path in (root / "frames" / "Test002").iterdir():
        fs.pipe_file(f"{s3_bucket[5:]}/set/Test002/{path.name}", path.read_bytes())
    assert list_videos(f"{s3_bucket}/set") == [f"{s3_bucket}/set/Test002"]
