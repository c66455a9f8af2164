"""The prepared GPU benchmark runs end to end on CPU with --smoke (the figures need a GPU machine)."""

import json
import os
import subprocess

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow  # starts Ray heads, clusters or subprocesses


def test_gpu_script_smoke_run_prints_every_figure(tmp_path):
    out = tmp_path / "gpu.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--smoke", "--backbones", "r3d_18", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row, trained = [json.loads(line) for line in out.read_text().splitlines()]
    assert trained["epochs"] == 3 and trained["fit_s"] > 0 and 0 <= trained["val_auc"] <= 1
    assert row["backbone"] == "r3d_18" and row["pipeline_clips"] > 0
    for key in (
        "model_only_clips_per_s",
        "pipeline_clips_per_s",
        "decode_fps_per_core_240p",
        "decode_fps_per_core_1080p",
    ):
        assert row[key] > 0, key
    assert "ratios (pipeline / model-only): r3d_18" in done.stdout
