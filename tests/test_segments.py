import numpy as np
import pytest

from anomaly.segments import frame_labels, frame_scores, frame_segments, pool_segments, segment_bounds


def test_pool_32_clips_is_normalised_identity_order():
    clips = np.arange(32 * 4, dtype=np.float32).reshape(32, 4) + 1
    pooled = pool_segments(clips)
    assert pooled.shape == (32, 4)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(pooled[5], clips[5] / np.linalg.norm(clips[5]), rtol=1e-6)


def test_pool_more_clips_averages_runs():
    clips = np.zeros((64, 2), dtype=np.float32)
    clips[:, 0] = np.arange(64)
    clips[:, 1] = 1.0
    pooled = pool_segments(clips)
    # 64 clips -> each segment averages 2 clips: segment 3 averages clips 6 and 7 -> x = 6.5
    expected = np.array([6.5, 1.0]) / np.linalg.norm([6.5, 1.0])
    np.testing.assert_allclose(pooled[3], expected, rtol=1e-6)


def test_pool_fewer_clips_repeats():
    clips = np.eye(4, dtype=np.float32)[:3]  # 3 clips, one-hot
    pooled = pool_segments(clips)
    assert pooled.shape == (32, 4)
    used = {int(np.argmax(row)) for row in pooled}
    assert used == {0, 1, 2}  # every clip is used, none invented
    assert int(np.argmax(pooled[0])) == 0 and int(np.argmax(pooled[-1])) == 2


def test_pool_rejects_empty():
    with pytest.raises(ValueError):
        pool_segments(np.zeros((0, 4)))


@pytest.mark.parametrize("num_frames", [1, 5, 31, 32, 33, 100, 1001, 8640])
def test_frame_segments_cover_edges(num_frames):
    seg = frame_segments(num_frames)
    bounds = segment_bounds(num_frames)
    assert seg.shape == (num_frames,)
    assert seg.min() >= 0 and seg.max() <= 31
    frames = np.arange(num_frames)
    assert np.all((bounds[seg] <= frames) & (frames < bounds[seg + 1]))  # each frame lies inside its segment
    assert np.all(np.diff(seg) >= 0)  # monotone
    if num_frames >= 32:
        assert seg[0] == 0 and seg[-1] == 31
        assert set(seg.tolist()) == set(range(32))
        counts = np.bincount(seg, minlength=32)
        assert counts.max() - counts.min() <= 1  # equal segments up to rounding


def test_frame_segments_not_divisible():
    # 100 frames: bounds = round(linspace(0, 100, 33))
    bounds = segment_bounds(100)
    seg = frame_segments(100)
    for i in range(32):
        assert np.all(seg[bounds[i] : bounds[i + 1]] == i)


def test_frame_scores_and_labels():
    scores = np.linspace(0, 1, 32)
    per_frame = frame_scores(scores, 64)
    assert per_frame.shape == (64,)
    assert per_frame[[0, 2, 63]].tolist() == pytest.approx([scores[0], scores[1], scores[-1]])
    labels = frame_labels(10, [(2, 4), (8, 20)])
    assert labels.tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
