"""Aspect-ratio buckets, nearest-bucket choice, 4k+1 frames, resize/crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sama.buckets import (
    Bucket,
    BucketConfig,
    conform_frames,
    fit_to_bucket,
    frames_4k1,
    make_buckets,
    nearest_bucket,
    resize_crop,
)


def test_release_buckets():
    """The release's 15: one width per height from 416 to 896 (800x512 and 864x448 without a
    landscape twin), picked by linear aspect-ratio distance."""
    buckets = make_buckets()
    assert len(buckets) == 15
    assert Bucket(800, 512) in buckets and Bucket(864, 448) in buckets
    assert Bucket(512, 800) not in buckets and Bucket(448, 864) not in buckets
    for b in buckets:
        assert b.height % 32 == 0 and b.width % 32 == 0 and 0.5 <= b.ratio <= 2.0
        assert abs(b.area - 480 * 832) / (480 * 832) < 0.05
    assert len({b.height for b in buckets}) == 15  # one bucket per height
    assert nearest_bucket(1080, 1920, buckets) == Bucket(480, 832)
    assert nearest_bucket(1920, 1080, buckets) == Bucket(832, 480)
    # 2:3 portrait (ratio 0.667): 768x512 (0.667) exactly; 0.62 lies nearer 800x512 (0.64) than 768x512
    assert nearest_bucket(1536, 1024, buckets) == Bucket(768, 512)
    assert nearest_bucket(1000, 620, buckets) == Bucket(800, 512)
    # linear distance, not log: 0.5473 is nearer 864x448 (0.5185) linearly, 832x480 (0.5769) in log
    assert nearest_bucket(10000, 5473, buckets) == Bucket(864, 448)
    assert nearest_bucket(10000, 5473, buckets, "log") == Bucket(832, 480)
    assert nearest_bucket(1000, 517, buckets) == Bucket(864, 448)


def test_buckets_area_multiples_ratios_and_reciprocals():
    buckets = make_buckets(BucketConfig(layout="symmetric"))
    assert len(buckets) >= 9
    for b in buckets:
        assert b.height % 32 == 0 and b.width % 32 == 0
        assert abs(b.area - 480 * 832) / (480 * 832) < 0.05
        assert 0.5 <= b.ratio <= 2.0
        assert Bucket(b.width, b.height) in buckets  # every ratio with its reciprocal
    assert Bucket(480, 832) in buckets and Bucket(832, 480) in buckets
    assert Bucket(640, 640) in buckets
    assert min(b.ratio for b in buckets) == 0.5 and max(b.ratio for b in buckets) == 2.0
    narrow = make_buckets(BucketConfig(min_ratio=0.75, max_ratio=1.34, layout="symmetric"))
    assert all(0.75 <= b.ratio <= 1.34 for b in narrow) and len(narrow) < len(buckets)
    with pytest.raises(ValueError, match="layout"):
        make_buckets(BucketConfig(layout="square"))


def test_nearest_bucket():
    buckets = make_buckets(BucketConfig(layout="symmetric"))
    assert nearest_bucket(1080, 1920, buckets, "log") == Bucket(480, 832)  # 16:9 landscape
    assert nearest_bucket(1920, 1080, buckets, "log") == Bucket(832, 480)  # 9:16 portrait
    assert nearest_bucket(500, 500, buckets, "log") == Bucket(640, 640)
    assert nearest_bucket(480, 640, buckets, "log") == Bucket(544, 736)  # 4:3 -> ratio 1.35
    assert nearest_bucket(100, 1000, buckets, "log") == Bucket(448, 896)  # too wide: the widest bucket


def test_frames_4k1():
    assert [frames_4k1(n) for n in (1, 2, 5, 6, 9, 80, 81)] == [1, 5, 5, 9, 9, 81, 81]
    assert [frames_4k1(n, policy="truncate") for n in (1, 4, 5, 8, 80)] == [1, 1, 5, 5, 77]
    with pytest.raises(ValueError):
        frames_4k1(0)


def test_conform_frames_pads_with_last_frame_and_caps():
    video = np.arange(10)[:, None, None, None] * np.ones((10, 2, 2, 3), dtype=np.uint8)
    padded = conform_frames(video, BucketConfig())
    assert len(padded) == 13 and (padded[10:] == 9).all() and np.array_equal(padded[:10], video)
    cut = conform_frames(video, BucketConfig(frame_policy="truncate"))
    assert len(cut) == 9 and np.array_equal(cut, video[:9])
    long = np.zeros((100, 2, 2, 3), dtype=np.uint8)
    assert len(conform_frames(long, BucketConfig())) == 81
    assert len(conform_frames(long[:83], BucketConfig(max_frames=82))) == 81  # pad never exceeds the cap
    assert conform_frames(np.zeros((7, 5, 3), np.uint8)).shape == (1, 7, 5, 3)  # an image


def test_resize_crop_centre_and_types():
    # a 100x200 frame whose centre 100x100 square is white: cropping to a square keeps only white
    frame = np.zeros((1, 100, 200, 3), dtype=np.uint8)
    frame[:, :, 50:150] = 255
    out = resize_crop(frame, 64, 64)
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.uint8
    assert out[:, :, 2:-2].min() >= 250
    t = torch.rand(3, 30, 40, 3)
    up = resize_crop(t, 64, 96)
    assert isinstance(up, torch.Tensor) and up.dtype == torch.float32 and up.shape == (3, 64, 96, 3)
    same = resize_crop(t, 30, 40)
    assert torch.equal(same, t)


def test_fit_to_bucket():
    clip = (np.random.default_rng(0).random((30, 135, 240, 3)) * 255).astype(np.uint8)  # 16:9
    out, bucket = fit_to_bucket(clip)
    assert bucket == Bucket(480, 832)
    assert out.shape == (33, 480, 832, 3) and out.dtype == np.uint8  # 30 frames padded to 4k+1 = 33
    out, bucket = fit_to_bucket(torch.from_numpy(clip[:5]), bucket=Bucket(640, 640))
    assert bucket == Bucket(640, 640) and out.shape == (5, 640, 640, 3) and out.dtype == torch.uint8
    image, bucket = fit_to_bucket(clip[0, :100])  # (H, W, C): a 1-frame video
    assert image.shape == (1, *bucket, 3) and bucket == nearest_bucket(100, 240, make_buckets())
