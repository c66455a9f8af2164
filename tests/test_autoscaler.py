"""The autoscaler itself: Ray's fake multi-node provider launches a GPU worker for an extraction that waits.

``RAY_FAKE_CLUSTER=1 ray start --head --num-cpus=0 --autoscaling-config=FILE``, the
node types taken from ``cluster.yaml`` (their CPUs and GPUs from the instance
types, fake GPUs), GPU workers at zero. An extraction submitted with ``ray job
submit`` and ``--num-gpus-per-actor 1 --device cpu`` first waits; the autoscaler
launches a GPU worker on the demand the job states; the job completes.

The GCS must be on 6379 (the fake nodes look for it there), so the test is
skipped when that port is taken. It stops only what it started, by the process
ids under its own temp dir (never ``ray stop``: it ends every Ray process on
the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid

import pytest
import yaml
from helpers import INSTANCE_TYPES, REPO, free_ports, ray_cli, stop_head

from anomaly import store as feature_store
from anomaly.synthetic import make_video

pytestmark = pytest.mark.slow  # starts Ray heads, clusters or subprocesses

CLUSTER_YAML = REPO / "cluster.yaml"
FAKE_HEAD = "ray.head.default"  # the fake provider's own name for the head's type


def fake_config() -> dict:
    """cluster.yaml's worker types with their resources, on Ray's fake multi-node provider."""
    real = yaml.safe_load(CLUSTER_YAML.read_text())
    types = {FAKE_HEAD: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, node_type in real["available_node_types"].items():
        if name == real["head_node_type"]:
            continue
        cpus, gpus = INSTANCE_TYPES[node_type["node_config"]["InstanceType"]]
        resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **(node_type.get("resources") or {})}
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": node_type.get("min_workers", 0),
            "max_workers": node_type.get("max_workers", 1),
        }
    return {
        "cluster_name": f"fake-{uuid.uuid4().hex[:6]}",
        "max_workers": 2,  # two fake nodes at most on a 2-core machine
        "idle_timeout_minutes": 1,
        "upscaling_speed": 1.0,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "head_node_type": FAKE_HEAD,
        "available_node_types": types,
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(_port_taken(6379), reason="port 6379 is taken: the fake autoscaler's GCS needs it")
def test_fake_autoscaler_launches_a_gpu_worker_for_a_waiting_extraction(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rayfake-", dir="/tmp")
    config = tmp_path / "autoscaler.yaml"
    config.write_text(yaml.safe_dump(fake_config()))
    # Every port but the GCS's of our own choosing: another Ray on this machine may hold the defaults.
    dashboard, agent_http, agent_grpc, metrics, env_agent, client = free_ports(6)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=uuid.uuid4().hex + uuid.uuid4().hex,
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(REPO),
    )
    videos = tmp_path / "videos"
    for i in range(2):
        make_video(str(videos / f"cam{i}.mp4"), num_frames=24, height=32, width=32, seed=i)
    store = tmp_path / "store"
    try:
        started = ray_cli(
            [
                "start",
                "--head",
                "--port=6379",
                "--num-cpus=0",
                f"--autoscaling-config={config}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--dashboard-agent-listen-port={agent_http}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--metrics-export-port={metrics}",
                f"--runtime-env-agent-port={env_agent}",
                f"--ray-client-server-port={client}",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            env,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        address = f"http://127.0.0.1:{dashboard}"
        job_id = f"extract-{uuid.uuid4().hex[:8]}"
        submit = [
            "job",
            "submit",
            "--address",
            address,
            "--submission-id",
            job_id,
            "--runtime-env-json",
            json.dumps({"env_vars": {"PYTHONPATH": str(REPO), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}),
            "--",
            sys.executable,
            "-m",
            "ray_jobs.extract",
            str(videos),
            "--out",
            str(store),
            *("--backbone", "r3d_18", "--weights", "none", "--clip-len", "8", "--crop", "32,32"),
            *("--num-gpus-per-actor", "1", "--device", "cpu", "--batch-size", "4", "--flush-every", "1"),
            *("--decode-cpus", "1", "--wait-for-resources", "5m"),
        ]
        deadline = time.monotonic() + 120
        while True:  # the job server answers before its agent is up on a loaded machine: try again
            submitted = ray_cli(submit, env, cwd=tmp_path, timeout=540)
            if "No available agent" not in submitted.stdout + submitted.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        logs = ray_cli(["job", "logs", "--address", address, job_id], env).stdout
        assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-4000:] + logs[-4000:]
        assert "waiting for a node with 1 CPU, 1 GPU" in logs, logs[-4000:]
        assert "2 extracted, 0 skipped as done, 0 failed" in logs, logs[-4000:]
        assert feature_store.video_ids(str(store)) == {"cam0", "cam1"}

        listed = ray_cli(["list", "nodes", "--address", address, "--detail", "--format", "json"], env)
        assert listed.returncode == 0, listed.stderr[-2000:]
        nodes = json.loads(listed.stdout)
        gpu_nodes = [n for n in nodes if (n.get("resources_total") or {}).get("GPU")]
        assert gpu_nodes, listed.stdout[-3000:]  # the autoscaler launched a GPU worker type on demand
        assert any(n.get("is_head_node") and not (n.get("resources_total") or {}).get("CPU") for n in nodes)
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
