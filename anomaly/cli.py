"""The command-line layer every ``ray_jobs`` command is built on: flags, one-line errors, joining Ray.

The library speaks in its own parameter names (``stride=0: must be ≥ 1``); this
layer owns the flags: the flag groups several commands share are parent parsers
defined once here (one default per flag), range checks are argparse types, and
:func:`run` shows a library :class:`~anomaly.errors.SettingError` under the flag
that set the value (``--stride=0: must be ≥ 1``). Every error is one line on
stderr and exit code 2, argparse's own included.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

from anomaly import console
from anomaly.errors import AnomalyError, SettingError

EXIT_USER_ERROR = 2
MAX_FAILURES = 2  # Ray Train worker failures a run (or a trial) recovers from: train and tune alike


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the module docstring as its help and the project's one-line errors."""

    def __init__(self, description: str | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)

    def error(self, message: str):  # argparse prints the usage first; one line is the rule here
        message = " ".join(message.split()).removeprefix("argument ")
        self.exit(EXIT_USER_ERROR, f"error: {message} (see --help)\n")


# Library parameters whose flag is spelled otherwise: every parameter ``name`` is ``--name`` with
# dashes, or one of these (the first a command has). The one table from library names to flags.
FLAG_ALIASES = {
    "decode_num_cpus": ("--decode-cpus",),
    "fps": ("--fps-default",),
    "min_duration_s": ("--min-duration",),
    "merge_gap_s": ("--merge-gap",),
    "window_seconds": (
        "--window",
    ),  # scoring's clip window; extraction's --window-seconds is the dashed name
    "annotated_videos": ("--annotated-video",),
    "cameras": ("--camera",),
}


def flag_candidates(parameter: str) -> tuple[str, ...]:
    """The flags that may set a library parameter (``decode_num_cpus`` -> ``--decode-num-cpus``, ``--decode-cpus``)."""
    return ("--" + parameter.replace("_", "-"), *FLAG_ALIASES.get(parameter, ()))


def flag_for(parameter: str, args: argparse.Namespace | None = None) -> str | None:
    """The flag of this command (``args``) that sets ``parameter``; without ``args``, its usual flag."""
    candidates = flag_candidates(parameter)
    if args is None:
        return candidates[-1] if parameter in FLAG_ALIASES else candidates[0]
    flags = {"--" + dest.replace("_", "-") for dest in vars(args)}
    return next((flag for flag in candidates if flag in flags), None)


_NAMED = re.compile(r"`([a-z][a-z0-9_]*)`")


def flag_text(text: str, args: argparse.Namespace | None = None) -> str:
    """A library message with each backquoted parameter (```out```) shown as its flag (``--out``).

    The library names a parameter it advises about in backquotes; the command shows its own flag
    for it, or the parameter's usual flag when the advice concerns another command.
    """
    return _NAMED.sub(lambda m: flag_for(m.group(1), args) or flag_for(m.group(1)), text)


def flag_message(exc: AnomalyError, args: argparse.Namespace) -> str:
    """The error's line, with a library parameter shown as the flag that set it (``--stride=0``).

    A parameter is shown as a flag when this command has that flag; otherwise (a library
    name no flag sets, a file) the error reads as the library wrote it. Parameters the message
    names in backquotes become flags too (:func:`flag_text`).
    """
    what = flag_text(exc.what, args)
    if isinstance(exc, SettingError):
        flag = flag_for(exc.parameter, args)
        if flag:
            value = exc.value
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            return f"{flag}={shown}: {what}"
        return f"{exc.where}: {what}"
    flag = flag_for(exc.where, args) if exc.where.isidentifier() else None
    return f"{flag or exc.where}: {what}"


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser, argv=None) -> None:
    """Parse arguments, run ``main`` and turn an :class:`AnomalyError` into one line and exit code 2."""
    args = parser.parse_args(argv)
    console.configure(verbose=bool(getattr(args, "verbose", False)))
    try:
        code = main(args)
    except AnomalyError as exc:
        print(f"error: {flag_message(exc, args)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``), else start a local Ray.

    A no-op when Ray is already up (tests, or a library caller that started it).
    """
    import ray

    if ray.is_initialized():
        return
    # Ray Train takes at most one report per health poll (2 s by default): short epochs would
    # wait on it. Set for cluster runs too: Ray Train propagates this variable from the driver to
    # its controller and workers (ray.train.v2 ENV_VARS_TO_PROPAGATE), wherever they run.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    address = os.environ.get("RAY_ADDRESS")
    # Workers' output (Train reports, Data plans, Tune trials) stays in the session's log files
    # unless --verbose: the terminal is for the command's own lines (anomaly.console).
    log_to_driver = console.verbose()
    console.hold_ray_logs()
    if address:
        context = ray.init(address=address, log_to_driver=log_to_driver)
    else:
        context = ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver
        )
    log_dir = console.route_ray_logs(context.address_info.get("session_dir"))
    if log_dir:
        print(f"Ray's logs: {log_dir} (--verbose shows them here)", flush=True)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-cpus",
        type=positive_int,
        default=None,
        help="CPUs for a local Ray started by this command (ignored when joining a cluster via RAY_ADDRESS)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own output (worker logs, Data plans, Train reports, Tune tables) here, "
        "not only in the session's log files",
    )


def add_wait_flag(parser: argparse.ArgumentParser) -> None:
    """``--wait-for-resources`` of every job that asks the cluster for nodes (one definition)."""
    parser.add_argument(
        "--wait-for-resources",
        type=_duration,
        default="15m",
        help="how long the job waits for nodes with its resources (GPU workers the autoscaler starts on "
        "demand) before it stops with one line naming what is missing: 90s, 15m, 1h (0: do not wait)",
    )


def training_resources(*, num_workers: int = 1, failures_help: str = "a run recovers from") -> ArgumentParser:
    """The Ray Train flags of ``train``, ``tune`` and ``demo`` (``parents=[...]``), with one default each."""
    parser = ArgumentParser(add_help=False)
    parser.add_argument(
        "--num-workers", type=positive_int, default=num_workers, help="Ray Train workers (DDP processes)"
    )
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, nccl backend")
    parser.add_argument(
        "--cpus-per-worker", type=positive_float, default=1.0, help="CPUs reserved per worker"
    )
    parser.add_argument(
        "--max-failures",
        type=non_negative_int,
        default=MAX_FAILURES,
        help=f"worker failures {failures_help} via checkpoints (default: {MAX_FAILURES})",
    )
    add_wait_flag(parser)
    return parser


# The destinations of training_resources, named as fit's and run_search's keywords.
TRAINING_FLAGS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "wait_for_resources")


def training_fields(args: argparse.Namespace) -> dict:
    """:func:`training_resources` as the keywords of ``fit`` and ``run_search``."""
    return {dest: getattr(args, dest) for dest in TRAINING_FLAGS}


def clip_flags(*, clip_len: str, stride: str, crop: str) -> ArgumentParser:
    """``--clip-len``, ``--stride``, ``--crop`` of ``extract`` and ``score`` (``parents=[...]``).

    Each defaults to None (the library fills it in); the texts say what an unset one takes.
    """
    parser = ArgumentParser(add_help=False)
    parser.add_argument("--clip-len", type=int, default=None, help=f"frames per clip (default: {clip_len})")
    parser.add_argument(
        "--stride", type=int, default=None, help=f"frames between clip starts (default: {stride})"
    )
    parser.add_argument("--crop", type=int_pair, default=None, help=f"model input H,W (default: {crop})")
    return parser


def model_actor_flags() -> ArgumentParser:
    """The Ray Data flags of ``extract`` and ``score``: model actors, decode tasks, part files."""
    parser = ArgumentParser(add_help=False)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="clips per model call (default: 16 on CPU; on GPU the backbone's: 64 c3d/r3d_18, 16 i3d, else 32)",
    )
    parser.add_argument(
        "--num-gpus-per-actor", type=float, default=0.0, help="GPUs per model actor (0: run on CPU)"
    )
    parser.add_argument(
        "--num-cpus-per-actor", type=float, default=1.0, help="CPUs per model actor (torch threads)"
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency,
        default=None,
        help="model actors: N, or MIN,MAX for an autoscaling pool (default: 1 on CPU; on GPU 1 up to every "
        "GPU the cluster has or its autoscaler can add, shrinking when idle)",
    )
    parser.add_argument(
        "--decode-cpus", type=float, default=1.0, help="CPUs reserved per decoding task (one video each)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="model device: auto, cpu or cuda; 'cpu' with --num-gpus-per-actor reserves the GPUs but runs "
        "on CPU (fake GPU nodes in tests); without it a GPU actor whose torch sees no CUDA is refused",
    )
    add_wait_flag(parser)
    parser.add_argument(
        "--flush-every",
        type=int,
        default=16,
        help="finished videos per part file (a kill loses at most these)",
    )
    return parser


# The library parameters a command's flags set, by the rule of FLAG_ALIASES (the one table from
# parameter to flag): ``settings_fields(args, PARAMETERS)`` is the keywords, never a hand-written call.
EXTRACTION_PARAMETERS = (  # clip_flags and model_actor_flags: ExtractionSettings fields
    "clip_len",
    "stride",
    "crop",
    "batch_size",
    "num_gpus_per_actor",
    "num_cpus_per_actor",
    "concurrency",
    "decode_num_cpus",
    "device",
    "flush_every",
    "wait_for_resources",
)
SCORING_PARAMETERS = (  # ray_jobs.score: anomaly.scoring.job.scoring_job's overrides
    "backbone",
    "weights",
    *EXTRACTION_PARAMETERS,
    "fps",
    "threshold",
    "min_duration_s",
    "merge_gap_s",
    "window_seconds",
    "window_clips",
    "annotated_videos",
)


def settings_fields(args: argparse.Namespace, parameters: tuple[str, ...]) -> dict:
    """The library keywords ``parameters`` from this command's flags (each the flag :func:`flag_for` names)."""
    fields = {}
    for parameter in parameters:
        flag = flag_for(parameter, args)
        if flag is None:
            raise ValueError(f"this command has no flag for {parameter!r}")  # a bug in the command
        fields[parameter] = getattr(args, flag.removeprefix("--").replace("-", "_"))
    return fields


def extraction_fields(args: argparse.Namespace) -> dict:
    """:func:`clip_flags` and :func:`model_actor_flags` as ``ExtractionSettings`` keywords."""
    return settings_fields(args, EXTRACTION_PARAMETERS)


def alarm_flags(*, window_help: str) -> ArgumentParser:
    """The alarm rule and scoring window flags of ``score`` and ``live`` (``parents=[...]``), one default each.

    ``window_help``: what the window is for the command (centred in batch, trailing live).
    """
    from anomaly.alarms import DEFAULT_MERGE_GAP_S, DEFAULT_MIN_DURATION_S, DEFAULT_THRESHOLD
    from anomaly.scoring.windows import DEFAULT_WINDOW_SECONDS

    parser = ArgumentParser(add_help=False)
    parser.add_argument(
        "--threshold", type=fraction, default=DEFAULT_THRESHOLD, help="clip score above which an alarm starts"
    )
    parser.add_argument(
        "--min-duration",
        type=float,
        default=DEFAULT_MIN_DURATION_S,
        help="seconds; shorter alarms (after merging) are dropped",
    )
    parser.add_argument(
        "--merge-gap",
        type=float,
        default=DEFAULT_MERGE_GAP_S,
        help="seconds; alarms closer than this are one alarm",
    )
    parser.add_argument("--window", type=positive_float, default=DEFAULT_WINDOW_SECONDS, help=window_help)
    parser.add_argument(
        "--window-clips", type=positive_int, default=None, help="the window in clips (overrides --window)"
    )
    return parser


# --- argparse types: a range check is the flag's type, so a bad value is refused at parse time ---


def _number(text: str, kind: type, test, rule: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def _duration(text: str) -> float:
    from anomaly.cluster import parse_duration

    try:
        return parse_duration(text)
    except AnomalyError as exc:
        raise argparse.ArgumentTypeError(exc.what) from None


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "an integer ≥ 1")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer ≥ 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0 and v == v and v != float("inf"), "a number > 0")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1")


def int_pair(text: str) -> tuple[int, int]:
    """``"H,W"`` (or ``"HxW"``) -> (H, W), for argparse ``type=``."""
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers), got {text!r}") from None
    return h, w


def concurrency(text: str) -> tuple[int, int]:
    """``"N"`` -> (N, N); ``"MIN,MAX"`` -> (MIN, MAX), for argparse ``type=`` (the library checks the range)."""
    try:
        numbers = [int(p) for p in text.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX, got {text!r}")
    return numbers[0], numbers[-1]


def add_ground_truth_arguments(parser: argparse.ArgumentParser, *, frame_counts_note: str = "") -> None:
    """``--annotations`` and ``--frame-counts``, defaulting to the bundled official UCF-Crime files."""
    from anomaly.ground_truth import bundled_file

    parser.add_argument(
        "--annotations",
        default=bundled_file("Temporal_Anomaly_Annotation.txt"),
        help="official temporal annotation file; listed videos are test (default: the bundled UCF-Crime file)",
    )
    parser.add_argument(
        "--frame-counts",
        nargs="*",
        default=[
            bundled_file("Train_Annotation_with_frame_counts.txt"),
            bundled_file("Test_Annotation_with_frame_counts.txt"),
        ],
        help=f"files with 'path frame_count …' lines{frame_counts_note} "
        "(default: the bundled UCF-Crime train and test files)",
    )
