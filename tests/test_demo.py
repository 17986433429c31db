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
    # The exported model knows its data: every dataset with counts and licenses, the filter, the evaluation.
    export = tmp_path / "demo" / "outputs" / "train_stage1" / "export"
    card = json.loads(open(export / "model_card.json").read())
    trained = {d["dataset"]: d for d in card["data"]}
    latents = os.path.join(tmp_path, "demo", "outputs", "precompute", "latents")
    import pyarrow.parquet as pq

    table = pq.read_table(latents, columns=["dataset", "task"]).to_pylist()
    wanted = {r["dataset"] for r in table if r["task"] in ("video_edit", "image_edit")}
    assert set(trained) == wanted and all(d["samples"] > 0 and d["license"] != "unknown" for d in trained.values())
    from sama.provenance import LICENSES

    assert all(d["license"] == LICENSES[n].id and d["license_from"] == "manifest" for n, d in trained.items())
    assert all(d["filter"]["judge_model"] == "none:cheap-checks-only" for d in trained.values())
    assert card["evaluations"] and "CC-BY-NC-SA-4.0" in open(export / "README.md").read()
    # `sama lineage` on it walks train -> precompute -> filter -> ingest -> the generated raw data.
    res = subprocess.run(
        [sys.executable, "-m", "sama.jobs.cli", "lineage", str(export)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = [line.strip().split(":")[0] for line in res.stdout.splitlines()]
    for job in ("train", "precompute", "filter", "probe"):
        assert job in jobs, res.stdout
    raw = [line.split("raw data: ")[1].split()[0] for line in res.stdout.splitlines() if "raw data: " in line]
    assert raw and all(r.startswith(str(tmp_path / "demo" / "data")) for r in raw), raw
