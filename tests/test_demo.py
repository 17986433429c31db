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
        timeout=1800,  # a hang guard: alone 4.5-8.5 min on 2-core machines seen, ~9-10 beside another xdist worker
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "total" in res.stdout and os.path.exists(tmp_path / "demo" / "outputs" / "ingest" / "summary.json")
    assert os.path.isdir(tmp_path / "demo" / "outputs" / "train_stage1" / "export" / "transformer")
    check_learning(tmp_path / "demo", res.stdout)
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
    readme = open(export / "README.md").read()
    assert card["evaluations"] and all(d["license"] in readme for d in trained.values())
    # `sama lineage` on it walks train -> precompute -> filter -> ingest -> the generated raw data.
    res = subprocess.run(
        [sys.executable, "-m", "sama.jobs.cli", "lineage", str(export)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = [line.strip().split(":")[0] for line in res.stdout.splitlines()]
    for job in ("train", "precompute", "filter", "probe"):
        assert job in jobs, res.stdout
    raw = [line.split("raw data: ")[1].split()[0] for line in res.stdout.splitlines() if "raw data: " in line]
    # inputs no job made: the generated data, and the world checkpoint (its VAE made the latents, its
    # transformer started stage 0)
    inputs = (str(tmp_path / "demo" / "data"), str(tmp_path / "demo" / "models" / "world"))
    assert raw and all(r.startswith(inputs) for r in raw) and any(r.startswith(inputs[0]) for r in raw), raw


# What the debug recipe must learn on the held-out world benchmark (fixed seeds), in dB. Measured
# (2026-12-02, 2 cores): stage 1 19.66 vs identity 18.34 and untrained 12.54 to the target; 14.71 vs
# identity's 10.48 inside the edited region. (On 40 items, `sama learning`: 18.66 vs 17.95 and 12.06.)
BEATS_IDENTITY_BY = 1.0
BEATS_UNTRAINED_BY = 5.0
EDITED_BEATS_IDENTITY_BY = 4.0


def check_learning(demo, stdout: str) -> None:
    """Stage 1 beats copying the source and the untrained model on PSNR to the target; the semantic
    loss falls in both stages; the served edit is of a held-out clip."""
    table = json.loads(open(demo / "outputs" / "learning.json").read())
    assert list(table) == ["identity", "untrained", "stage0", "stage1"] and "what training learned" in stdout
    for row in table.values():
        assert row["errors"] == 0 and row["items"] == 10
        assert set(row) >= {"psnr_to_target", "edited_psnr", "unedited_psnr", "recolour_success"}
    psnr = {name: row["psnr_to_target"] for name, row in table.items()}
    assert psnr["stage1"] >= psnr["identity"] + BEATS_IDENTITY_BY, table
    assert psnr["stage1"] >= psnr["untrained"] + BEATS_UNTRAINED_BY, table
    assert table["stage1"]["edited_psnr"] >= table["identity"]["edited_psnr"] + EDITED_BEATS_IDENTITY_BY, table
    assert psnr["stage0"] > psnr["untrained"], table  # stage 0 alone already moves towards the targets
    for stage in ("train_stage0/stage0", "train_stage1/stage1"):
        rows = [json.loads(line) for line in open(demo / "outputs" / stage / "metrics" / "metrics.jsonl")]
        assert all(r["grad_norm"] > 0 for r in rows if "grad_norm" in r), stage  # measured on ZeRO-0 too, not NaN
        sa = [r["loss_sa"] for r in rows if r.get("loss_sa") is not None]
        k = max(1, len(sa) // 5)
        assert sum(sa[-k:]) / k < 0.9 * sum(sa[:k]) / k, (stage, sa[:k], sa[-k:])
    vae = json.loads(open(demo / "models" / "world" / "vae" / "report.json").read())
    assert vae["held_out_colour_accuracy"] >= 0.9, vae  # the edits' colours can decode right
    assert os.path.getsize(demo / "outputs" / "serve" / "edited.mp4") > 0
    assert os.path.getsize(demo / "outputs" / "serve" / "edit_sheet.jpg") > 0
