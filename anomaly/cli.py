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
