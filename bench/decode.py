"""Decoding at the codec's speed: ``sama.media.read_frames`` against ``ffmpeg -benchmark`` making
the same rgb24 frames at the same size (the baseline, measured in the same run), and decord.

    python bench/decode.py                      # 480p and 720p, 81 frames; 8 of a 20 s 720p clip
    python bench/decode.py --rounds 7 --sparse-seconds 20

Dense: every frame of an 81-frame H.264 clip (ffmpeg ``testsrc2``, crf 18: a high bitrate, as
cameras write) at 832x480 and 1280x720. ffmpeg's figure is its own ``rtime`` (decode + swscale
to rgb24, no process start-up); ours is wall time in this process, file open included; "pyav" is
ours with PyAV's reformatter and a copy instead of ``sama.swscale`` writing in place. Sparse: 8
uniformly spread frames of a ``--sparse-seconds`` 1280x720 30 fps clip (a keyframe every 60
frames) read with keyframe seeks vs decoding every frame (the baseline). Medians of ``--rounds``
alternating rounds; ours and pyav must give the same pixels (decord's are reported).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def make_clip(path: str, size: str, frames: int, rate: int = 16, gop: int = 250) -> str:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-frames:v", str(frames)]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-g", str(gop), "-pix_fmt", "yuv420p", path],
        check=True,
    )
    return path


def ffmpeg_rgb(path: str, frames: int) -> float:
    """Seconds ffmpeg itself reports for decoding to rgb24 (threads: its default, all cores)."""
    err = subprocess.run(
        ["ffmpeg", "-hide_banner", "-benchmark", "-i", path, "-pix_fmt", "rgb24", "-f", "null", "-"],
        capture_output=True,
        text=True,
    ).stderr
    return float(re.search(r"rtime=([\d.]+)s", err).group(1))


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def dense(clip: str, frames: int, rounds: int) -> dict[str, float]:
    import numpy as np

    from sama import media
    from sama.media import read_frames

    def via_pyav():  # the conversion before sama.swscale: PyAV's reformatter, then a copy
        writer, media.rgb_writer = media.rgb_writer, lambda *a: None
        try:
            return read_frames(clip, indices=list(range(frames)))
        finally:
            media.rgb_writer = writer

    methods = {
        "ours": lambda: read_frames(clip, indices=list(range(frames))),
        "ffmpeg": lambda: ffmpeg_rgb(clip, frames),
        "pyav": via_pyav,
    }
    try:
        import decord

        def with_decord():
            return decord.VideoReader(clip, num_threads=0).get_batch(list(range(frames))).asnumpy()

        methods["decord"] = with_decord
    except ImportError:
        pass
    times: dict[str, list[float]] = {m: [] for m in methods}
    ref = None
    for r in range(rounds):
        for name in list(methods) if r % 2 == 0 else list(methods)[::-1]:
            sec, out = timed(methods[name])
            if name == "ffmpeg":
                sec = out
            elif ref is None:
                ref = out
            elif not np.array_equal(out, ref) and name in ("ours", "pyav"):
                raise AssertionError(f"{name}: not the same pixels as the first read")
            if name == "decord" and not np.array_equal(out, ref):
                times.setdefault("decord differs", []).append(float(np.abs(out.astype(int) - ref).mean()))
            times[name].append(sec)
    return {m: statistics.median(t) for m, t in times.items()}


def sparse(seconds: int, rounds: int, n: int = 8) -> tuple[float, float, bool]:
    import numpy as np

    from sama import media

    clip = make_clip(
        os.path.join(tempfile.mkdtemp(prefix="sama-decode-"), "long.mp4"), "1280x720", seconds * 30, 30, 60
    )
    gap, times, got = media.SEEK_GAP, {"seek": [], "all": []}, {}
    try:
        for r in range(rounds):
            for name in ("seek", "all") if r % 2 == 0 else ("all", "seek"):
                media.SEEK_GAP = gap if name == "seek" else 10**9
                sec, got[name] = timed(lambda: media.read_frames(clip, n=n))
                times[name].append(sec)
    finally:
        media.SEEK_GAP = gap
    return statistics.median(times["all"]), statistics.median(times["seek"]), np.array_equal(got["seek"], got["all"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sparse-seconds", type=int, default=20)
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="sama-decode-")
    print(f"dense: {args.frames} frames to rgb24, median of {args.rounds}; fps and ratio to ffmpeg -benchmark")
    print(f"{'clip':>10} {'ffmpeg':>8} {'ours':>8} {'ratio':>6} {'pyav':>8} {'ratio':>6} {'decord':>8} {'ratio':>6}")
    for size in ("832x480", "1280x720"):
        clip = make_clip(os.path.join(root, f"{size}.mp4"), size, args.frames)
        t = dense(clip, args.frames, args.rounds)
        fps = {m: args.frames / s for m, s in t.items() if m in ("ours", "ffmpeg", "pyav", "decord")}
        dec = fps.get("decord", float("nan"))
        note = f"  (decord's pixels differ: mean |diff| {t['decord differs']:.2f})" if "decord differs" in t else ""
        print(
            f"{size:>10} {fps['ffmpeg']:>8.0f} {fps['ours']:>8.0f} {fps['ours'] / fps['ffmpeg']:>5.2f}x "
            f"{fps['pyav']:>8.0f} {fps['pyav'] / fps['ffmpeg']:>5.2f}x "
            f"{dec:>8.0f} {dec / fps['ffmpeg']:>5.2f}x{note}"
        )
    every, seek, same = sparse(args.sparse_seconds, max(3, args.rounds // 2))
    print(f"sparse: 8 frames of a {args.sparse_seconds} s 1280x720 30 fps clip (keyframe every 60)")
    print(f"  every frame decoded (baseline) {every:.2f} s, keyframe seeks {seek:.2f} s: {every / seek:.1f}x")
    print(f"  same pixels: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
