"""Aspect-ratio buckets and the resize/crop/frame fitting that puts a clip into one.

Training and inference use a fixed set of resolutions of about 480x832 pixels area, sides
multiples of 32 (Wan VAE 8x * patch 2x, with headroom), aspect ratio (width/height) in
[0.5, 2.0]. Two layouts (``BucketConfig.layout``):

- ``release`` (default): the SAMA release's 15: one width per height, heights from
  floor(sqrt(area / 2)) to ceil(sqrt(area / 0.5)) in steps of 32 (so 800x512 and 864x448,
  height x width, have no landscape twin); a clip goes to the bucket nearest in aspect
  ratio (|w/h - w'/h'|, ties to the smaller height, as its script picks);
- ``symmetric``: 13, every bucket together with its reciprocal, nearest in log aspect ratio.

A clip is resized to cover its bucket and centre-cropped, and its frame count is made
4k+1 (the Wan VAE encodes the first frame alone, then groups of 4).

Videos are ``(T, H, W, C)`` (numpy array or torch tensor, uint8 or float), as decoded;
an image is ``(H, W, C)`` and is treated as a 1-frame video. Outputs keep the input's
type and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class BucketConfig:
    area: int = 480 * 832  # target pixels per frame
    multiple: int = 32  # both sides are multiples of this
    min_ratio: float = 0.5  # width / height
    max_ratio: float = 2.0
    frame_stride: int = 4  # frames = frame_stride * k + 1
    max_frames: int = 81
    frame_policy: str = "pad"  # pad: repeat the last frame up to 4k+1 | truncate: drop down to 4k+1
    layout: str = "release"  # release | symmetric (see the module docstring)

    @property
    def match(self) -> str:
        """How a clip's nearest bucket is chosen: ``linear`` (release) or ``log`` aspect ratio."""
        return "linear" if self.layout == "release" else "log"


class Bucket(NamedTuple):
    height: int
    width: int

    @property
    def ratio(self) -> float:
        return self.width / self.height

    @property
    def area(self) -> int:
        return self.height * self.width


LAYOUTS = ("release", "symmetric")


def make_buckets(cfg: BucketConfig = BucketConfig()) -> list[Bucket]:
    """All buckets of ``cfg.layout``, sorted by aspect ratio."""
    if cfg.layout == "release":
        return _release_buckets(cfg)
    if cfg.layout != "symmetric":
        raise ValueError(f"buckets.layout={cfg.layout!r}: choose one of {LAYOUTS}")
    m = cfg.multiple
    landscape = set()
    for h in range(m, int(math.sqrt(cfg.area)) + m, m):  # h <= w
        w = max(m, round(cfg.area / h / m) * m)
        if w >= h and cfg.min_ratio <= w / h <= cfg.max_ratio:
            landscape.add(Bucket(h, w))
    both = landscape | {Bucket(b.width, b.height) for b in landscape}
    both = {b for b in both if cfg.min_ratio <= b.ratio <= cfg.max_ratio}
    if not both:
        raise ValueError(f"no bucket satisfies {cfg}")
    return sorted(both, key=lambda b: b.ratio)


def _release_buckets(cfg: BucketConfig) -> list[Bucket]:
    m = cfg.multiple
    lo = math.floor(math.sqrt(cfg.area / cfg.max_ratio) / m) * m
    hi = math.ceil(math.sqrt(cfg.area / cfg.min_ratio) / m) * m
    out = []
    for h in range(max(m, lo), hi + 1, m):
        w = round(cfg.area / h / m) * m
        if w >= m and cfg.min_ratio <= w / h <= cfg.max_ratio:
            out.append(Bucket(h, w))
    if not out:
        raise ValueError(f"no bucket satisfies {cfg}")
    return sorted(set(out), key=lambda b: b.ratio)


def nearest_bucket(height: int, width: int, buckets: list[Bucket], match: str = "linear") -> Bucket:
    """The bucket closest in aspect ratio: ``linear`` |w/h - w'/h'| (ties: the smaller
    height, as the release), or ``log`` |log(w/h) - log(w'/h')| (ties: the closest area)."""
    if match == "linear":
        r = width / height
        return min(buckets, key=lambda b: (abs(b.ratio - r), b.height))
    if match != "log":
        raise ValueError(f"bucket match={match!r}: linear | log")
    r = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.ratio) - r), abs(b.area - height * width)))


# ---------------------------------------------------------------------- frames


def frames_4k1(n: int, stride: int = 4, policy: str = "pad") -> int:
    """The 4k+1 frame count a clip of n frames becomes: up (pad) or down (truncate)."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    if policy == "pad":
        return (n - 1 + stride - 1) // stride * stride + 1
    if policy == "truncate":
        return (n - 1) // stride * stride + 1
    raise ValueError(f"frame_policy={policy!r}: pad | truncate")


def conform_frames(video, cfg: BucketConfig = BucketConfig()):
    """Cap at ``max_frames`` (keeping the first), then pad (repeat last) or truncate to 4k+1."""
    video = _as_video(video)
    n = min(len(video), cfg.max_frames)
    target = frames_4k1(n, cfg.frame_stride, cfg.frame_policy)
    if target > cfg.max_frames:  # padding must not exceed the cap
        target = frames_4k1(n, cfg.frame_stride, "truncate")
    idx = np.minimum(np.arange(target), n - 1)
    return video[idx]


# ---------------------------------------------------------------------- spatial


def _as_video(video):
    return video[None] if video.ndim == 3 else video


def resize_crop(video, height: int, width: int):
    """Resize (T, H, W, C) to cover (height, width) keeping aspect ratio, then centre-crop."""
    video = _as_video(video)
    is_numpy = isinstance(video, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(video)) if is_numpy else video
    dtype = x.dtype
    _, h, w, _ = x.shape
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    y = x.permute(0, 3, 1, 2).float()  # (T, C, H, W)
    if (rh, rw) != (h, w):
        y = F.interpolate(y, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (rh - height) // 2, (rw - width) // 2
    y = y[:, :, top : top + height, left : left + width].permute(0, 2, 3, 1)
    if dtype == torch.uint8:
        y = y.round().clamp(0, 255)
    y = y.to(dtype).contiguous()
    return y.numpy() if is_numpy else y


def fit_to_bucket(
    video, cfg: BucketConfig = BucketConfig(), buckets: list[Bucket] | None = None, bucket: Bucket | None = None
):
    """Put a clip into its bucket: -> (video (T', bh, bw, C) with T' = 4k+1, bucket)."""
    video = _as_video(video)
    bucket = bucket or nearest_bucket(video.shape[1], video.shape[2], buckets or make_buckets(cfg), cfg.match)
    video = conform_frames(video, cfg)
    return resize_crop(video, bucket.height, bucket.width), bucket
