"""Evaluating any system's edits: brought edits aligned to their source, ground-truth metrics,
N systems side by side, and a held-out split of our own manifest."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sama import storage
from sama.jobs import launcher
from sama.jobs.demo import job_yaml
from sama.media import write_mp4
from sama.pipelines.evaluate.align import AlignConfig, AlignmentError, align_brought, frames_by_timestamp
from sama.pipelines.evaluate.job import read_results
from sama.pipelines.evaluate.manifest import read_manifest
from sama.pipelines.evaluate.metrics import PerceptualConfig, PerceptualScorer, ground_truth_metrics
from sama.schemas import MANIFEST, held_out
from sama.testing.media import frames_array

W, H, N, FPS = 64, 48, 9, 10
ITEMS = ("a", "b", "c")


def noisy(frames: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(np.float32) + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Three items (source, target = the source recoloured) and three systems' edits of them:
    ``exact`` (the target's own file, then more and more noise), ``big`` (2x size at 25 fps,
    made with ffmpeg from the targets), ``partial`` (item c missing)."""
    root = str(tmp_path_factory.mktemp("byo"))
    rows = []
    for i, item in enumerate(ITEMS):
        src = frames_array(N, W, H, seed=i)
        tgt = src.copy()
        tgt[..., 0] = 255 - tgt[..., 0]  # the "edit": red inverted
        write_mp4(f"{root}/src/{item}.mp4", src, FPS)
        write_mp4(f"{root}/tgt/{item}.mp4", tgt, FPS)
        rows.append([f"src/{item}.mp4", "invert the red", "color", item, f"tgt/{item}.mp4"])
    with open(f"{root}/bench.csv", "w", newline="") as f:
        csv.writer(f).writerows([["source", "instruction", "category", "id", "target"], *rows])
    os.makedirs(f"{root}/exact")
    shutil.copy(f"{root}/tgt/a.mp4", f"{root}/exact/a.mp4")  # equal to the target
    for sigma, item in ((8.0, "b"), (24.0, "c")):
        tgt = np.stack([f for f in _decode(f"{root}/tgt/{item}.mp4")])
        write_mp4(f"{root}/exact/{item}.mp4", noisy(tgt, sigma, seed=int(sigma)), FPS)
    os.makedirs(f"{root}/big")
    for item in ITEMS:
        ffmpeg("-i", f"{root}/tgt/{item}.mp4", "-vf", f"scale={2 * W}:{2 * H}", "-r", "25", f"{root}/big/{item}.mp4")
    os.makedirs(f"{root}/partial")
    for item in ITEMS[:2]:
        shutil.copy(f"{root}/tgt/{item}.mp4", f"{root}/partial/{item}.mp4")
    os.makedirs(f"{root}/broken")
    open(f"{root}/broken/a.mp4", "w").write("not a video at all")
    ffmpeg("-i", f"{root}/tgt/b.mp4", "-frames:v", "2", f"{root}/broken/b.mp4")  # 2 of 9 frames
    shutil.copy(f"{root}/tgt/c.mp4", f"{root}/broken/c.mp4")
    return {"root": root, "bench": f"{root}/bench.csv"}


def _decode(uri: str) -> np.ndarray:
    from sama.media import read_frames

    return read_frames(uri, indices=list(range(N)))


def test_frames_are_matched_by_timestamp():
    assert frames_by_timestamp(5, 10, 10, 20) == [0, 2, 4, 6, 8]  # twice the rate: every other frame
    assert frames_by_timestamp(4, 20, 2, 10) == [0, 0, 1, 1]  # half the rate: each frame shown twice
    assert frames_by_timestamp(6, 10, 3, 10) == [0, 1, 2]  # stops where the other clip ends
    assert frames_by_timestamp(3, 0, 5, 0) == [0, 2, 4]  # no rates: same span


def test_brought_edits_meet_the_source_grid_or_fail_naming_the_file(world):
    root, cfg = world["root"], AlignConfig()
    row = {"source_uri": f"{root}/src/a.mp4", "edit_uri": f"{root}/big/a.mp4", "target_uri": f"{root}/tgt/a.mp4"}
    clips = align_brought(row, cfg)
    assert clips.edit.shape == clips.source.shape == clips.target.shape == (N, H, W, 3)
    assert "resized to 64x48" in clips.note and "frames by timestamp" in clips.note and "25fps" in clips.note
    assert ground_truth_metrics(clips.edit, clips.target)["gt_psnr"] > 25  # the same content, rescaled twice
    with pytest.raises(AlignmentError, match=r"broken/b\.mp4: covers 2 of the source's 9") as e:
        align_brought({**row, "edit_uri": f"{root}/broken/b.mp4"}, cfg)
    assert e.value.reason == "edit_too_short"
    with pytest.raises(AlignmentError, match=r"broken/a\.mp4") as e:
        align_brought({**row, "edit_uri": f"{root}/broken/a.mp4"}, cfg)
    assert e.value.reason == "edit_unreadable"


def test_ground_truth_metrics_are_maximal_for_the_target_and_drop_with_noise():
    target = frames_array(5, W, H, seed=3)
    same = ground_truth_metrics(target, target)
    assert same["gt_psnr"] == 100.0 and same["gt_ssim"] == pytest.approx(1.0)
    psnrs = [ground_truth_metrics(noisy(target, s, 1), target)["gt_psnr"] for s in (2, 8, 32)]
    assert psnrs[0] > psnrs[1] > psnrs[2] and psnrs[0] < 100
    mask = np.zeros(target.shape[:3], np.float32)
    mask[:, :, : W // 2] = 1
    half = target.copy()
    half[:, :, : W // 2] = noisy(target[:, :, : W // 2], 32, 2)  # only the masked half differs
    regions = ground_truth_metrics(half, target, mask)
    assert regions["gt_psnr_unedited"] == 100.0 and regions["gt_psnr_edited"] < 30
    # SSIM's 7x7 window reaches a few pixels across the mask's edge
    assert regions["gt_ssim_unedited"] > 0.95 > 0.9 > regions["gt_ssim_edited"]


def test_perceptual_distance_from_a_local_encoder(tmp_path):
    from sama.models.tiny import tiny_siglip

    tiny_siglip().save_pretrained(str(tmp_path / "enc"))
    scorer = PerceptualScorer(PerceptualConfig(model=str(tmp_path / "enc")))
    a = frames_array(4, W, H, seed=1)
    assert scorer.distance(a, a) == pytest.approx(0.0, abs=1e-5)
    assert scorer.distance(a, 255 - a) > scorer.distance(a, noisy(a, 4, 0))


def test_held_out_split_is_stable_and_disjoint_from_training(tmp_path):
    from sama.pipelines.precompute.job import PrecomputeConfig, PrecomputeStage

    rows = [
        {
            "sample_id": f"ds-{i:04d}",
            "dataset": "ds",
            "category": "color",
            "task": "video_edit",
            "instruction": "x",
            "source_uri": f"/s/{i}.mp4",
            "target_uri": f"/t/{i}.mp4",
            "tgt_width": 64,
            "tgt_height": 48,
        }
        for i in range(400)
    ]
    uri = str(tmp_path / "manifest" / "part.parquet")
    storage.write_parquet(uri, MANIFEST.table(rows))
    held = read_manifest(str(tmp_path / "manifest"), "manifest", split=0.1)
    again = read_manifest(str(tmp_path / "manifest"), "auto", split=0.1)  # a Parquet folder: our manifest
    assert [it.item_id for it in held] == [it.item_id for it in again] and 20 <= len(held) <= 60
    assert all(it.target_uri == f"/t/{it.item_id[3:].lstrip('0') or '0'}.mp4" for it in held)
    trained = {p.name for p in PrecomputeStage(PrecomputeConfig(manifest=uri, holdout=0.1), str(tmp_path)).plan()}
    assert trained.isdisjoint(it.item_id for it in held) and len(trained) + len(held) == 400
    assert {r["sample_id"] for r in rows if held_out(r["sample_id"], 0.1)} == {it.item_id for it in held}


def evaluate(world, system: str, out: str, *extra: str) -> dict:
    args = [f"output={out}", f"evaluate.manifest={world['bench']}", f"evaluate.edits={world['root']}/{system}"]
    return launcher.run(job_yaml("eval"), [*args, "evaluate.score.batch_size=3", *extra])


@pytest.mark.slow
def test_three_systems_scored_and_compared(ray_cluster, world, tmp_path):
    runs = {s: str(tmp_path / s) for s in ("exact", "big", "partial", "broken")}
    summaries = {s: evaluate(world, s, out) for s, out in runs.items()}
    assert summaries["exact"]["model"] == "exact" and summaries["exact"]["edits"] == "brought"
    exact = read_results(runs["exact"]).set_index("item_id")
    assert exact.at["a", "gt_psnr"] == 100.0 and exact.at["a", "gt_psnr"] > exact.at["b", "gt_psnr"]
    assert exact.at["b", "gt_psnr"] > exact.at["c", "gt_psnr"] and exact.perceptual_model.eq("none").all()
    big = read_results(runs["big"]).set_index("item_id")
    assert big.status.eq("ok").all() and big.alignment.str.contains("edit 128x96").all()
    assert big.alignment.str.contains("@25fps resized to 64x48, 9/9 frames by timestamp").all()
    assert (big.frames > N).all() and (big.width == 2 * W).all()  # what the system delivered
    partial = read_results(runs["partial"]).set_index("item_id")
    assert partial.at["c", "error_kind"] == "edit_missing" and "partial" in partial.at["c", "error"]
    broken = read_results(runs["broken"]).set_index("item_id")
    assert broken.at["a", "error_kind"] == "edit_error" and "broken/a.mp4" in broken.at["a", "error"]
    assert broken.at["b", "error_kind"] == "edit_too_short" and "broken/b.mp4" in broken.at["b", "error"]
    assert broken.at["c", "status"] == "ok"
    assert evaluate(world, "exact", runs["exact"])["items_run"] == 0  # resumed: nothing to redo

    cmp = str(tmp_path / "cmp")
    order = [runs["exact"], runs["big"], runs["partial"]]
    s = launcher.run(job_yaml("eval_compare"), [f"output={cmp}", f"compare.runs=[{','.join(order)}]"])
    assert s["systems"] == ["exact", "big", "partial"] and s["metric"] == "gt_psnr"
    assert s["items"] == {"exact": 3, "big": 3, "partial": 3} and s["errors"]["partial"] == 1
    board = pd.read_csv(os.path.join(cmp, "leaderboard.csv"))
    psnr = board[(board.category == "overall") & (board.metric == "gt_psnr")].set_index("system")
    assert psnr.n.to_dict() == {"exact": 3, "big": 3, "partial": 2}
    assert psnr.at["exact", "mean"] == pytest.approx(exact.gt_psnr.mean(), rel=1e-5)
    assert (psnr.ci_low <= psnr["mean"]).all() and (psnr["mean"] <= psnr.ci_high).all()
    wins = pd.read_parquet(os.path.join(cmp, "win_rates.parquet"))
    row = wins[(wins.metric == "gt_psnr") & (wins.system == "partial") & (wins.opponent == "exact")].iloc[0]
    assert row["items"] == 2 and row.win_rate == pytest.approx(0.75)  # a tie on a, a win on b
    html = open(s["report"]).read()
    assert "sortkey" in html and "gt_psnr · big" in html
    assert len(storage.list_files(os.path.join(cmp, "report", "sheets"), ".jpg")) == 3
    assert pq.read_table(os.path.join(cmp, "leaderboard.parquet")).num_rows == len(board)
