"""What a job asks of the cluster: wait for nodes that join late, stay off a 0-CPU head, size to the cluster.

- :func:`wait_for_resources`: a job whose resources are not in the cluster yet
  (GPU workers start at zero in ``cluster.yaml``; a head has 0 CPUs) tells the
  autoscaler what it needs (``ray.autoscaler.sdk.request_resources``) and waits,
  saying in a progress line what for and how long, until a node that holds one
  such bundle is alive, or ``timeout_s`` has passed (then one line naming the
  missing resource).
- :data:`TASK_CPUS`: every short task of a job (commit, scoring, writing clip
  rows, header reads) asks for this share of a CPU, never 0: Ray places a task
  that asks for 0 CPUs on a 0-CPU head, beside the GCS, with no memory limit.
- :func:`tasks_in_flight`: how many commit or scoring tasks a driver keeps
  running at once, from the cluster's CPUs (not a constant).
- :func:`bookkeeping_cpus`: the CPU share of a job's long-lived bookkeeping actor:
  0 where the driver's node has CPUs, a sliver where it is a 0-CPU head.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence

from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)

# The CPU share of every short task and bookkeeping actor: enough to keep it off a 0-CPU head.
TASK_CPUS = 0.25

DEFAULT_WAIT_SECONDS = 15 * 60.0
PROGRESS_EVERY_S = 10.0


def parse_duration(text: str | float | int) -> float:
    """``"15m"``, ``"90s"``, ``"1h"``, ``"0"`` or a number of seconds -> seconds (``>= 0``)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
        if not match:
            raise AnomalyError("wait_for_resources", f"expected a duration like 90s, 15m or 1h, got {text!r}")
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds < 0:
        raise AnomalyError("wait_for_resources", f"must be >= 0, got {text!r}")
    return seconds


def _describe(bundle: Mapping[str, float]) -> str:
    """``1 CPU, 1 GPU``: the schedulable resources only (not memory, node ids, accelerator types)."""
    hidden = ("memory", "object_store_memory")
    return ", ".join(
        f"{value:g} {key}"
        for key, value in sorted(bundle.items(), key=lambda kv: (kv[0] not in ("CPU", "GPU"), kv[0]))
        if value and key not in hidden and not key.startswith(("node:", "accelerator_type:"))
    )


def _fits(bundle: Mapping[str, float]) -> bool:
    """True when some alive node holds the whole bundle (in total, not necessarily free now)."""
    import ray

    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        total = node.get("Resources", {})
        if all(total.get(key, 0.0) >= value for key, value in bundle.items() if value):
            return True
    return False


def wait_for_resources(
    bundles: Sequence[Mapping[str, float]], timeout_s: float, *, what: str = "this job"
) -> float:
    """Wait until every bundle fits on some alive node; ask the autoscaler for them meanwhile.

    Returns the seconds waited. Raises :class:`AnomalyError` (``--wait-for-resources``)
    naming the bundle that never arrived. ``timeout_s`` 0 refuses at once.
    """
    import ray

    bundles = [{k: float(v) for k, v in bundle.items() if v} for bundle in bundles]
    missing = [bundle for bundle in bundles if not _fits(bundle)]
    if not missing:
        return 0.0
    started = time.monotonic()
    requested = False
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=missing)  # a cluster without an autoscaler ignores it
        requested = True
    except Exception as exc:  # noqa: BLE001 - no autoscaler API here: waiting still works for manual nodes
        logger.debug("request_resources: %s", exc)
    last_said = -PROGRESS_EVERY_S
    try:
        while True:
            missing = [bundle for bundle in missing if not _fits(bundle)]
            waited = time.monotonic() - started
            if not missing:
                if waited > 1:
                    logger.info("%s: resources arrived after %.0f s of waiting", what, waited)
                return waited
            if waited >= timeout_s:
                raise AnomalyError(
                    "wait_for_resources",
                    f"{what} waited {waited:.0f} s for a node with {_describe(missing[0])}, "
                    f"but none joined the Ray cluster (has {_describe(ray.cluster_resources()) or 'nothing'})",
                )
            if waited - last_said >= PROGRESS_EVERY_S:
                logger.info(
                    "%s: waiting for a node with %s (%.0f s of at most %.0f s; the cluster has %s)",
                    what,
                    _describe(missing[0]),
                    waited,
                    timeout_s,
                    _describe(ray.cluster_resources()) or "no worker resources",
                )
                last_said = waited
            time.sleep(min(1.0, max(0.05, timeout_s - waited)))
    finally:
        if requested:  # from now on the job's own pending tasks and actors are the demand
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])


def bookkeeping_cpus(share: float = 0.01) -> float:
    """CPUs a job's long-lived bookkeeping actor asks for: 0, unless the driver is on a 0-CPU head.

    A 0-CPU actor is placed on a 0-CPU head; a sliver keeps it off, but a sliver held for a
    whole job would make a local Ray whose CPUs the job's work fills exactly (2 CPUs, a trial
    of 2) wait forever. So the sliver is asked for only where it is needed.
    """
    import ray

    here = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n.get("NodeID") == here), None)
    has_cpus = node is None or node.get("Resources", {}).get("CPU", 0) > 0
    return 0.0 if has_cpus else share


def tasks_in_flight(cpus_per_task: float = TASK_CPUS, *, share: float = 0.25, floor: int = 2) -> int:
    """Commit or scoring tasks to keep running: a ``share`` of the cluster's CPUs, at least ``floor``."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    return max(floor, min(256, int(cpus * share / max(cpus_per_task, 1e-3) / 4)))
