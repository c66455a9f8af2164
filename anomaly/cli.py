"""What every ``ray_jobs`` command shares: one-line errors, logging, joining Ray."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from anomaly.errors import AnomalyError

EXIT_USER_ERROR = 2


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser, argv=None) -> None:
    """Parse arguments, run ``main`` and turn an :class:`AnomalyError` into one line and exit code 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("ANOMALY_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        code = main(args)
    except AnomalyError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray Train takes at most one report per health poll (2 s by default): short epochs would
        # wait on it. Local processes inherit this; on a cluster set it in the nodes' environment.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs for a local Ray started by this command (ignored when joining a cluster via RAY_ADDRESS)",
    )


def int_pair(text: str) -> tuple[int, int]:
    """``"H,W"`` (or ``"HxW"``) -> (H, W), for argparse ``type=``."""
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers), got {text!r}") from None
    return h, w


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
