"""Storage under faults: requests per probe and probe time at 0 / 5 / 20 % injected faults.

    python bench/storage_faults.py --clips 12

A moto S3 server on 127.0.0.1 behind ``sama.testing.faultproxy.FaultProxy``. Each clip (a
64x64 H.264 video, 33 frames, ~20 KB) is probed the way ingest probes it (headers, first frame,
a frame near the end) and its frames decoded the way precompute does, and an X2Edit-like tar
shard of small images is listed and each image probed. Baseline, in the same run: the same
work over pyarrow's S3 file opened directly (a ranged GET per read call, the path before
storage.open_input read S3 through a buffer). Printed: GET requests and bytes per clip
for both paths and their ratio, then the time per clip at each fault rate with how many probes
failed (the target: none) and how many faults were met.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=12)
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1")

    import av

    from sama import media, storage
    from sama.testing.faultproxy import FaultProxy
    from sama.testing.media import write_image, write_video

    with moto_server() as s3, FaultProxy(s3, seed=1) as proxy:
        boto3.client("s3", endpoint_url=s3).create_bucket(Bucket="bench")
        tmp = tempfile.mkdtemp(prefix="sama-storage-bench-")
        uris = []
        for i in range(args.clips):
            clip = write_video(os.path.join(tmp, f"{i}.mp4"), frames=33, width=64, height=64, seed=i)
            boto3.client("s3", endpoint_url=s3).upload_file(clip, "bench", f"clips/{i}.mp4")
            uris.append(f"s3://bench/clips/{i}.mp4")
        # An X2Edit-like shard: a tar of small images, listed by its 512-byte member headers.
        import tarfile

        from PIL import Image

        shard = os.path.join(tmp, "00000.tar")
        with tarfile.open(shard, "w") as tf:
            for i in range(args.clips):
                for side in (1, 2):
                    name = os.path.join(tmp, f"s{i}.{side}.jpg")
                    write_image(name, 64, 48, seed=10 * i + side)
                    tf.add(name, arcname=f"s{i}.{side}.jpg")
        boto3.client("s3", endpoint_url=s3).upload_file(shard, "bench", "x2edit/00000.tar")
        tar_uri = "s3://bench/x2edit/00000.tar"
        os.environ["AWS_ENDPOINT_URL"] = proxy.url

        def ours(uri: str) -> None:
            media.probe(uri)
            media.read_frames(uri, 4, 64)

        def ours_tar() -> None:
            storage.tar_members.cache_clear()
            for member in storage.tar_members(tar_uri):
                media.probe(f"{tar_uri}::{member}")

        def raw_pyarrow(uri: str) -> None:  # the old path: PyAV straight on pyarrow's S3 file
            fs, path = storage.filesystem(uri)
            for _ in range(2):  # probe + decode, as above
                with fs.open_input_file(path) as f, av.open(f) as c:
                    for _ in c.decode(c.streams.video[0]):
                        pass

        def raw_tar() -> None:
            fs, path = storage.filesystem(tar_uri)
            with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf.getmembers():
                    Image.open(tf.extractfile(m)).load()

        print(f"{args.clips} clips of 64x64x33 H.264 on S3 (moto) behind a fault proxy on 127.0.0.1")
        counts = {}
        for name, fn in (("pyarrow file (baseline)", raw_pyarrow), ("storage.open_input", ours)):
            proxy.rate = 0.0
            proxy.reset_counts()
            for u in uris:
                fn(u)
            counts[name] = (sum(proxy.requests.values()) / args.clips, proxy.bytes_out / args.clips)
            print(f"  {name:<24} {counts[name][0]:7.1f} requests/clip  {counts[name][1] / 1024:8.1f} KiB/clip")
        base, new = counts["pyarrow file (baseline)"], counts["storage.open_input"]
        print(f"  videos: ratio baseline/ours {base[0] / new[0]:.1f}x fewer requests")
        tars = {}
        for name, fn in (("pyarrow file (baseline)", raw_tar), ("storage.open_input", ours_tar)):
            proxy.rate = 0.0
            proxy.reset_counts()
            fn()
            tars[name] = sum(proxy.requests.values()) / (2 * args.clips)
            print(f"  tar of images: {name:<24} {tars[name]:7.1f} requests/image")
        ratio = tars["pyarrow file (baseline)"] / tars["storage.open_input"]
        print(f"  tar of images: ratio baseline/ours {ratio:.1f}x fewer requests")
        for rate in (0.0, 0.05, 0.2):
            proxy.rate, proxy.kinds = rate, ("slowdown", "reset", "cut_headers")
            proxy.reset_counts()
            failed, t0 = 0, time.perf_counter()
            for u in uris:
                try:
                    ours(u)
                except Exception:  # noqa: BLE001 - counted: the target is none
                    failed += 1
            dt = (time.perf_counter() - t0) / args.clips
            print(f"  faults {rate:4.0%}: {dt * 1000:7.1f} ms/clip, {failed} failed, faults met {dict(proxy.faults)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
