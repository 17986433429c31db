"""Probe throughput (files/s): a plain sequential loop vs Ray Data tasks on 1 and 2 workers.

    python bench/probe_throughput.py [--files 240] [--chunk 20]

All three probe the same generated files in the same run; the ratios against the
sequential loop are what to read (absolute numbers depend on the machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import ray

from sama.media import probe
from sama.pipelines.stage import map_parts
from sama.testing.media import write_image, write_video


def make_files(root: str, n: int) -> list[str]:
    files = []
    for i in range(n):
        if i % 4 == 3:
            files.append(write_image(os.path.join(root, f"i{i:05d}.jpg"), 1024, 768, seed=i))
        else:
            files.append(write_video(os.path.join(root, f"v{i:05d}.mp4"), frames=49, width=640, height=352, seed=i))
    return files


def probe_chunk(files: list[str]) -> int:
    return sum(probe(f).frames for f in files)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=240)
    ap.add_argument("--chunk", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        print(f"generating {args.files} files ...", flush=True)
        files = make_files(root, args.files)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [files[i : i + args.chunk] for i in range(0, len(files), args.chunk)]
        map_parts(items[:2], probe_chunk, 1, "warm-up", concurrency=2)  # start workers, import modules

        t_seq, frames_seq = timed(lambda: sum(probe(f).frames for f in files))
        results = {}
        for workers in (1, 2):
            t, out = timed(lambda w=workers: map_parts(items, probe_chunk, 1, f"{w} workers", concurrency=w))
            assert sum(out) == frames_seq  # same work, same answer
            results[workers] = t
        ray.shutdown()

    rate = lambda t: args.files / t  # noqa: E731
    print(f"\n{'mode':<22} {'files/s':>9} {'vs sequential':>14}")
    print(f"{'sequential loop':<22} {rate(t_seq):>9.1f} {1.0:>13.2f}x")
    for w, t in results.items():
        print(f"{f'ray data, {w} worker(s)':<22} {rate(t):>9.1f} {t_seq / t:>13.2f}x")
    print(f"2 workers vs 1 worker: {results[1] / results[2]:.2f}x")


if __name__ == "__main__":
    main()
