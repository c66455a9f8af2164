"""anomaly.cli: one-line errors for bad flags, library setting errors shown as flags, shared flag groups."""

from __future__ import annotations

import argparse

import pytest

from anomaly import cli
from anomaly.errors import AnomalyError, SettingError
from anomaly.extraction import ExtractionSettings
from ray_jobs import extract as extract_job
from ray_jobs import score as score_job
from ray_jobs import train as train_job
from ray_jobs import tune as tune_job


def _fails(main, parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, parser, argv)
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage block
    return err.strip()


def test_a_range_is_checked_by_the_flags_type(capsys, tmp_path):
    never = [].append  # main must not run: the value is refused while parsing
    base = ["--features", str(tmp_path), "--out", str(tmp_path / "o")]
    err = _fails(never, train_job.get_args_parser(), [*base, "--num-workers", "0"], capsys)
    assert err == "error: --num-workers: must be an integer ≥ 1, got 0 (see --help)"
    err = _fails(never, tune_job.get_args_parser(), [*base, "--cpus-per-worker", "-1"], capsys)
    assert err == "error: --cpus-per-worker: must be a number > 0, got -1 (see --help)"
    err = _fails(never, tune_job.get_args_parser(), [*base, "--num-samples", "two"], capsys)
    assert err == "error: --num-samples: expected an integer ≥ 1, got 'two' (see --help)"
    assert cli.fraction("0.25") == 0.25 and cli.non_negative_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="from 0 to 1"):
        cli.fraction("1.5")


def test_train_and_tune_share_one_default_per_flag(tmp_path):
    base = ["--features", "s", "--out", "o"]
    train = train_job.get_args_parser().parse_args(base)
    tune = tune_job.get_args_parser().parse_args(base)
    assert cli.training_fields(train) == cli.training_fields(tune)
    assert set(cli.TRAINING_FLAGS) == {
        "num_workers",
        "use_gpu",
        "cpus_per_worker",
        "max_failures",
        "wait_for_resources",
    }
    assert train.max_failures == cli.MAX_FAILURES


def test_extract_and_score_share_one_default_per_flag(capsys):
    extract = extract_job.get_args_parser().parse_args(
        ["v", "--out", "s", "--backbone", "r3d_18", "--weights", "none"]
    )
    score = score_job.get_args_parser().parse_args(["v", "--checkpoint", "run"])
    assert cli.extraction_fields(extract) == cli.extraction_fields(score)
    # the flags' defaults are the library's: an unset flag changes nothing
    settings = ExtractionSettings(backbone="r3d_18", weights=None, **cli.extraction_fields(extract))
    assert settings == ExtractionSettings(backbone="r3d_18", weights=None)
    argv = ["v", "--checkpoint", "run", "--concurrency", "1,2,3"]
    err = _fails([].append, score_job.get_args_parser(), argv, capsys)
    assert err == "error: --concurrency: expected N or MIN,MAX, got '1,2,3' (see --help)"
    assert cli.concurrency("4") == (4, 4) and cli.concurrency("1,8") == (1, 8)


def test_a_library_setting_error_is_shown_as_the_flag_that_set_it(capsys):
    parser = cli.ArgumentParser("test", prog="job")
    parser.add_argument("--stride", type=int)
    parser.add_argument("--crop", type=cli.int_pair)

    def bad_stride(args):
        raise SettingError("stride", args.stride, "must be ≥ 1")

    def bad_crop(args):
        raise SettingError("crop", args.crop, "must be positive")

    def not_a_flag(args):
        raise SettingError("clip_len", 0, "must be ≥ 1")

    def plain(args):
        raise AnomalyError("s3://b/store", "feature store not found")

    assert _fails(bad_stride, parser, ["--stride", "0"], capsys) == "error: --stride=0: must be ≥ 1"
    assert _fails(bad_crop, parser, ["--crop", "0,8"], capsys) == "error: --crop=0,8: must be positive"
    assert _fails(not_a_flag, parser, [], capsys) == "error: clip_len=0: must be ≥ 1"
    assert _fails(plain, parser, [], capsys) == "error: s3://b/store: feature store not found"
    assert str(SettingError("stride", 0, "must be ≥ 1")) == "stride=0: must be ≥ 1"


def test_the_extract_command_names_the_flag_of_a_bad_grid(tmp_path, capsys):
    parser = extract_job.get_args_parser()
    argv = [
        str(tmp_path),
        "--out",
        str(tmp_path / "s"),
        "--backbone",
        "r3d_18",
        "--weights",
        "none",
        "--grid",
        "2x3",
    ]
    err = _fails(extract_job.main, parser, argv, capsys)
    assert err == "error: --grid=2x3: expected GxG with equal sides (e.g. 2x2, 3x3)"
    assert not (tmp_path / "s").exists()


def test_library_errors_name_parameters_and_the_command_shows_its_flags(capsys):
    """The library says ``min_duration_s``; ``ray_jobs.score`` says ``--min-duration``, from one table."""
    from anomaly.alarms import AlarmSettings

    with pytest.raises(SettingError) as caught:
        AlarmSettings(min_duration_s=-1.0).validate()
    assert str(caught.value) == "min_duration_s=-1.0: must be >= 0 seconds"  # no flag in the library

    def main(args):
        AlarmSettings(args.threshold, args.min_duration, args.merge_gap).validate()

    argv = ["v", "--checkpoint", "run", "--min-duration", "-1"]
    err = _fails(main, score_job.get_args_parser(), argv, capsys)
    assert err == "error: --min-duration=-1.0: must be >= 0 seconds"

    def plain(args):
        raise AnomalyError("labels", "give one UCSDpedN folder when overriding labels or masks")

    argv = ["v", "--out", "s", "--backbone", "c3d", "--weights", "none"]
    err = _fails(plain, extract_job.get_args_parser(), argv, capsys)
    assert err == "error: --labels: give one UCSDpedN folder when overriding labels or masks"
    err = _fails(plain, score_job.get_args_parser(), ["v", "--checkpoint", "run"], capsys)
    assert err == "error: labels: give one UCSDpedN folder when overriding labels or masks"  # no such flag
    assert cli.flag_for("decode_num_cpus") == "--decode-cpus" and cli.flag_for("clip_len") == "--clip-len"


def test_advice_names_parameters_and_each_command_shows_them_as_flags(capsys, tmp_path):
    """A message that advises a setting names it in backquotes; the command shows its flag."""

    def clash(args):
        raise AnomalyError(str(tmp_path), "holds a run with other settings; use a new `out`")

    argv = ["--features", str(tmp_path), "--out", str(tmp_path / "o"), "--num-workers", "2"]
    err = _fails(clash, train_job.get_args_parser(), argv, capsys)
    assert err == f"error: {tmp_path}: holds a run with other settings; use a new --out"

    def workers(args):
        raise AnomalyError("num_workers", "2 workers cannot share a global batch of 1 bags per label")

    err = _fails(workers, train_job.get_args_parser(), argv, capsys)
    assert err == "error: --num-workers: 2 workers cannot share a global batch of 1 bags per label"
    # A parameter of another command: its usual flag. Through the Python API: the name.
    assert cli.flag_text("import them with `frame_counts`") == "import them with --frame-counts"
    assert str(AnomalyError("cameras", "given twice")) == "cameras: given twice"


def test_the_library_has_no_flag_strings_in_its_code():
    """Flags are the commands' business (anomaly/cli.py maps them); code outside it names parameters."""
    import ast
    import re
    from pathlib import Path

    package = Path(cli.__file__).parent
    flag = re.compile(r"(^|[\s(\"'`])--[a-z][a-z0-9-]+")
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if flag.search(node.value):
                    found.append(f"{path.relative_to(package)}:{node.lineno}: {node.value[:60]!r}")
    assert not found, "\n".join(found)
