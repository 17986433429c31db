"""Sparse frame sampling on a long clip: keyframe seeks vs decoding every frame up to the last.

    python bench/decode_sparse.py --seconds 20 --size 1280x720 --gop 60

Makes a high-bitrate H.264 clip with ffmpeg's ``testsrc2`` (crf 18, a keyframe every ``--gop``
frames, as cameras and sites write them), then reads ``--n`` uniformly spread frames with
``sama.media.read_frames`` twice per round, in alternating order: with keyframe seeks (the
default) and with seeking off (the baseline: sequential decode up to the last wanted frame).
Prints the median time of each and the ratio, and checks both give the same pixels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--gop", type=int, default=60)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import numpy as np

    from sama import media

    clip = os.path.join(tempfile.mkdtemp(prefix="sama-decode-"), "long.mp4")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate=30", "-t", str(args.seconds)]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-g", str(args.gop), "-pix_fmt", "yuv420p", clip],
        check=True,
    )
    mb = os.path.getsize(clip) / 2**20
    print(f"{args.seconds} s {args.size} 30 fps H.264, keyframe every {args.gop} frames, {mb:.1f} MiB; {args.n} frames")
    gap = media.SEEK_GAP
    times: dict[str, list[float]] = {"seek": [], "sequential": []}
    frames = {}
    for r in range(args.rounds):
        for name in ("seek", "sequential") if r % 2 == 0 else ("sequential", "seek"):
            media.SEEK_GAP = gap if name == "seek" else 10**9
            t0 = time.perf_counter()
            frames[name] = media.read_frames(clip, n=args.n)
            times[name].append(time.perf_counter() - t0)
    media.SEEK_GAP = gap
    same = np.array_equal(frames["seek"], frames["sequential"])
    seek, seq = statistics.median(times["seek"]), statistics.median(times["sequential"])
    print(f"  sequential (baseline) {seq:6.2f} s   keyframe seeks {seek:6.2f} s   ratio {seq / seek:.1f}x")
    print(f"  same pixels: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
