"""The demo, run once per suite: every job end to end from the CLI, as a new user runs it."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(ray_cluster, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    # A relative --dir, as a user types it: every job must resolve it against the caller's cwd
    # (Ray Train workers, for one, run elsewhere).
    res = subprocess.run(
        [sys.executable, "-m", "sama.jobs.cli", "demo", "--dir", "demo", "-n", "1"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "total" in res.stdout and os.path.exists(tmp_path / "demo" / "outputs" / "ingest" / "summary.json")
    assert os.path.isdir(tmp_path / "demo" / "outputs" / "train_stage1" / "export" / "transformer")
    clips = os.listdir(tmp_path / "demo" / "data" / "fetch" / "koala36m" / "clips")
    assert sorted(clips) == ["demo00_500-2500.mp4", "demo01_500-2500.mp4", "demo02_500-2500.mp4"]
    # the filter ran with the embedded default: cheap checks only, no judge, a report
    summary = json.loads(open(tmp_path / "demo" / "outputs" / "filter" / "summary.json").read())
    assert summary["judge_model"] == "none:cheap-checks-only" and summary["judge_requests"] == 0
    assert sum(d["keep"] for d in summary["datasets"].values()) > 0
    assert os.path.exists(tmp_path / "demo" / "outputs" / "filter" / "report" / "index.html")
