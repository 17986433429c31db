"""Shared fixtures: a real S3-compatible server on 127.0.0.1 and one local Ray cluster.

The suite runs on two pytest-xdist workers (``addopts`` in pyproject.toml; ``-n 0`` runs it in
one process): each worker has its own session fixtures (its own Ray, its own S3 server), and a
test file stays on one worker (``--dist loadfile``), so a module's fixtures are made once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The longest files first, in this order (seconds on 2 cores, run alone): the two longest starting
# together keep either worker from finishing alone with a long tail.
LONGEST_FIRST = (
    "test_demo.py",  # ~380 s: the whole demo
    "test_train_job.py",  # ~320 s: ten Ray Train launches
    "test_serve.py",
    "test_precompute.py",
    "test_storage_faults.py",
    "test_world.py",
    "test_eval_job.py",
    "test_edit_parallel.py",
    "test_eval_byo.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Collect the longest files first; xdist keeps this order (``--no-loadscope-reorder``)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))  # stable: the rest as found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_quiet(snapshot, quiet_s: float = 3.0, timeout: float = 120.0):
    """Poll ``snapshot()`` until it has not changed for ``quiet_s``; return the last value.

    A SIGKILLed driver's Ray tasks run on in the shared cluster until Ray reaps them, so a
    kill-and-resume test must wait for their writes to stop before it records what was done."""
    seen, quiet_since, deadline = snapshot(), time.time(), time.time() + timeout
    while time.time() - quiet_since < quiet_s:
        assert time.time() < deadline, "the killed job's tasks kept writing"
        time.sleep(0.2)
        if (now := snapshot()) != seen:
            seen, quiet_since = now, time.time()
    return seen


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server, reached over real HTTP like any S3 endpoint."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        # Set before Ray starts so its workers inherit the same S3 settings.
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray for the session (2 CPUs, like CI; one per xdist worker)."""
    import ray

    from sama.jobs.launcher import local_ray_env

    local_ray_env()  # as `sama` sets for the embedded Ray it starts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def lookalikes(tmp_path_factory):
    """Every dataset's look-alike (made once per session; tests must not modify it)."""
    from sama.testing.lookalikes import make_lookalikes

    return make_lookalikes(str(tmp_path_factory.mktemp("datasets")), n=2, odd=True)


@pytest.fixture(scope="session")
def lookalikes_manifest(ray_cluster, lookalikes, tmp_path_factory) -> str:
    """The ingest job's manifest of every look-alike, run once per session (tests must not modify it)."""
    from sama import storage
    from sama.jobs import launcher
    from sama.jobs.demo import job_yaml

    out = str(tmp_path_factory.mktemp("ingest"))
    launcher.run(
        job_yaml("ingest"), [f"output={out}", *[f"ingest.datasets.{k}.root={v}" for k, v in lookalikes.roots.items()]]
    )
    return storage.join(out, "manifest")


@pytest.fixture(scope="module")
def judge_server():
    """A scriptable OpenAI-compatible chat server on 127.0.0.1 (the VLM judge's peer)."""
    from sama.testing.openai_server import FakeJudgeServer

    s = FakeJudgeServer()
    s.start()
    yield s
    s.stop()
