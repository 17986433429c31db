"""Real media files for tests and the demo: small mp4/webm videos and jpg/png images.

Videos show a textured square moving over a gradient, so they have real motion,
real detail and decode like any camera clip; odd variants (rotated, variable frame
rate, VP9, one frame, odd sizes) and broken ones (truncated, zero-byte) are made
on purpose.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def frames_array(n: int, width: int, height: int, seed: int = 0, speed: float = 2.0) -> np.ndarray:
    """(n, H, W, 3) uint8: a gradient background and a moving textured square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            (xx * 255 // max(width - 1, 1)),
            (yy * 255 // max(height - 1, 1)),
            np.full_like(xx, int(rng.integers(0, 255))),
        ],
        axis=-1,
    ).astype(np.uint8)
    side = max(4, min(width, height) // 3)
    texture = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
    out = np.empty((n, height, width, 3), np.uint8)
    x0, y0 = int(rng.integers(0, max(1, width - side))), int(rng.integers(0, max(1, height - side)))
    for i in range(n):
        f = base.copy()
        x = int(x0 + speed * i) % max(1, width - side)
        y = int(y0 + speed * i / 2) % max(1, height - side)
        f[y : y + side, x : x + side] = texture
        out[i] = f
    return out


def write_video(
    path: str,
    frames: int = 17,
    width: int = 64,
    height: int = 48,
    fps: int = 8,
    codec: str = "libx264",
    seed: int = 0,
    rotation: int | None = None,
    vfr: bool = False,
    data: np.ndarray | None = None,
    faststart: bool = False,
    gop: int | None = None,
) -> str:
    """Encode a clip with PyAV; ``vfr`` spaces timestamps unevenly (variable frame rate);
    ``faststart`` puts the mp4 index first (as streaming sites do); ``gop``: frames between
    keyframes (libx264's default is 250)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = frames_array(frames, width, height, seed) if data is None else data
    n, h, w = data.shape[:3]
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", options=options) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = w, h
        s.pix_fmt = "yuv420p"
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "crf": "28", **({"g": str(gop)} if gop else {})}
        s.codec_context.time_base = Fraction(1, fps * 4)  # pts below count quarter frames
        if rotation:
            s.set_display_rotation(rotation)
        t = 0
        for i in range(n):
            fr = av.VideoFrame.from_ndarray(data[i], format="rgb24")
            fr.pts = t
            t += (2 if i % 2 else 6) if vfr else 4
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_image(path: str, width: int = 64, height: int = 48, seed: int = 0, data: np.ndarray | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arr = frames_array(1, width, height, seed)[0] if data is None else data
    Image.fromarray(arr).save(path, quality=90) if path.lower().endswith((".jpg", ".jpeg")) else Image.fromarray(
        arr
    ).save(path)
    return path


def image_bytes(width: int = 64, height: int = 48, seed: int = 0, fmt: str = "JPEG") -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(frames_array(1, width, height, seed)[0]).save(buf, format=fmt)
    return buf.getvalue()


def truncate(path: str, keep: float = 0.5) -> str:
    """Cut a file to ``keep`` of its size (a download that stopped midway)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(max(1, int(size * keep)))
    return path


def zero_byte(path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    open(path, "wb").close()
    return path
