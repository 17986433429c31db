"""Precompute throughput: the Ray Data job vs a plain single-process loop.

    python bench/precompute_throughput.py [--samples 192]

samples/s of the whole precompute job (decode tasks -> encoder actor -> shard writes) against
a plain loop over the same samples with the same tiny encoders (the job's time includes Ray's
start-up, ~10 s here, so few samples understate it: 24 samples read 0.5x, 96 read 0.8x, 192
read 1.2x on 2 cores). Decode speed against ffmpeg: ``bench/decode.py``. Ratios are what to
read; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import ray

from sama import storage
from sama.buckets import make_buckets
from sama.config import from_dict
from sama.media import probe
from sama.pipelines.precompute.job import Encoders, PrecomputeJobConfig, decode_sample, run
from sama.schemas import MANIFEST, sample_id
from sama.testing.media import write_video

PRECOMPUTE = {
    "buckets": {"area": 96 * 160, "multiple": 16, "max_frames": 17},
    "decode": {"fps": 8.0, "batch_size": 2},
    "encode": {"num_cpus": 0.5, "actors": 2, "batch_size": 4},  # both cores encode, as the loop does
    "semantic": {"num_anchor_frames": 2, "num_local_tokens": 4},
    "text": {"max_length": 64},
    "shard_size": 8,
}


def make_manifest(root: str, n: int) -> str:
    rows = []
    for i in range(n):
        tgt = write_video(os.path.join(root, f"t{i}.mp4"), frames=33, width=176, height=96, fps=16, seed=i)
        src = (
            write_video(os.path.join(root, f"s{i}.mp4"), frames=33, width=176, height=96, fps=16, seed=100 + i)
            if i % 2
            else None
        )
        row = {
            "sample_id": sample_id("bench", str(i)),
            "dataset": "bench",
            "task": "video_edit" if src else "t2v",
            "instruction": f"make it snowy {i}",
            "source_uri": src,
            "target_uri": tgt,
        }
        row.update(probe(tgt).as_columns("tgt"))
        if src:
            row.update(probe(src).as_columns("src"))
        rows.append(row)
    uri = os.path.join(root, "manifest", "part.parquet")
    storage.write_parquet(uri, MANIFEST.table(rows))
    return os.path.dirname(uri)


def plain_loop(cfg: PrecomputeJobConfig) -> int:
    """The same per-sample work, one process, no Ray: decode -> encode (batch of 1)."""
    p = cfg.precompute
    enc, buckets = Encoders(p.vae, p.semantic, p.text, "cpu"), make_buckets(p.buckets)
    n = 0
    for row in storage.read_parquet(p.manifest).to_pylist():
        d = decode_sample(row, p, buckets)
        enc.encode([d["src"]], [d["tgt"]], [d["prompt"]])
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=192)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        manifest = make_manifest(root, args.samples)
        cfg = from_dict(
            PrecomputeJobConfig,
            {"output": os.path.join(root, "out"), "precompute": {**PRECOMPUTE, "manifest": manifest}},
        )
        Encoders(
            cfg.precompute.vae, cfg.precompute.semantic, cfg.precompute.text, "cpu"
        )  # warm the model code paths once
        t0 = time.perf_counter()
        n_loop = plain_loop(cfg)
        t_loop = time.perf_counter() - t0

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        summary = run(cfg)
        t_job = time.perf_counter() - t0
        ray.shutdown()
        n_job = sum(d.get("written", 0) for d in summary["datasets"].values())
        assert n_job == n_loop == args.samples, (n_job, n_loop)

    print(f"\n{'precompute (' + str(args.samples) + ' samples)':<34} {'samples/s':>10} {'vs loop':>8}")
    print(f"{'plain single-process loop':<34} {n_loop / t_loop:>10.2f} {1.0:>7.2f}x")
    print(f"{'ray data job (incl. startup)':<34} {n_job / t_job:>10.2f} {t_loop / t_job:>7.2f}x")


if __name__ == "__main__":
    main()
