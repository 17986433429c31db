"""Scoring brought edits: the evaluate job (``evaluate.edits=FOLDER``) vs a plain metric loop.

    python bench/eval_byo_throughput.py [--items 48]

Both score the same generated items (source, ground-truth target, and an edit at twice the
size and another frame rate, so every item needs aligning): the plain loop aligns and
computes the same metrics one item after another in this process; the job runs them as
Ray Data tasks and score actors (2 here) and writes results and markers (no report). The
first run of the job pays for starting its workers; a second run on new outputs is shown too.
Ratios are what to read; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import tempfile
import time

import ray

from sama.jobs import launcher
from sama.jobs.demo import job_yaml
from sama.media import write_mp4
from sama.pipelines.evaluate.align import AlignConfig, align_brought
from sama.pipelines.evaluate.metrics import MetricsConfig, edit_metrics, ground_truth_metrics
from sama.testing.media import frames_array


def make_items(root: str, n: int) -> list[dict]:
    items, rows = [], []
    os.makedirs(f"{root}/edits")
    for i in range(n):
        src = frames_array(33, 320, 176, seed=i)
        tgt = src.copy()
        tgt[..., 2] = 255 - tgt[..., 2]
        write_mp4(f"{root}/src/{i}.mp4", src, 16)
        write_mp4(f"{root}/tgt/{i}.mp4", tgt, 16)
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                f"{root}/tgt/{i}.mp4",
                "-vf",
                "scale=640:352",
                "-r",
                "24",
                f"{root}/edits/item{i}.mp4",
            ],
            check=True,
        )
        rows.append([f"src/{i}.mp4", "invert the blue", "color", f"item{i}", f"tgt/{i}.mp4"])
        items.append(
            {
                "source_uri": f"{root}/src/{i}.mp4",
                "target_uri": f"{root}/tgt/{i}.mp4",
                "edit_uri": f"{root}/edits/item{i}.mp4",
            }
        )
    with open(f"{root}/bench.csv", "w", newline="") as f:
        csv.writer(f).writerows([["source", "instruction", "category", "id", "target"], *rows])
    return items


def plain_loop(items: list[dict]) -> float:
    t0 = time.perf_counter()
    align, metrics = AlignConfig(), MetricsConfig()
    for item in items:
        clips = align_brought(item, align)
        edit_metrics(clips.source, clips.edit, metrics, clips.mask)
        ground_truth_metrics(clips.edit, clips.target)
    return time.perf_counter() - t0


def job(root: str, out: str) -> float:
    t0 = time.perf_counter()
    launcher.run(
        job_yaml("eval"),
        [
            f"output={out}",
            f"evaluate.manifest={root}/bench.csv",
            f"evaluate.edits={root}/edits",
            "evaluate.score.actors=2",
            "evaluate.score.num_cpus=1",
            "evaluate.report.enabled=false",
        ],
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=48)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        print(f"generating {args.items} items (source 320x176 @16 fps, edit 640x352 @24 fps) ...", flush=True)
        items = make_items(root, args.items)
        t_loop = plain_loop(items)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t_cold = job(root, f"{root}/out1")
        t_warm = job(root, f"{root}/out2")
        ray.shutdown()
    rate = lambda t: args.items / t  # noqa: E731
    print(f"\n{'mode':<28} {'items/s':>8} {'vs loop':>8}")
    print(f"{'plain metric loop':<28} {rate(t_loop):>8.2f} {1.0:>7.2f}x")
    print(f"{'evaluate job (first run)':<28} {rate(t_cold):>8.2f} {t_loop / t_cold:>7.2f}x")
    print(f"{'evaluate job (second run)':<28} {rate(t_warm):>8.2f} {t_loop / t_warm:>7.2f}x")


if __name__ == "__main__":
    main()
