"""Fault run of the edit service: bounded load on 127.0.0.1 while the ingress and then an editor
replica are killed with SIGKILL.

    python bench/serve_faults.py --seconds 60 --clients 4

Two editor replicas hold both CPUs (num_cpus 1 each on a 2-CPU Ray), as in the failure this
guards against: a replacement ingress must still be placed. Clients submit async edits (a
503 is retried after a pause), poll them to the end and download each result; a prober hits
``/healthz`` every 0.2 s with a 5 s timeout. After the load, every accepted job is read back.

Printed: jobs accepted / succeeded / failed (by reason) / lost (an accepted id that answers
404 or never ends), the longest interval ``/healthz`` did not answer 200, and the slowest
probe (a hang shows as a probe at its 5 s timeout).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import sys
import tempfile
import threading
import time

import httpx
import psutil

from sama.testing.media import write_video

TOKEN = "fault-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_pids(app: str, deployment: str) -> list[int]:
    """Ray titles each actor's process ray::ServeReplica:<app>:<deployment>."""
    tag = f"ServeReplica:{app}:{deployment}"
    return [p.pid for p in psutil.process_iter() if tag in " ".join(p.cmdline() or [])]


def deploy(port: int, results: str, steps: int, ingress_replicas: int) -> str:
    from ray import serve

    from sama.serve.app import build_app

    os.environ["SAMA_FAULT_TOKEN"] = TOKEN
    cfg = {
        "name": "faults",
        "route_prefix": "/",
        "results": results,
        "model": {
            "text": {"max_length": 16},
            "pipeline": {"num_inference_steps": steps, "buckets": {"area": 4096, "multiple": 16, "max_frames": 9}},
        },
        "editor": {
            "num_gpus": 0,
            "num_cpus": 1,
            "autoscaling": {"min_replicas": 2, "max_replicas": 2, "initial_replicas": 2},
        },
        "ingress": {"num_replicas": ingress_replicas},
        "queue": {"max_pending": 8, "retry_after_s": 1},
        "records": {"lease_s": 5.0},
        "auth": {"token_env": "SAMA_FAULT_TOKEN"},
    }
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="faults", route_prefix="/")
    return f"http://127.0.0.1:{port}/"


class Prober(threading.Thread):
    """GET /healthz every 0.2 s; keeps the longest run without a 200 and the slowest answer."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.stop = base, threading.Event()
        self.longest_down = self.slowest = 0.0
        self.down_since: float | None = None

    def run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    ok = c.get(self.base + "healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                now = time.monotonic()
                self.slowest = max(self.slowest, now - t0)
                if ok and self.down_since is not None:
                    self.longest_down = max(self.longest_down, now - self.down_since)
                    self.down_since = None
                elif not ok and self.down_since is None:
                    self.down_since = t0
                time.sleep(0.2)


def client_loop(base: str, source: str, until: float, accepted: list[str], refusals: collections.Counter) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        while time.monotonic() < until:
            try:
                r = c.post(base + "v1/edits", data={"instruction": "make it red"}, files={"video": open(source, "rb")})
            except httpx.HTTPError as e:
                refusals[type(e).__name__] += 1
                time.sleep(0.5)
                continue
            if r.status_code != 202:
                refusals[str(r.status_code)] += 1
                time.sleep(1.0)
                continue
            job_id = r.json()["id"]
            accepted.append(job_id)
            while time.monotonic() < until + 120:
                try:
                    job = c.get(base + f"v1/edits/{job_id}").json()
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.5)
                    continue
                if job.get("state") in ("succeeded", "failed", "cancelled"):
                    if job["state"] == "succeeded":
                        c.get(base + f"v1/edits/{job_id}/result").raise_for_status()
                    break
                time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the load")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="denoising steps per edit")
    ap.add_argument("--ingress-replicas", type=int, default=1)
    args = ap.parse_args()

    import ray

    tmp = tempfile.mkdtemp(prefix="sama-faults-")
    source = write_video(os.path.join(tmp, "src.mp4"), frames=9, width=64, height=64, fps=8)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = deploy(free_port(), os.path.join(tmp, "results"), args.steps, args.ingress_replicas)
    prober = Prober(base)
    prober.start()
    accepted: list[str] = []
    refusals: collections.Counter = collections.Counter()
    t0 = time.monotonic()
    until = t0 + args.seconds
    clients = [
        threading.Thread(target=client_loop, args=(base, source, until, accepted, refusals), daemon=True)
        for _ in range(args.clients)
    ]
    for c in clients:
        c.start()
    kills = []
    for at, deployment in ((args.seconds * 0.25, "Ingress"), (args.seconds * 0.6, "Editor")):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        pid = replica_pids("faults", deployment)[0]
        os.kill(pid, signal.SIGKILL)
        kills.append(f"{deployment} pid {pid} at {time.monotonic() - t0:.1f}s")
        print(f"[faults] kill -9 {kills[-1]}", flush=True)
    for c in clients:
        c.join()
    prober.stop.set()
    prober.join()
    if prober.down_since is not None:
        prober.longest_down = max(prober.longest_down, time.monotonic() - prober.down_since)

    states: collections.Counter = collections.Counter()
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        for job_id in accepted:
            r = c.get(base + f"v1/edits/{job_id}")
            job = r.json() if r.status_code == 200 else {}
            state = job.get("state", f"lost ({r.status_code})")
            if state not in ("succeeded", "failed", "cancelled"):
                state = f"lost (still {state})"
            elif state == "failed":
                state = f"failed: {job['error'][:70]}"
            states[state] += 1
    print(
        f"load: {args.clients} clients x {args.seconds:g}s, {args.ingress_replicas} ingress replica(s), "
        f"kills: {'; '.join(kills)}"
    )
    print(f"jobs accepted: {len(accepted)}")
    for state, n in states.most_common():
        print(f"  {n:>4}  {state}")
    lost = sum(n for s, n in states.items() if s.startswith("lost"))
    print(f"records lost: {lost}")
    print(f"refused submissions: {dict(refusals)}")
    print(f"longest /healthz outage: {prober.longest_down:.1f}s; slowest probe: {prober.slowest:.2f}s (timeout 5s)")
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
