"""`sama submit` against a real Ray head started here (`ray start --head` on 127.0.0.1)."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from conftest import REPO, free_port
from sama.jobs.demo import job_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A separate one-node cluster with its dashboard (Job API) on 127.0.0.1, token auth on."""
    tmp = tmp_path_factory.mktemp("head")
    # Ray's sockets live under its temp dir and a Unix socket path holds at most 107 bytes: pytest's
    # (deeper under pytest-xdist) would not fit, so the head gets a short one of its own.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    # The session's own Ray (ray_cluster) holds the agent's fixed default port 52365, so every
    # port this head would share with it is picked free here.
    agent_ports = {
        flag: str(free_port())
        for flag in (
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        )
    }
    proc = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            "--num-cpus",
            "2",
            "--temp-dir",
            ray_tmp,
            *(x for kv in agent_ports.items() for x in kv),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except Exception as e:
            if getattr(e, "code", None) == 401:  # up, and asking for the token as it should
                break
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("ray head did not come up") from e
            time.sleep(0.5)
    yield address, env
    # Every process of this head is in its session: SIGTERM lets them exit, and `ray start --block`
    # itself lingers ~30 s after its children are gone, so the group is killed after a short grace.
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    shutil.rmtree(ray_tmp, ignore_errors=True)


def sama(*args, env, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "sama.jobs.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_runs_to_completion_following_logs(ray_head, lookalikes, tmp_path):
    address, env = ray_head
    out = tmp_path / "out"
    args = [f"output={out}", "ingest.datasets=null", f"ingest.datasets.nhr_edit.root={lookalikes.roots['nhr_edit']}"]
    res = sama("submit", job_yaml("ingest"), *args, "--address", address, "--wait", "--submission-id", "ok-1", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nhr_edit" in res.stdout and "total" in res.stdout  # the job's own summary, followed live
    assert "ok-1: SUCCEEDED" in res.stderr
    assert (
        json.loads((out / "summary.json").read_text())["datasets"]["nhr_edit"]["kept"]
        == lookalikes.expected["nhr_edit"].kept
    )

    listed = sama("jobs", "list", "--address", address, env=env)
    assert "ok-1" in listed.stdout and "SUCCEEDED" in listed.stdout and "ingest" in listed.stdout


def test_failing_job_is_reported_failed(ray_head, tmp_path):
    address, env = ray_head
    args = [f"output={tmp_path}/out", "ingest.datasets=null", f"ingest.datasets.reco.root={tmp_path}/nowhere"]
    res = sama("submit", job_yaml("ingest"), *args, "--address", address, "--wait", "--submission-id", "bad-1", env=env)
    assert res.returncode == 1
    assert "ingest.datasets.reco.root=" in res.stdout and "does not exist" in res.stdout  # the job's own error
    assert "bad-1: FAILED" in res.stderr
    assert sama("jobs", "status", "bad-1", "--address", address, env=env).stdout.strip() == "FAILED"


def test_config_errors_stop_before_submitting(ray_head):
    address, env = ray_head
    res = sama("submit", job_yaml("ingest"), "ingest.shard_sise=3", "--address", address, env=env)
    assert res.returncode == 2 and "ingest.shard_sise" in res.stderr


def test_dry_run_masks_forwarded_credentials(monkeypatch, capsys):
    from sama.jobs.cli import main

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    assert (
        main(
            [
                "submit",
                job_yaml("ingest"),
                "submit.pass_env=[AWS_SECRET_ACCESS_KEY]",
                "submit.env_vars={LOG_LEVEL: debug}",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    sub = json.loads(out)
    assert "very-secret" not in out and sub["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "***"
    assert sub["runtime_env"]["env_vars"]["LOG_LEVEL"] == "debug"
    assert (
        sub["entrypoint"] == "sama run env:SAMA_JOB_CONFIG"
        and "job: ingest" in sub["runtime_env"]["env_vars"]["SAMA_JOB_CONFIG"]
    )
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(["submit", job_yaml("ingest"), "submit.pass_env=[AWS_SECRET_ACCESS_KEY]", "--dry-run"]) == 2
