"""Fetch throughput (MB/s, items/s) against a local media server with a per-request delay.

    python bench/fetch_throughput.py [--images 96] [--videos 8] [--delay 0.05]

A plain sequential loop (urlopen -> read -> write; ffmpeg per span) against the
fetcher a fetch task runs (threads = per-host concurrency = 1, 4, 16; retries,
checksums, verification, atomic writes included). The server waits ``delay`` seconds
before each response, standing in for a far-away host; the ratios against the loop are
what to read. The job runs one such fetcher per Ray task, several tasks at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from sama.pipelines.fetch.cut import CutConfig, ffmpeg_args
from sama.pipelines.fetch.fetcher import FetchConfig, Fetcher
from sama.pipelines.fetch.limits import Gate, HostGate, HostLimit, HostLimitsConfig
from sama.pipelines.fetch.testserver import MediaServer
from sama.testing.media import image_bytes, write_video


def items(server: MediaServer, out: str, n_img: int, n_vid: int) -> list[dict]:
    rows = []
    for i in range(n_img):
        url = server.url(f"/i/{i:04d}.jpg")
        rows.append(
            {
                "id": f"{i:04d}.jpg",
                "dataset": "b",
                "group": url,
                "kind": "image",
                "source_url": url,
                "fetch_url": url,
                "method": "http",
                "output_uri": os.path.join(out, "img", f"{i:04d}.jpg"),
                "start": None,
                "end": None,
                "row": "bench",
                "error": None,
                "detail": None,
            }
        )
    for v in range(n_vid):
        url = server.url(f"/v/{v:03d}.mp4")
        for s, e in ((0.5, 2.5), (3.0, 5.0)):
            name = f"v{v:03d}_{int(s * 1000)}-{int(e * 1000)}.mp4"
            rows.append(
                {
                    "id": name,
                    "dataset": "b",
                    "group": f"v{v}",
                    "kind": "clip",
                    "source_url": url,
                    "fetch_url": url,
                    "method": "http",
                    "output_uri": os.path.join(out, "clips", name),
                    "start": s,
                    "end": e,
                    "row": "bench",
                    "error": None,
                    "detail": None,
                }
            )
    return rows


def sequential(rows: list[dict], out: str, cut: CutConfig) -> None:
    """The loop one would write first: one request at a time, no checks."""
    cache: dict[str, str] = {}
    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    os.makedirs(os.path.join(out, "clips"), exist_ok=True)
    for r in rows:
        if r["kind"] == "image":
            with urllib.request.urlopen(r["fetch_url"]) as resp, open(r["output_uri"], "wb") as f:
                f.write(resp.read())
            continue
        src = cache.get(r["fetch_url"])
        if src is None:
            src = cache[r["fetch_url"]] = os.path.join(out, os.path.basename(r["fetch_url"]))
            with urllib.request.urlopen(r["fetch_url"]) as resp, open(src, "wb") as f:
                f.write(resp.read())
        subprocess.run(ffmpeg_args(src, r["output_uri"], r["start"], r["end"], cut), check=True, capture_output=True)


def scenario(label: str, n_img: int, n_vid: int, delay: float, tmp: str) -> None:
    with MediaServer(delay=delay) as server:
        for i in range(n_img):
            server.add(f"/i/{i:04d}.jpg", image_bytes(1024, 768, seed=i))
        for v in range(n_vid):
            path = write_video(
                os.path.join(tmp, "src", f"{v:03d}.mp4"), frames=48, width=640, height=352, fps=8, seed=v
            )
            server.add(f"/v/{v:03d}.mp4", open(path, "rb").read())
        total_mb = sum(len(d) for d in server.files.values()) / 1e6
        n_items = n_img + 2 * n_vid
        print(
            f"\n{label}: {n_img} images + {n_vid} videos ({2 * n_vid} clips), {total_mb:.1f} MB, "
            f"server delay {delay * 1000:.0f} ms/request"
        )
        rows = {}
        cut = CutConfig(threads=1)
        out = os.path.join(tmp, label.split()[0])
        t0 = time.perf_counter()
        sequential(items(server, os.path.join(out, "seq"), n_img, n_vid), os.path.join(out, "seq"), cut)
        rows["sequential loop"] = time.perf_counter() - t0
        for c in (1, 4, 16):
            cfg = FetchConfig(threads=c, cut=cut, hosts=HostLimitsConfig(default=HostLimit(concurrency=c, rate=0)))
            f = Fetcher(cfg, Gate(HostGate(cfg.hosts)))
            t0 = time.perf_counter()
            res = f.run(items(server, os.path.join(out, f"c{c}"), n_img, n_vid))
            rows[f"fetcher, concurrency {c}"] = time.perf_counter() - t0
            assert all(r["status"] == "ok" for r in res), [r for r in res if r["status"] != "ok"][:2]
    base = rows["sequential loop"]
    print(f"{'':<26} {'seconds':>8} {'MB/s':>7} {'items/s':>8} {'vs loop':>8}")
    for name, sec in rows.items():
        print(f"{name:<26} {sec:>8.2f} {total_mb / sec:>7.2f} {n_items / sec:>8.1f} {base / sec:>7.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--delay", type=float, default=0.05)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fetch-bench-")
    try:
        scenario("images (download-bound)", args.images, 0, args.delay, tmp)
        scenario("clips (download + ffmpeg cut: CPU-bound)", 0, args.videos, args.delay, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
