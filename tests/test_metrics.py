import numpy as np
import pytest

from anomaly.metrics import evaluate_frames, frame_level, video_auc, video_oracle_auc, within_video_auc
from anomaly.reports import format_metrics


def test_hand_built_case_known_auc():
    # Two videos of 32 frames cut into 32 runs (protocol frames32): scores map 1:1 to frames.
    abnormal = np.full(32, 0.2)
    abnormal[8:16] = 0.9  # frames 8..15 annotated -> perfectly ranked
    normal = np.full(32, 0.1)
    normal[0] = 0.95  # one normal frame above every anomalous frame
    scores = np.stack([abnormal, normal])
    metrics = evaluate_frames(
        scores, np.array([1, 0]), [32, 32], [[(8, 16)], []], ["Explosion", "Normal"], protocol="frames32"
    )
    # positives: 8 frames at 0.9; negatives: 24 at 0.2, 31 at 0.1, 1 at 0.95 -> AUC = 55/56
    assert metrics["frame_auc"] == pytest.approx(55 / 56)
    assert metrics["false_alarm_rate"] == pytest.approx(1 / 32)
    assert metrics["per_class_auc"] == {"Explosion": pytest.approx(55 / 56)}
    assert 0 < metrics["frame_ap"] <= 1
    assert metrics["num_frames"] == 64
    # the moments of the anomalous video are ranked perfectly inside it
    assert metrics["within_video_auc"] == 1.0
    # a perfect video classifier: the 8 anomalous frames beat the 32 normal-video frames, tie the other 24
    assert metrics["video_oracle_auc"] == pytest.approx((32 + 0.5 * 24) / 56)
    printed = format_metrics(metrics)  # what ray_jobs.evaluate prints
    assert "within-video AUC 100.00" in printed and "video oracle     78.57" in printed


def test_within_video_auc_ignores_how_videos_rank_against_each_other():
    intervals = [[(0, 8)], [(16, 32)], []]
    scores = np.full((3, 32), 0.1)
    scores[0, :8], scores[1, :16] = 0.3, 0.9  # video 1 finds the wrong half; videos ranked perfectly
    frames = frame_level(scores, [32, 32, 32], intervals, protocol="frames32")
    # video 0: 8 positives above 24 negatives (1.0); video 1: 16 positives below 16 negatives (0.0)
    assert within_video_auc(frames, np.array([1, 1, 0])) == 0.5
    assert video_oracle_auc(frames, np.array([1, 1, 0])) == pytest.approx(
        (24 * 32 + 0.5 * 24 * 40) / (24 * 72)
    )


def test_frame_level_spreads_segments_over_frames():
    scores = np.linspace(0, 1, 32)[None]
    frames = frame_level(scores, [64], [[(0, 2)]], protocol="frames32")
    assert frames.scores.shape == (64,) and frames.labels[:2].tolist() == [1, 1]
    assert frames.scores[1] == 0.0 and frames.scores[63] == 1.0
    # 64 frames are 4 clips of 16; pooling 4 clips into 32 segments (bounds round(linspace(0, 4, 33)))
    # puts clip c alone in segment 4, 11, 20, 27 (the other segments repeat a clip): each clip's 16
    # frames take that segment's score.
    by_clip = frame_level(scores, [64], [[(0, 2)]], protocol="clips", clip_len=16)
    expected = np.repeat(np.linspace(0, 1, 32)[[4, 11, 20, 27]], 16)
    np.testing.assert_allclose(by_clip.scores, expected, rtol=1e-6)


def test_per_class_uses_class_plus_normals():
    scores = np.array([np.full(32, 0.9), np.full(32, 0.1), np.full(32, 0.5)])
    metrics = evaluate_frames(
        scores,
        np.array([1, 1, 0]),
        [32, 32, 32],
        [[(0, 32)], [(0, 32)], []],
        ["Arson", "Abuse", "Normal"],
        protocol="frames32",
    )
    assert metrics["per_class_auc"]["Arson"] == pytest.approx(1.0)
    assert metrics["per_class_auc"]["Abuse"] == pytest.approx(0.0)


def test_auc_undefined_is_nan():
    metrics = evaluate_frames(np.zeros((1, 32)), np.array([0]), [40], [[]], ["Normal"])
    assert np.isnan(metrics["frame_auc"])
    assert video_auc(np.zeros((2, 32)), np.array([0, 0])) != video_auc(np.zeros((2, 32)), np.array([0, 0]))


def test_saturated_scores_are_counted_and_shown():
    scores = np.full((2, 32), 0.5)
    scores[0, :8] = 1.0  # a float32 sigmoid past a logit of about 17
    scores[1, :2] = 0.0
    metrics = evaluate_frames(scores, np.array([1, 0]), [32, 32], [[(0, 8)], []], ["A", ""], clip_len=1)
    assert metrics["saturated_share"] == 10 / 64
    assert "saturated        15.62 % of segment scores" in format_metrics(metrics)
    calm = evaluate_frames(
        np.full((2, 32), 0.5), np.array([1, 0]), [32, 32], [[(0, 8)], []], ["A", ""], clip_len=1
    )
    assert calm["saturated_share"] == 0.0 and "saturated" not in format_metrics(calm)
