"""Cheap-check throughput (clips/s): a plain sequential loop vs the filter's threaded task.

    python bench/checks_throughput.py [--clips 48] [--frames 33] [--size 480x272] [--threads 4]

Both decode the same generated video-edit pairs (source + target) and run the same
checks; the ratio is what to read (absolute rates depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from sama.pipelines.filter.checks import ChecksConfig, decode, run_checks
from sama.pipelines.filter.job import FilterConfig, filter_rows
from sama.testing.media import write_video


def make_rows(root: str, n: int, frames: int, w: int, h: int) -> list[dict]:
    rows = []
    for i in range(n):
        src = write_video(os.path.join(root, f"s{i}.mp4"), frames=frames, width=w, height=h, seed=i)
        tgt = write_video(os.path.join(root, f"t{i}.mp4"), frames=frames, width=w, height=h, seed=1000 + i)
        dims = {
            f"{p}_{k}": v
            for p in ("src", "tgt")
            for k, v in (("width", w), ("height", h), ("frames", frames), ("duration", frames / 8))
        }
        rows.append(
            {
                "sample_id": f"b{i}",
                "dataset": "bench",
                "category": None,
                "task": "video_edit",
                "instruction": "x",
                "source_uri": src,
                "target_uri": tgt,
                **dims,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", default="480x272")
    p.add_argument("--threads", type=int, default=4)
    a = p.parse_args()
    w, h = map(int, a.size.split("x"))
    cfg = FilterConfig(checks=ChecksConfig(min_short_side=32), decode_threads=a.threads)
    with tempfile.TemporaryDirectory() as root:
        rows = make_rows(root, a.clips, a.frames, w, h)
        t0 = time.perf_counter()
        loop_out = [run_checks(r, decode(r, cfg.checks), cfg.checks) for r in rows]
        t_loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        task_out = asyncio.run(filter_rows(rows, cfg, None, "bench"))
        t_task = time.perf_counter() - t0
    assert len(loop_out) == len(task_out) == len(rows)
    print(f"{a.clips} edit pairs, {a.frames} frames at {w}x{h}, {os.cpu_count()} CPUs")
    print(f"plain loop      {a.clips / t_loop:7.1f} clips/s")
    print(f"filter task x{a.threads}  {a.clips / t_task:7.1f} clips/s   ({t_loop / t_task:.2f}x the loop)")


if __name__ == "__main__":
    main()
