"""Reliability against bad configuration, and security of what gets loaded and written (issue 7).

Every bad setting is run through the real command (``cli.run(main, parser, argv)``, as ``__main__``
does): one line ``error: …`` naming the problem, exit code 2, and no output folder afterwards.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomaly import cli
from anomaly import store as feature_store
from anomaly.checkpoints import CHECKPOINT_FILE, checkpoint_payload
from anomaly.config import TrainConfig
from anomaly.errors import AnomalyError
from anomaly.extraction import ExtractionSettings, extract
from anomaly.heads import MILScorer
from anomaly.synthetic import make_video
from anomaly.synthetic.features import make_feature_store, synthetic_rows
from anomaly.training import latest_stored_checkpoint, load_checkpoint_payload
from ray_jobs import evaluate as evaluate_job
from ray_jobs import extract as extract_job
from ray_jobs import score as score_job
from ray_jobs import train as train_job

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--clip-len", "4", "--crop", "32,32"]


class RunsCode:
    """A pickle that creates a file when unpickled: what a hostile checkpoint looks like."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A video, stores (16-d, 48-d, empty, only normal videos), a 16-d model, and a foreign weights file."""
    root = tmp_path_factory.mktemp("config")
    video = make_video(str(root / "Normal_Videos_001_x264.mp4"), num_frames=12, height=32, width=32)
    store16 = str(root / "store16")
    make_feature_store(store16, num_train=8, num_test=8, feature_dim=16, seed=1)
    store48 = str(root / "store48")
    make_feature_store(store48, num_train=4, num_test=4, feature_dim=48, seed=2)
    empty = str(root / "empty")
    feature_store.ensure_metadata(
        empty, feature_store.StoreMetadata(backbone="r3d_18", feature_dim=16)
    )  # _store.json, no rows
    normal_only = str(root / "normal_only")
    rows = [r for r in synthetic_rows(num_train=16, num_test=4, feature_dim=16, seed=3) if r["label"] == 0]
    feature_store.write_rows(normal_only, rows)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    meta = {"backbone": "r3d_18", "feature_dim": 16, "weights_sha256": "random", "clip_len": 4, "stride": 4}
    torch.save(
        checkpoint_payload(MILScorer(16), TrainConfig(), epoch=0, metrics={}, store_metadata=meta),
        run / "model.pt",
    )
    foreign = root / "linear.pth"
    torch.save(torch.nn.Linear(4, 3).state_dict(), foreign)
    unknown_keys = root / "typo.yaml"
    unknown_keys.write_text(yaml.safe_dump({"lr": 0.01, "learning_rate": 0.01, "epochs": 3}))
    return {
        "video": video.uri,
        "store16": store16,
        "store48": store48,
        "empty": empty,
        "normal_only": normal_only,
        "run": str(run),
        "foreign": str(foreign),
        "unknown_keys": str(unknown_keys),
    }


# (job, argv with {placeholders} and {out}, what the one line must contain)
BAD_SETTINGS = {
    "extract: unknown backbone": (
        "extract",
        ["{video}", "--out", "{out}", "--backbone", "resnet_9000", "--weights", "none"],
        ["--backbone: unknown backbone 'resnet_9000'; choose one of:", "r3d_18"],
    ),
    "extract: weights of another architecture": (
        "extract",
        ["{video}", "--out", "{out}", "--backbone", "r3d_18", "--weights", "{foreign}", *SMALL],
        ["{foreign}", "do not fit backbone 'r3d_18'", "missing", "unexpected"],
    ),
    "extract: weights file that does not exist": (
        "extract",
        ["{video}", "--out", "{out}", "--backbone", "r3d_18", "--weights", "{foreign}.missing", *SMALL],
        ["{foreign}.missing", "no such file"],
    ),
    "extract: concurrency MIN > MAX": (
        "extract",
        ["{video}", "--out", "{out}", "--backbone", "r3d_18", "--weights", "none", "--concurrency", "3,1"],
        ["--concurrency", "1 <= MIN <= MAX"],
    ),
    "train: unknown config keys": (
        "train",
        ["--features", "{store16}", "--out", "{out}", "--config", "{unknown_keys}"],
        ["{unknown_keys}", "unknown config keys: epochs, learning_rate"],
    ),
    "train: empty store": (
        "train",
        ["--features", "{empty}", "--out", "{out}"],
        ["{empty}", "no 'train' videos"],
    ),
    "train: store with only normal videos": (
        "train",
        ["--features", "{normal_only}", "--out", "{out}"],
        ["{normal_only}", "at least 2 normal and 2 anomalous", "found 8 normal and 0 anomalous"],
    ),
    "train: store that does not exist": (
        "train",
        ["--features", "{empty}-missing", "--out", "{out}"],
        ["{empty}-missing", "feature store not found"],
    ),
    "evaluate: features wider than the checkpoint": (
        "evaluate",
        ["--features", "{store48}", "--checkpoint", "{run}", "--out", "{out}"],
        ["48-d", "16-d"],
    ),
    "evaluate: empty store": (
        "evaluate",
        ["--features", "{empty}", "--checkpoint", "{run}", "--out", "{out}"],
        ["{empty}", "no 'test' videos"],
    ),
    "evaluate: no model in the checkpoint folder": (
        "evaluate",
        ["--features", "{store16}", "--checkpoint", "{empty}", "--out", "{out}"],
        ["no trained model found"],
    ),
    "score: backbone width unlike the checkpoint's": (
        "score",
        ["{video}", "--checkpoint", "{run}", "--weights", "none", "--crop", "32,32", "--out", "{out}"],
        ["512-d", "16-d"],
    ),
}
JOBS = {"extract": extract_job, "train": train_job, "evaluate": evaluate_job, "score": score_job}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_setting_is_one_line_exit_2_and_nothing_written(case, world, tmp_path, capsys, ray_cluster):
    job, argv, needles = BAD_SETTINGS[case]
    out = tmp_path / "out"
    values = {**world, "out": str(out)}
    argv = [arg.format(**values) for arg in argv]
    module = JOBS[job]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(module.main, module.get_args_parser(), argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exit_info.value.code == cli.EXIT_USER_ERROR, captured
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle.format(**values) in err, (needle, err)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


# ------------------------------------------------------------------------------------------- security


def _torch_load_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for folder in ("anomaly", "ray_jobs", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    calls.append((str(path.relative_to(REPO)), node.lineno, node))
    return calls


def test_every_torch_load_in_the_code_is_weights_only():
    calls = _torch_load_calls()
    assert len(calls) >= 3  # weights, model.pt, training checkpoints
    for where, line, call in calls:
        flags = {kw.arg: kw.value for kw in call.keywords}
        value = flags.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, (
            f"{where}:{line}: torch.load without weights_only=True"
        )


def test_training_checkpoints_that_run_code_are_never_resumed_from(tmp_path):
    """Resume reads checkpoints from storage; a planted pickle is refused there, and its code never runs."""
    from ray.train import Checkpoint

    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "ray_results" / "train" / "checkpoint_2099-01-01_00-00-00.000000"
    folder.mkdir(parents=True)
    torch.save({"epoch": 99, "model": RunsCode(str(marker))}, folder / CHECKPOINT_FILE)
    assert latest_stored_checkpoint(str(tmp_path / "run"), "train") is None  # skipped, not loaded
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_checkpoint_payload(Checkpoint.from_directory(str(folder)))
    assert not marker.exists()


def test_caller_given_ids_cannot_escape_the_store(tmp_path, world):
    """Ids a caller maps follow the listing's rule: '/'-separated safe names, nothing that climbs out."""
    store = tmp_path / "store"
    settings = ExtractionSettings(backbone="r3d_18", clip_len=4, crop=(32, 32))
    for bad in [
        "../escaped",
        "/abs/olute",
        "a//b",
        "nul\x00id",
        ".hidden",
        "..",
        "tab\tid",
        "back\\slash",
        "a/",
    ]:
        with pytest.raises(AnomalyError, match="not safe names"):
            extract({bad: world["video"]}, str(store), settings)
    assert not store.exists()  # refused before anything was written


SECRET_PATTERNS = [
    re.compile(r"aws_secret_access_key\s*[:=]", re.I),
    re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),  # an access key id
    re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),  # the shape of a secret key
]


def test_cluster_yaml_holds_no_credentials():
    path = REPO / "cluster.yaml"
    if not path.exists():
        pytest.skip("no cluster.yaml in this checkout")
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"cluster.yaml: {pattern.pattern} matches"
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if secret and len(secret) >= 16:
        assert secret not in text
    assert yaml.safe_load(text)  # and it is the YAML the launcher reads


def test_store_metadata_and_failures_hold_no_credentials(tmp_path, s3_endpoint, monkeypatch, ray_cluster):
    """Secrets set in the environment never reach _store.json or _failures.parquet (the S3 corpus run
    checks logs and Ray's session files under IAM; this one checks a local run's files)."""
    secret = "s3cr3t" + "Q" * 34
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # driver side only: the store is local
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "Text001.mp4").write_text("not a video\n")
    make_video(str(folder / "Good001.mp4"), num_frames=8, height=32, width=32)
    store = tmp_path / "store"
    settings = ExtractionSettings(backbone="r3d_18", clip_len=4, crop=(32, 32), device="cpu")
    report = extract(str(folder), str(store), settings)
    assert report.extracted == ["Good001"] and len(report.failed) == 1
    for path in (p for p in store.rglob("*") if p.is_file()):  # clip table and failure log included
        assert secret.encode() not in path.read_bytes(), path.name
    assert np.isfinite(feature_store.load_bags(str(store)).features).all()
