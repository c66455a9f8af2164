"""anomaly.console: what a person sees. The command's own lines on the terminal, Ray's in log files."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, job_command

from anomaly.console import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_rewrites_one_line_with_count_rate_and_eta():
    out = _Terminal()
    progress = Progress("extract", 4, "videos", stream=out)
    progress.update(1)
    progress.update(2, note="1 failed")
    progress.close("done")
    text = out.getvalue()
    assert text.count("\n") == 1  # one line, rewritten in place
    assert text.count("\r\033[K") == 3
    assert "extract  2/4 videos" in text and "ETA" in text and "1 failed" in text
    assert text.rstrip("\n").rsplit("\r\033[K", 1)[1].startswith("extract  2/4 videos")
    assert text.endswith("done\n")


def test_progress_in_a_log_prints_at_most_once_per_interval_and_at_the_end():
    out = io.StringIO()
    progress = Progress("score", None, "videos", stream=out, interval_s=3600)
    for done in range(1, 50):
        progress.update(done)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then the closing line
    assert lines[0].startswith("score  1 videos") and lines[1].startswith("score  49 videos")
    assert "ETA" not in lines[1]  # no total: count and rate only


@pytest.mark.slow
def test_a_job_prints_its_own_lines_and_leaves_rays_in_the_session_logs(tmp_path, r3d34_data):
    """A real job on a Ray of its own: no Ray record or worker line on the terminal, the log folder named once."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ANOMALY_LOG_LEVEL")}
    env["PYTHONPATH"] = str(REPO)
    command = job_command(
        "import_features", r3d34_data / "test", "--out", tmp_path / "store", "--num-cpus", "1"
    )
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=None)
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert "imported" in printed
    named = [line for line in printed.splitlines() if line.startswith("Ray's logs: ")]
    assert len(named) == 1
    log_dir = Path(named[0].removeprefix("Ray's logs: ").split(" (")[0])
    for noise in ("INFO", "pid=", "Started a local Ray instance", "Execution plan", "logging_progress"):
        assert noise not in printed, noise
    driver_log = (log_dir / "ray-driver.log").read_text()
    assert "Started a local Ray instance" in driver_log  # moved, not lost
    assert any(name.startswith("ray-data") for name in os.listdir(log_dir))


def test_verbose_is_a_flag_of_every_job():
    for job in ("extract", "import_features", "train", "tune", "score", "demo"):  # the jobs that start Ray
        help_text = subprocess.run(
            [sys.executable, "-m", f"ray_jobs.{job}", "--help"], cwd=REPO, capture_output=True, text=True
        ).stdout
        assert "--verbose" in help_text, job


def test_progress_in_a_log_does_not_repeat_its_last_line():
    out = io.StringIO()
    progress = Progress("extract", 2, "videos", stream=out, interval_s=0)
    progress.update(1)
    progress.update(2)
    progress.close()
    assert [line.split("  ")[1] for line in out.getvalue().splitlines()] == ["1/2 videos", "2/2 videos"]
