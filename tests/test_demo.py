"""The README's main command, end to end on a reduced size: videos -> Ray Data -> Ray Train -> Ray Tune -> evaluate -> score."""

import json

import pytest
from helpers import frame_auc_again

from ray_jobs import demo


def test_demo_end_to_end(tmp_path, ray_cluster, capsys):
    tune_config = tmp_path / "tiny_search.yaml"
    tune_config.write_text(
        "base: {max_epochs: 2, patience: 2, batch_size: 2}\n"
        "search: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"
        "tune: {num_samples: 1, max_concurrent: 1, asha: false}\n"
    )
    out = tmp_path / "demo"
    args = demo.get_args_parser().parse_args(
        [
            "--out", str(out),
            "--videos", "12",
            "--frames", "64",
            "--crop", "32",
            "--clip-len", "4",
            "--max-epochs", "6",
            "--num-workers", "1",
            "--tune-config", str(tune_config),
        ]
    )  # fmt: skip
    assert demo.main(args) == 0
    report = capsys.readouterr().out
    for line in (
        "[1/6",
        "[6/6",
        "12 extracted, 0 skipped as done, 0 failed",
        "Results",
        "frame AUC",
        "Each step by hand",
    ):
        assert line in report, line
    assert len(report.splitlines()) <= 80, report  # a short story a person reads (issue 22)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["num_videos"] == 6
    assert metrics["frame_auc"] == pytest.approx(frame_auc_again(out / "eval", metrics["store"]), abs=1e-6)
    assert (out / "eval" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "eval" / "timelines").glob("*.png"))
    assert (out / "score" / "Explosion900_x264.csv").exists()
    assert (out / "score" / "Explosion900_x264_timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "tune" / "trials.csv").exists()
