"""Shared fixtures: a real local Ray cluster and a real S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from helpers import free_port

# Real fixture files live in the repository (small subsets of the shared data), so a fresh clone passes.
DATA = Path(__file__).resolve().parent / "data"
SHARED_DATA = DATA / "ucf_crime"
R3D34_DATA = DATA / "ucf_crime_r3d34"

# Quiet, small and fast Ray for a 2-core machine; set before any Ray import starts workers.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Official UCF-Crime annotation files and Sultani's real C3D features of 10 test videos."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def r3d34_data() -> Path:
    """A real subset of the ResNet3D-34 feature files, quirks included (blank, 31 and 33 rows)."""
    return R3D34_DATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, wired in through the standard AWS variables."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def s3_bucket(s3_endpoint) -> str:
    """A fresh bucket per test; returns ``s3://name``."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """One local Ray for the whole session; started after the S3 variables are set so workers see them."""
    import ray

    if not ray.is_initialized():
        # address="local": a Ray of this session's own, even when another `ray start` runs here.
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=400 * 1024 * 1024,
            log_to_driver=True,
        )
    yield ray
    ray.shutdown()


# Tests that start a Ray cluster (and so Ray Data, Train or Tune runs), a Ray head or a server
# subprocess are `slow`, by the fixtures they use (directly or through other fixtures); tests
# that start a subprocess themselves carry the mark by hand. `python -m pytest -m "not slow"`
# is the quick subset; CI runs everything.
SLOW_FIXTURES = {"ray_cluster", "ray_head", "iam_s3"}


# The suite runs on two pytest-xdist workers (``-n 2 --dist loadfile`` in pyproject.toml): one test
# file per unit of work, so a file's module fixtures are built once; xdist hands out the files with
# the most tests first. Handing out the longest-running files first instead measured no better
# (9 min 48 s against 8 min 43 s - 10 min 29 s), so xdist's order stands.
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
