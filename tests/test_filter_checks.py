"""Cheap filter checks on synthetic clips with known properties, and frame decoding."""

import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sama.media import MediaError, read_frames, sample_indices
from sama.pipelines.filter.checks import ChecksConfig, decode, run_checks
from sama.testing.media import frames_array, write_image, write_video

W, H, N = 160, 120, 24
CFG = ChecksConfig(min_short_side=32)


def clip(tmp_path, name: str, data: np.ndarray) -> str:
    return write_video(str(tmp_path / f"{name}.mp4"), data=data, fps=8)


def row(tgt: str, src: str | None = None, task: str = "t2v", **cols) -> dict:
    base = {
        "sample_id": "s",
        "dataset": "d",
        "task": task,
        "instruction": "x",
        "target_uri": tgt,
        "source_uri": src,
        "tgt_width": W,
        "tgt_height": H,
        "tgt_frames": N,
        "tgt_duration": N / 8,
    }
    if src:
        base.update(src_width=W, src_height=H, src_frames=N, src_duration=N / 8)
    base.update(cols)
    return base


def check(r: dict, cfg: ChecksConfig = CFG):
    return run_checks(r, decode(r, cfg), cfg)


@pytest.fixture(scope="module")
def moving():
    return frames_array(N, W, H, seed=4)


def test_a_good_moving_clip_passes(tmp_path, moving):
    res = check(row(clip(tmp_path, "good", moving)))
    assert res.failed == [], res.details
    assert res.metrics["motion"] > CFG.min_motion and res.metrics["scene_cuts"] == 0
    assert res.metrics["blank_fraction"] == 0 and res.metrics["sharpness"] > 100


def test_static_clip(tmp_path, moving):
    still = np.repeat(moving[:1], N, axis=0)
    noisy = np.clip(still.astype(int) + np.random.default_rng(0).integers(-1, 2, still.shape), 0, 255).astype(np.uint8)
    for name, data in (("still", still), ("noisy_still", noisy)):
        res = check(row(clip(tmp_path, name, data)))
        assert res.failed == ["static"], (name, res.metrics)
        assert "motion" in res.details[0] and name in res.details[0]


def test_black_frames(tmp_path, moving):
    data = moving.copy()
    data[8:16] = 0
    res = check(row(clip(tmp_path, "black", data)), ChecksConfig(min_short_side=32, max_scene_cuts=99))
    assert res.failed == ["blank_frames"] and res.metrics["blank_fraction"] >= 0.25


def test_scene_cut(tmp_path):
    data = np.concatenate([frames_array(N // 2, W, H, seed=5), 255 - frames_array(N // 2, W, H, seed=6)])
    res = check(row(clip(tmp_path, "cut", data)))
    assert res.failed == ["scene_cut"] and res.metrics["scene_cuts"] == 1
    assert check(row(clip(tmp_path, "cut", data)), ChecksConfig(min_short_side=32, max_scene_cuts=1)).failed == []


def test_blurred_vs_sharp(tmp_path, moving):
    blurred = np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(4))) for f in moving])
    sharp = check(row(clip(tmp_path, "sharp", moving)))
    soft = check(row(clip(tmp_path, "soft", blurred)), ChecksConfig(min_short_side=32, skip=["static"]))
    assert soft.failed == ["blurry"] and sharp.failed == []
    assert soft.metrics["sharpness"] < CFG.min_sharpness < sharp.metrics["sharpness"]


def test_edit_pairs_identical_and_different(tmp_path, moving):
    src = clip(tmp_path, "src", moving)
    tgt = clip(tmp_path, "tgt", 255 - moving)
    same = check(row(src, src, task="video_edit"))
    assert same.failed == ["unchanged_target"] and same.metrics["edit_diff"] == 0.0
    edited = check(row(tgt, src, task="video_edit"))
    assert edited.failed == [] and edited.metrics["edit_diff"] > 0.1
    img = write_image(str(tmp_path / "a.png"), W, H, seed=1)
    assert check(row(img, img, task="image_edit", tgt_frames=1, src_frames=1)).failed == ["unchanged_target"]


def test_metadata_checks(tmp_path, moving):
    path = clip(tmp_path, "m", moving)
    res = check(
        row(path, path, task="video_edit", src_frames=17, tgt_width=W, tgt_height=H // 2, tgt_duration=0.2),
        ChecksConfig(min_short_side=100, skip=["unchanged_target"]),
    )
    assert res.failed == ["low_resolution", "too_short", "duration_mismatch", "size_mismatch"]
    assert all(path in d for d in res.details)


def test_read_frames_sampling_rotation_tar_and_errors(tmp_path):
    assert sample_indices(101, 4) == [12, 37, 63, 88] and sample_indices(3, 8) == [0, 1, 2]
    rot = write_video(str(tmp_path / "rot.mp4"), frames=9, width=64, height=48, rotation=90)
    assert read_frames(rot, 4).shape == (4, 64, 48, 3)  # as displayed
    big = write_video(str(tmp_path / "big.mp4"), frames=9, width=320, height=240)
    assert read_frames(big, 3, max_side=100).shape[1:3] == (74, 100)
    buf = io.BytesIO()
    Image.fromarray(frames_array(1, 64, 48)[0]).save(buf, format="JPEG")
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        info = tarfile.TarInfo("k.1.jpg")
        info.size = len(buf.getvalue())
        tf.addfile(info, io.BytesIO(buf.getvalue()))
    assert read_frames(f"{tmp_path}/s.tar::k.1.jpg", 4).shape == (1, 48, 64, 3)
    (tmp_path / "bad.mp4").write_bytes(b"\0garbage" * 50)
    with pytest.raises(MediaError) as e:
        read_frames(str(tmp_path / "bad.mp4"), 4)
    assert e.value.reason == "undecodable" and "bad.mp4" in e.value.detail
    with pytest.raises(MediaError, match="missing_file"):
        read_frames(os.path.join(tmp_path, "nope.mp4"), 4)


def test_video_edits_keep_their_source_motion(tmp_path, moving):
    src = clip(tmp_path, "msrc", moving)
    frozen = clip(tmp_path, "frozen", 255 - np.repeat(moving[:1], N, axis=0))
    slow = clip(tmp_path, "slow", 255 - frames_array(N, W, H, seed=4, speed=0.25))  # a quarter of the speed
    kept = clip(tmp_path, "kept", 255 - moving)
    for target, expected in ((frozen, ["motion_lost"]), (slow, ["motion_lost"]), (kept, [])):
        res = check(row(target, src, task="video_edit"))
        assert res.failed == expected, (target, res.details)
    detail = check(row(frozen, src, task="video_edit")).details[0]
    assert "frozen.mp4" in detail and "vs the source's" in detail and "kept" in detail


def test_a_small_local_edit_is_an_edit_and_a_reencode_is_not(tmp_path):
    from sama.media import read_frames, write_mp4

    w, h = 320, 176
    src = write_video(str(tmp_path / "src.mp4"), data=frames_array(N, w, h, seed=7), fps=8)
    decoded = read_frames(src, indices=list(range(N)))
    reencoded = write_mp4(str(tmp_path / "re.mp4"), decoded, 8, crf=30)
    hat = decoded.copy()
    hat[:, 10:26, 20:36] = (220, 30, 30)  # 16x16 pixels: 0.45% of the frame
    local = write_mp4(str(tmp_path / "hat.mp4"), hat, 8, crf=23)
    cfg = ChecksConfig(min_short_side=32)  # analysed at 256 px, as by default

    def rows(target):
        return row(target, src, task="video_edit", tgt_width=w, tgt_height=h, src_width=w, src_height=h)

    again = check(rows(reencoded), cfg)
    assert again.failed == ["unchanged_target"] and "of blocks" in again.details[0]
    edited = check(rows(local), cfg)
    assert edited.failed == [] and edited.metrics["edit_diff"] < cfg.min_edit_diff  # the mean alone would miss it
