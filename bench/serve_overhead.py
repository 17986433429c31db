"""Serving overhead: edits through the Ray Serve endpoint vs the same edits in-process.

    python bench/serve_overhead.py --edits 16 --steps 8

Both sides do the same work per edit: decode the uploaded mp4, run the tiny edit pipeline,
encode the result. The baseline is the pipeline called directly in this process, with one
lock around it (one model serves one edit at a time, as one editor replica does) and the
same torch thread count as the replica (Ray gives an actor with num_cpus=1 one thread).
The service runs one editor replica; clients call it over HTTP on 127.0.0.1, through the
synchronous endpoint (`POST /v1/edit`) and the job API (submit, poll, download).

Printed per concurrency (1 and 8 clients): edits/s and median latency of each path, and the
ratios service/baseline (throughput below 1 and latency above 1 are the serving overhead).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

BUCKETS = {"area": 4096, "multiple": 16, "max_frames": 9}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_clients(call, clients: int, edits: int) -> tuple[float, float]:
    """(edits/s, median latency s) of ``edits`` calls spread over ``clients`` threads."""
    latencies: list[float] = []

    def one(_):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(edits)))
    return edits / (time.perf_counter() - t0), statistics.median(latencies)


def in_process(source: str, steps: int):
    """The editor's decode -> edit -> encode, called directly; one edit at a time."""
    from sama.buckets import BucketConfig
    from sama.media import encode_mp4, read_clip
    from sama.models.encoders import TextEncoderConfig
    from sama.models.pipeline import EditModelConfig, PipelineConfig

    pipe = EditModelConfig(
        text=TextEncoderConfig(max_length=16),
        pipeline=PipelineConfig(num_inference_steps=steps, buckets=BucketConfig(**BUCKETS)),
    ).load()
    max_side = max(max(b) for b in pipe.buckets)
    lock = threading.Lock()

    def call():
        with lock:
            frames = read_clip(source, BUCKETS["max_frames"], max_side)
            out = pipe("make the square red", frames, seed=0)
            encode_mp4(out.video[0].numpy()[: len(frames)], 8.0)

    return call


def service(port: int, steps: int, results: str):
    from ray import serve

    from sama.serve.app import build_app

    os.environ["SAMA_BENCH_TOKEN"] = token = "bench-token"
    cfg = {
        "name": "bench",
        "route_prefix": "/",
        "results": results,
        "model": {
            "warmup": True,
            "text": {"max_length": 16},
            "pipeline": {"num_inference_steps": steps, "buckets": BUCKETS},
        },
        "editor": {
            "num_gpus": 0,
            "num_cpus": 1,  # one edit at a time, as the job default
            "autoscaling": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1},
        },
        "ingress": {"num_cpus": 0.5},
        "queue": {"max_pending": 32},
        "auth": {"token_env": "SAMA_BENCH_TOKEN"},
    }
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}", token


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=16, help="edits per measurement")
    ap.add_argument("--steps", type=int, default=8, help="denoising steps per edit")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()

    import ray

    from sama.serve.client import EditClient
    from sama.testing.media import write_video

    tmp = tempfile.mkdtemp(prefix="sama-serve-bench-")
    source = os.path.join(tmp, "source.mp4")
    write_video(source, frames=9, width=64, height=64, fps=8)

    torch.set_num_threads(1)  # as the editor replica (num_cpus=1)
    base = in_process(source, args.steps)
    base()  # warm-up

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    url, token = service(free_port(), args.steps, os.path.join(tmp, "results"))
    local = threading.local()

    def client() -> EditClient:
        if not hasattr(local, "c"):
            local.c = EditClient(url, token, timeout=600)
        return local.c

    def sync_call():
        client().edit_sync(source, "make the square red")

    def job_call():
        c = client()
        job = c.submit(source, "make the square red")
        c.wait(job["id"], poll_s=0.05)
        c.result(job["id"])

    sync_call()  # warm-up (first request through the proxy)
    print(f"{args.edits} edits of a 9-frame 64x64 clip, {args.steps} steps, tiny model, one editor")
    print(f"{'clients':>7} {'path':<22} {'edits/s':>8} {'p50 s':>7} {'thr ratio':>10} {'lat ratio':>10}")
    for n in args.concurrency:
        b_thr, b_lat = run_clients(base, n, args.edits)
        print(f"{n:>7} {'in-process (baseline)':<22} {b_thr:>8.2f} {b_lat:>7.2f} {1.0:>10.2f} {1.0:>10.2f}")
        for name, call in (("serve POST /v1/edit", sync_call), ("serve job API + poll", job_call)):
            thr, lat = run_clients(call, n, args.edits)
            print(f"{n:>7} {name:<22} {thr:>8.2f} {lat:>7.2f} {thr / b_thr:>10.2f} {lat / b_lat:>10.2f}")
        sys.stdout.flush()
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
