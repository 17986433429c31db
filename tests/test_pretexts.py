"""Motion-alignment pretexts on a synthetic moving square: each changes only what it should."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sama.pretexts import (
    PRETEXTS,
    PretextConfig,
    PretextSampler,
    apply_pretext,
    compose_prompt,
    cube_inpaint,
    inverse_permutation,
    rng_for,
    sample_cube,
    sample_tube_permutation,
    speed_indices,
    speed_perturb,
    tube_shuffle,
)


def moving_square(frames=17, size=48, step=2) -> np.ndarray:
    """(T, H, W, 3) uint8: a white 8x8 square moving right by ``step`` px per frame, on noise."""
    rng = np.random.default_rng(0)
    v = (rng.random((frames, size, size, 3)) * 60).astype(np.uint8)
    for t in range(frames):
        x = 2 + step * t
        v[t, 20:28, x : x + 8] = 255
    return v


def square_x(frame: np.ndarray) -> float:
    cols = np.where((frame[20:28, :, 0] == 255).all(axis=0))[0]
    return float(cols.mean())


def test_cube_masks_one_span_never_the_first_frame():
    video = moving_square()
    before = video.copy()
    # the release: round(0.3 n) frames, starting anywhere in [1, n - len]
    starts = set()
    for seed in range(300):
        start, length = sample_cube(17, PretextConfig(), rng_for(seed))
        assert length == round(0.3 * 17) == 5 and 1 <= start <= 17 - 5
        starts.add(start)
    assert starts == set(range(1, 13))
    assert sample_cube(81, PretextConfig(), rng_for(0))[1] == 24 and sample_cube(2, PretextConfig(), rng_for(0)) == (
        1,
        1,
    )
    # ours: a length drawn in [0.2 n, 0.5 n]
    cfg = PretextConfig(cube_mode="uniform")
    for seed in range(200):
        start, length = sample_cube(len(video), cfg, rng_for(seed))
        assert start >= 1 and length >= 1 and start + length <= len(video)
        assert round(0.2 * 17) <= length <= round(0.5 * 17)
    out = cube_inpaint(video, 3, 5, fill=0)
    assert np.array_equal(video, before)  # input untouched
    masked = [t for t in range(len(out)) if not out[t].any()]
    assert masked == [3, 4, 5, 6, 7]
    keep = [t for t in range(len(out)) if t not in masked]
    assert np.array_equal(out[keep], video[keep])
    with pytest.raises(ValueError):
        cube_inpaint(video, 0, 3)  # the first frame stays visible


def test_speed_changes_frame_order_and_motion():
    video = moving_square(frames=17, step=2)
    assert speed_indices(9, 2.0).tolist() == [0, 2, 4, 6, 8, 8, 8, 8, 8]
    # the release: round half to even of t / (n-1) * s * (n-1); ours: floor(t * s)
    assert speed_indices(9, 0.5).tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4]
    assert speed_indices(6, 0.5, "floor").tolist() == [0, 0, 1, 1, 2, 2]
    assert speed_indices(1, 0.5).tolist() == [0]
    with pytest.raises(ValueError):
        speed_indices(5, 0.5, "ceil")
    fast, slow = speed_perturb(video, 2.0), speed_perturb(video, 0.5, "floor")
    assert fast.shape == slow.shape == video.shape  # same frame count

    def motion(v, a, b):
        return (square_x(v[b]) - square_x(v[a])) / (b - a)

    assert motion(video, 0, 8) == pytest.approx(2.0)
    assert motion(fast, 0, 8) == pytest.approx(4.0)  # 2x: the motion per frame doubles
    assert motion(slow, 0, 8) == pytest.approx(1.0)  # 0.5x: the motion per frame halves
    assert np.array_equal(fast[3], video[6]) and np.array_equal(slow[5], video[2])


def test_release_tube_shuffle_permutes_every_tube_within_its_shape_group():
    rng = np.random.default_rng(0)
    video = (rng.random((17, 50, 70, 3)) * 255).astype(np.uint8)  # uneven: 17 = 5+4+4+4 frames
    cfg = PretextConfig()  # the release: 4x4x4, full permutation per equal-shape group
    moved = []
    for seed in range(20):
        res = apply_pretext(video, "tube", "x", cfg, rng_for(seed))
        perm = res.params["perm"]
        assert sorted(perm) == list(range(64)) and res.params["mode"] == "release"

        # tubes only trade places with tubes of the same shape; every pixel belongs to a tube
        def sizes(n, k):
            return [n // k + (1 if i < n % k else 0) for i in range(k)]

        shape = [(a, b, c) for a in sizes(17, 4) for b in sizes(50, 4) for c in sizes(70, 4)]
        assert all(shape[i] == shape[p] for i, p in enumerate(perm))
        assert np.array_equal(np.sort(res.video, axis=None), np.sort(video, axis=None))
        even = (rng.random((16, 48, 64, 3)) * 255).astype(np.uint8)  # 64 tubes of one shape
        moved.append((apply_pretext(even, "tube", "x", cfg, rng_for(seed)).video != even).any(-1).mean())
    # almost every pixel moves (one group of 64: 63/64 expected; a 2x2x2 cycle of 4 blocks moves half)
    assert np.mean(moved) > 0.95
    assert (
        sample_tube_permutation(cfg, rng_for(1), (17, 50, 70))
        == apply_pretext(video, "tube", "x", cfg, rng_for(1)).params["perm"]
    )
    with pytest.raises(ValueError, match="too small"):
        apply_pretext(video[:3], "tube", "x", cfg, rng_for(0))


def test_tube_shuffle_is_an_invertible_permutation_of_four_blocks():
    video = moving_square(frames=16, size=48)
    cfg = PretextConfig(tube_grid=[2, 2, 2], tube_mode="cycle")
    perm = sample_tube_permutation(cfg, rng_for(5))
    assert sorted(perm) == list(range(8))
    moved = [i for i, p in enumerate(perm) if p != i]
    assert len(moved) == 4  # exactly four blocks swap places
    out = tube_shuffle(video, cfg.tube_grid, perm)
    assert out.shape == video.shape and not np.array_equal(out, video)
    # every output block is the input block perm[i]
    bt, bh, bw = 8, 24, 24
    for i, src in enumerate(perm):
        ti, hi, wi = np.unravel_index(i, (2, 2, 2))
        ts, hs, ws = np.unravel_index(src, (2, 2, 2))
        assert np.array_equal(
            out[ti * bt : (ti + 1) * bt, hi * bh : (hi + 1) * bh, wi * bw : (wi + 1) * bw],
            video[ts * bt : (ts + 1) * bt, hs * bh : (hs + 1) * bh, ws * bw : (ws + 1) * bw],
        )
    # the multiset of pixels is unchanged, and the inverse permutation restores the clip
    assert np.array_equal(np.sort(out, axis=None), np.sort(video, axis=None))
    assert np.array_equal(tube_shuffle(out, cfg.tube_grid, inverse_permutation(perm)), video)
    # an uneven size: the remainder at the far edge stays in place
    odd = moving_square(frames=17, size=51)  # blocks of 8 frames x 25 x 25 px
    out = tube_shuffle(odd, [2, 2, 2], perm)
    assert not np.array_equal(out, odd)
    assert np.array_equal(out[16:], odd[16:]) and np.array_equal(out[:, 50:], odd[:, 50:])
    assert np.array_equal(out[:, :, 50:], odd[:, :, 50:])


def test_pretexts_work_on_torch_float_videos():
    video = torch.from_numpy(moving_square(frames=9)).float() / 127.5 - 1
    rng = rng_for(0)
    for name in PRETEXTS:
        res = apply_pretext(video, name, "a square", PretextConfig(cube_fill=-1.0), rng)
        assert isinstance(res.video, torch.Tensor) and res.video.shape == video.shape
        assert res.video.dtype == torch.float32
    res = apply_pretext(video, "cube", "x", PretextConfig(cube_fill=-1.0), rng_for(1))
    s, n = res.params["start"], res.params["length"]
    assert torch.all(res.video[s : s + n] == -1) and torch.equal(res.video[0], video[0])


def test_sampler_ratio_and_reproducibility():
    sampler = PretextSampler(PretextConfig())
    rng = rng_for(123)
    draws = [sampler.choose(rng) for _ in range(20000)]
    freq = np.array([draws.count(n) for n in PRETEXTS]) / len(draws)
    assert np.allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)
    video = moving_square(frames=9)
    a, b = sampler(video, "a square", "sample-42"), sampler(video, "a square", "sample-42")
    assert a.name == b.name and a.params == b.params and np.array_equal(a.video, b.video)
    # task tokens are prepended to the instruction
    seen = {}
    for i in range(60):
        r = sampler(video, "a square", i)
        seen[r.name] = r.prompt
    assert seen["cube"] == "[Cube inpainting] a square" and seen["tube"] == "[Tube shuffle] a square"
    assert seen["speed"] == "[Speed perturbation] a square" and seen["none"] == "a square"
    # images get no pretext; a disabled sampler never perturbs
    assert sampler(video[:1], "x", 0).name == "none"
    off = PretextSampler(PretextConfig(enabled=False))
    assert {off(video, "x", i).name for i in range(20)} == {"none"}
    # custom ratio: only tube
    only_tube = PretextSampler(PretextConfig(ratio=[0, 0, 0, 1]))
    assert {only_tube.choose(rng) for _ in range(50)} == {"tube"}
    with pytest.raises(ValueError):
        PretextSampler(PretextConfig(ratio=[1, 2, 3]))


def test_compose_prompt():
    assert compose_prompt("make it red", "[Video edit]") == "[Video edit] make it red"
    assert compose_prompt("make it red", "") == "make it red"
