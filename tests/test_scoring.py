"""ray_jobs.score on a real synthetic H.264 clip with a real (small, random) backbone and MIL scorer."""

import csv

import pytest
import torch

from anomaly import cli
from anomaly.checkpoints import checkpoint_payload
from anomaly.config import TrainConfig
from anomaly.model import MILScorer
from anomaly.synthetic import make_video
from ray_jobs import score as score_job

STORE_META = {
    "backbone": "r3d_18",
    "feature_dim": 512,
    "weights_sha256": "random",
    "clip_len": 8,
    "stride": 8,
    "crop": [32, 32],
}


@pytest.fixture()
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = MILScorer(512)
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(
        checkpoint_payload(model, TrainConfig(), epoch=0, metrics={}, store_metadata=STORE_META),
        folder / "model.pt",
    )
    return folder


def test_score_writes_csv_png_and_video(tmp_path, run_dir, capsys):
    video = make_video(
        str(tmp_path / "Explosion001_x264.mp4"), num_frames=60, fps=20.0, event="flash", interval=(20, 40)
    )
    out = tmp_path / "out"
    args = score_job.get_args_parser().parse_args(
        [
            video.uri,
            "--checkpoint",
            str(run_dir),
            "--out",
            str(out),
            "--threshold",
            "0.0",
            "--annotated-video",
        ]
    )
    assert score_job.main(args) == 0
    with open(out / "Explosion001_x264.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60  # one row per frame
    assert [int(r["frame"]) for r in rows] == list(range(60))
    assert float(rows[20]["time_s"]) == pytest.approx(20 / 20.0)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert (out / "Explosion001_x264_timeline.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert (
        "segments above 0.0:" in printed and "0.00s" in printed
    )  # threshold 0 -> one alarm over the whole clip
    import av

    with av.open(str(out / "Explosion001_x264_scored.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 60


def test_score_with_wrong_backbone_width_is_one_line_error(tmp_path, run_dir, capsys):
    video = make_video(str(tmp_path / "Normal_Videos_001_x264.mp4"), num_frames=20, fps=10.0)
    argv = [
        video.uri,
        "--checkpoint",
        str(run_dir),
        "--backbone",
        "s3d",
        "--crop",
        "32,32",
        "--out",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(score_job.main, score_job.get_args_parser(), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "1024-d" in err and "512-d" in err and "\n" not in err


def test_score_refuses_other_weights_than_training(tmp_path, run_dir, capsys):
    from anomaly.extractors import load_backbone

    model, _ = load_backbone("r3d_18", None)
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, tmp_path / "other.pt")
    video = make_video(str(tmp_path / "Normal_Videos_002_x264.mp4"), num_frames=20, fps=10.0)
    argv = [
        video.uri,
        "--checkpoint",
        str(run_dir),
        "--weights",
        str(tmp_path / "other.pt"),
        "--out",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(score_job.main, score_job.get_args_parser(), argv)
    assert exit_info.value.code == 2
    assert "differ from the random" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
