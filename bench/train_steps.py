"""Steps/s of the debug recipe (jobs/train_world_stage1.yaml) on the demo's world latents.

Runs the stage-1 job for ``--steps`` steps twice in one go, reading the latents the recipe's way
(in each worker) and through a Ray Data pipeline per worker (the default for large runs, the
baseline), and prints steps/s of each from the run's own step times, the start-up seconds, and
the ratio. Needs ``sama demo`` first (its world checkpoint and latents), or point at others:

    python bench/train_steps.py --demo sama-demo --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

from sama.jobs import launcher
from sama.jobs.world import job_yaml


def run(demo: str, steps: int, in_worker: bool, out: str) -> dict:
    latents = os.path.join(demo, "outputs", "precompute", "latents")
    t0 = time.time()
    launcher.run(
        job_yaml("train_world_stage1"),
        [
            f"output={out}",
            f"train.model.pretrained={os.path.join(demo, 'models', 'world')}",
            "train.init_from=null",
            f"train.data.sources=[{{name: video_edit, uri: {latents}, tasks: [video_edit]}}]",
            f"train.steps={steps}",
            f"train.checkpoint.every={steps}",
            "train.export.enabled=false",
            f"train.data.read_in_worker={str(in_worker).lower()}",
            "train.metrics.log_every=1000",
        ],
    )
    wall = time.time() - t0
    rows = [json.loads(line) for line in open(os.path.join(out, "stage1", "metrics", "metrics.jsonl"))]
    times = [r["step_time_s"] for r in rows[2:]]  # the first steps warm up
    per_step = statistics.median(times)
    return {"steps_per_s": 1 / per_step, "startup_s": wall - sum(r["step_time_s"] for r in rows), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="sama-demo", help="a `sama demo` folder")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="sama-bench-train-")
    try:
        results = {
            name: run(args.demo, args.steps, in_worker, os.path.join(root, name))
            for name, in_worker in (("ray_data", False), ("in_worker", True))
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ndebug recipe (stage 1, world latents), {args.steps} steps, median step time:")
    for name, r in results.items():
        print(
            f"  {name:<9} {r['steps_per_s']:6.2f} steps/s  start-up {r['startup_s']:5.1f} s  wall {r['wall_s']:5.1f} s"
        )
    ratio = results["in_worker"]["steps_per_s"] / results["ray_data"]["steps_per_s"]
    print(f"  in_worker / ray_data: {ratio:.2f}x")


if __name__ == "__main__":
    main()
