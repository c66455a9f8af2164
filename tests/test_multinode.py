"""A multi-node Ray on one machine, as a cluster runs: a head with 0 CPUs, worker nodes that join late, one lost.

``ray.cluster_utils.Cluster`` (a head with ``num_cpus=0`` and the dashboard, as in
``cluster.yaml``). An extraction, a scoring and a training job (the real
``ray_jobs`` commands, each its own driver process) start before any worker
node exists; they wait. Two worker nodes join; one is removed without grace
while work is in flight. Each job finishes; every video is exactly one row or
one failure record; the state API shows none of the jobs' tasks or actors on
the head. Only this test's own handles stop what it started (never ``ray stop``).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY_STORE_META, free_ports, job_command

from anomaly import store as feature_store
from anomaly.checkpoints import checkpoint_payload
from anomaly.config import TrainConfig
from anomaly.heads import MILScorer
from anomaly.scoring import outputs
from anomaly.synthetic import make_video, make_video_set, write_annotations
from anomaly.synthetic.features import make_feature_store

pytestmark = pytest.mark.slow  # starts Ray heads, clusters or subprocesses

TINY = ["--backbone", "r3d_18", "--weights", "none", "--clip-len", "8", "--crop", "32,32", "--device", "cpu"]
STORE_META = TINY_STORE_META
# Ray's own bookkeeping actors may live on the head: Ray Data's, and Ray Train's controller with the
# actors it keeps beside it (Ray attaches them to the driver's node). They are not the job's work;
# everything else must not be there.
RAY_INTERNAL = (
    "DatasetManager",
    "SynchronizationActor",
    "PlacementGroupCleaner",
    "PreemptionWatcher",
    "_StatsActor",
    "ActorLocationTracker",
    "_AutoscalingCoordinatorActor",
    "SplitCoordinator",
    "_UsageCollectionActor",
    "TrainController",
    "AutoscalingRequester",
    "DatasetStatsActor",
)


@pytest.fixture()
def head():
    from ray.cluster_utils import Cluster

    (dashboard_port,) = free_ports(1)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "object_store_memory": 200 * 1024**2,
        },
    )
    try:
        yield cluster, f"http://127.0.0.1:{dashboard_port}"
    finally:
        cluster.shutdown()


def _env(address: str) -> dict:
    return dict(
        {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")},
        RAY_ADDRESS=address,
        PYTHONPATH=str(REPO),
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        ANOMALY_LOG_LEVEL="INFO",
    )


def _start(job: str, argv: list, env: dict, log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed with the process below
    return subprocess.Popen(job_command(job, *argv), env=env, stdout=handle, stderr=subprocess.STDOUT)


def _wait_until(test, timeout_s: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout_s
    while not test():
        for name, proc, log in procs:
            assert proc.poll() is None or proc.returncode == 0, (
                f"{name} ended early:\n{log.read_text()[-4000:]}"
            )
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_jobs_wait_for_late_nodes_survive_a_lost_one_and_run_nothing_on_the_head(head, tmp_path):
    cluster, dashboard = head
    env = _env(cluster.address)

    videos = tmp_path / "videos"
    made = make_video_set(
        str(videos), num_normal=2, num_abnormal=2, num_frames=48, height=32, width=32, seed=1
    )
    annotations = tmp_path / "annotations.txt"
    write_annotations(made, str(annotations))
    (videos / "Broken001_x264.mp4").write_text("not a video\n")
    cams = tmp_path / "cams"
    for i in range(3):
        make_video(str(cams / f"cam{i}.mp4"), num_frames=40, height=32, width=32, seed=10 + i)
    run_dir = tmp_path / "model"
    run_dir.mkdir()
    torch.manual_seed(0)
    torch.save(
        checkpoint_payload(MILScorer(512), TrainConfig(), epoch=0, metrics={}, store_metadata=STORE_META),
        run_dir / "model.pt",
    )
    bags = str(tmp_path / "bags")
    make_feature_store(bags, num_train=16, num_test=8, feature_dim=8, signal=1.0, seed=0)
    (tmp_path / "tiny.yaml").write_text("max_epochs: 2\nbatch_size: 4\n")

    store, scores = str(tmp_path / "store"), str(tmp_path / "scores")
    common = ["--flush-every", "1", "--batch-size", "4"]
    jobs = {
        "extract": (
            [str(videos), "--out", store, *TINY, *common, "--annotations", str(annotations)],
            tmp_path / "extract.log",
        ),
        "score": (
            [str(cams), "--checkpoint", str(run_dir), "--out", scores, *TINY, *common],
            tmp_path / "score.log",
        ),
        "train": (
            [
                "--features",
                bags,
                "--out",
                str(tmp_path / "run"),
                "--config",
                str(tmp_path / "tiny.yaml"),
                "--max-failures",
                "3",
                "--cpus-per-worker",
                "0.5",
            ],
            tmp_path / "train.log",
        ),
    }
    procs = [(name, _start(name, argv, env, log), log) for name, (argv, log) in jobs.items()]
    try:
        # No worker node yet: every job waits (and says so), none fails.
        _wait_until(
            lambda: (
                "waiting for a node with" in jobs["extract"][1].read_text()
                and "waiting for a node with" in jobs["score"][1].read_text()
            ),
            120,
            "extraction and scoring never said they wait for a node",
            procs,
        )
        assert all(proc.poll() is None for _, proc, _ in procs)

        first = cluster.add_node(num_cpus=2, object_store_memory=200 * 1024**2)
        cluster.add_node(num_cpus=2, object_store_memory=200 * 1024**2)
        # A node lost while work is in flight: once extraction has committed its first video.
        _wait_until(lambda: feature_store.part_files(store), 300, "no extraction commit", procs)
        cluster.remove_node(first, allow_graceful=False)

        for name, proc, log in procs:
            assert proc.wait(timeout=600) == 0, f"{name}:\n{log.read_text()[-5000:]}"
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # Extraction: every video exactly one row or one failure record; the clip table is gone.
    table = feature_store.read_table(store, columns=["video_id"])
    rows = table.column("video_id").to_pylist()
    failed = feature_store.read_failures(store).column("video_id").to_pylist()
    expected = {v.video_id for v in made} | {"Broken001_x264"}
    assert len(rows) == len(set(rows)) and not set(rows) & set(failed)
    assert set(rows) | set(failed) == expected and "Broken001_x264" in failed
    assert feature_store.clip_files(store) == []
    # Scoring: the same rule over its videos.
    scored = outputs.scored_video_ids(scores)
    score_failed = (
        feature_store.read_failures(scores).column("video_id").to_pylist()
        if os.path.exists(os.path.join(scores, feature_store.FAILURES_FILE))
        else []
    )
    assert set(scored) | set(score_failed) == {f"cam{i}" for i in range(3)} and not set(scored) & set(
        score_failed
    )
    assert feature_store.clip_files(scores) == []
    # Training: a model.
    assert (tmp_path / "run" / "model.pt").stat().st_size > 0

    # Nothing of the jobs ran on the 0-CPU head.
    from ray.util.state import list_actors, list_tasks

    def get(row, key):
        return row.get(key) if isinstance(row, dict) else getattr(row, key, None)

    head_id = cluster.head_node.node_id
    rows = [
        *list_tasks(address=dashboard, limit=10_000, raise_on_missing_output=False),
        *list_actors(address=dashboard, limit=10_000, raise_on_missing_output=False),
    ]
    assert rows
    on_head = [
        (get(row, "type"), get(row, "class_name"), get(row, "name"))
        for row in rows
        if get(row, "node_id") == head_id
        and get(row, "type") != "DRIVER_TASK"
        and not any(name in f"{get(row, 'class_name')} {get(row, 'name')}" for name in RAY_INTERNAL)
    ]
    assert on_head == [], sorted(set(on_head))
    assert any(get(row, "node_id") not in (None, head_id) for row in rows)
