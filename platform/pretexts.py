"""Motion-alignment pretexts (paper Sec. 3.3): perturb the *source* video only.

The target stays the original clip; the model learns to restore it from the perturbed
source. Each has the public SAMA release's variant (the default) and ours as an option:

- cube inpainting (``cube_mode``): one contiguous span of frames is masked (filled), never
  the first frame. ``release``: round(0.3 n) frames, starting anywhere in [1, n - len];
  ``uniform``: a length drawn in [0.2 n, 0.5 n];
- speed perturbation (``speed_rounding``): the clip replayed 0.5x or 2x (same frame count),
  output frame t showing source frame round(min(t / (n-1) * s, 1) * (n-1)) with Python's
  round-half-to-even (``half_even``, the release) or floor(t * s) (``floor``);
- tube shuffle (``tube_mode``): the clip is cut into a (t, h, w) grid of spatio-temporal
  tubes. ``release``: a 4x4x4 grid, sides split with the remainder on the first parts, and
  the tubes fully permuted within each group of equal shape (almost every pixel moves);
  ``cycle``: ``tube_num_blocks`` blocks of an equal-size grid rotate places (the remainder
  at the far edge stays).

The release ships no training script, so which of its settings trained SAMA-14B is unknown;
its operators' defaults are ours.

A short task token is prepended to the instruction, and :class:`PretextSampler` draws
none : cube : speed : tube with the configured ratio (1 : 2 : 3 : 4 by default).

Videos are ``(T, H, W, C)`` -- numpy arrays or torch tensors, uint8 or float -- i.e. the
decoded layout, before conversion to the model's (C, T, H, W). Every function returns a
new video of the same type, dtype and shape and never modifies its input. Randomness
comes only from the ``numpy.random.Generator`` passed in (see :func:`rng_for`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

PRETEXTS = ("none", "cube", "speed", "tube")
VIDEO_EDIT_TAG = "[Video edit]"
IMAGE_EDIT_TAG = "[Image edit]"


@dataclass
class PretextConfig:
    enabled: bool = True
    ratio: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])  # none:cube:speed:tube
    # cube inpainting: the span (release: round(cube_fraction * n); uniform: drawn between the
    # min and max fractions) and the fill value (input units: 0 is black for uint8 frames)
    cube_mode: str = "release"  # release | uniform
    cube_fraction: float = 0.3
    cube_min_fraction: float = 0.2
    cube_max_fraction: float = 0.5
    cube_fill: float = 0.0
    # speed perturbation: playback factors (>1 faster, <1 slower) and index rounding
    speed_factors: list[float] = field(default_factory=lambda: [0.5, 2.0])
    speed_rounding: str = "half_even"  # half_even (release) | floor
    # tube shuffle: grid (t, h, w); release: permute within equal-shape groups; cycle:
    # tube_num_blocks blocks rotate places
    tube_mode: str = "release"  # release | cycle
    tube_grid: list[int] = field(default_factory=lambda: [4, 4, 4])
    tube_num_blocks: int = 4
    # task tokens prepended to the instruction ("" = none)
    token_none: str = ""
    token_cube: str = "[Cube inpainting]"
    token_speed: str = "[Speed perturbation]"
    token_tube: str = "[Tube shuffle]"

    def token(self, name: str) -> str:
        return getattr(self, f"token_{name}")

    def probabilities(self) -> np.ndarray:
        if len(self.ratio) != len(PRETEXTS) or min(self.ratio) < 0 or sum(self.ratio) <= 0:
            raise ValueError(f"pretext ratio {self.ratio} must be {len(PRETEXTS)} non-negative numbers ({PRETEXTS})")
        p = np.asarray(self.ratio, dtype=np.float64)
        return p / p.sum()


@dataclass
class PretextResult:
    video: Any  # (T, H, W, C), same type/dtype/shape as the input
    name: str  # one of PRETEXTS
    params: dict  # what was done (JSON-able), enough to reproduce or invert it
    prompt: str  # the instruction with the task token prepended


def rng_for(seed: int | str) -> np.random.Generator:
    """A generator from an int, or from a string such as a sample id (stable across runs)."""
    if isinstance(seed, str):
        seed = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def compose_prompt(instruction: str, tag: str) -> str:
    return f"{tag} {instruction}".strip() if tag else instruction


def _copy(video):
    return video.copy() if isinstance(video, np.ndarray) else video.clone()


def _take(video, idx: np.ndarray):
    return video[idx] if isinstance(video, np.ndarray) else video[torch.as_tensor(idx, device=video.device)]


def _check_video(video) -> None:
    if video.ndim != 4:
        raise ValueError(f"pretexts take (T, H, W, C) videos, got shape {tuple(video.shape)}")


# ---------------------------------------------------------------------- cube inpainting


def sample_cube(num_frames: int, cfg: PretextConfig, rng: np.random.Generator) -> tuple[int, int]:
    """(start, length) of the masked span: start >= 1 (the first frame stays visible)."""
    if num_frames < 2:
        raise ValueError("cube inpainting needs at least 2 frames")
    if cfg.cube_mode == "release":
        length = max(1, min(int(round(num_frames * cfg.cube_fraction)), num_frames - 1))
        return int(rng.integers(1, num_frames - length + 1)), length
    if cfg.cube_mode != "uniform":
        raise ValueError(f"cube_mode={cfg.cube_mode!r}: release | uniform")
    lo = max(1, round(cfg.cube_min_fraction * num_frames))
    hi = max(lo, min(num_frames - 1, round(cfg.cube_max_fraction * num_frames)))
    length = int(rng.integers(lo, hi + 1))
    start = int(rng.integers(1, num_frames - length + 1))
    return start, length


def cube_inpaint(video, start: int, length: int, fill: float = 0.0):
    """Frames [start, start + length) set to ``fill``; the first frame is never masked."""
    _check_video(video)
    if start < 1 or length < 1 or start + length > len(video):
        raise ValueError(f"bad span start={start} length={length} for {len(video)} frames")
    out = _copy(video)
    out[start : start + length] = fill
    return out


# ---------------------------------------------------------------------- speed perturbation


def speed_indices(num_frames: int, factor: float, rounding: str = "half_even") -> np.ndarray:
    """Source frame for each output frame when replaying at ``factor`` x speed, same length.

    2x: 0, 2, 4, ... (then the last frame held). 0.5x: ``floor`` 0, 0, 1, 1, 2, 2, ...;
    ``half_even`` (the release's float arithmetic and Python round) 0, 0, 1, 2, 2, 2, 3, 4, ...
    """
    if factor <= 0:
        raise ValueError("speed factor must be positive")
    if rounding == "floor":
        return np.minimum(np.floor(np.arange(num_frames) * factor).astype(np.int64), num_frames - 1)
    if rounding != "half_even":
        raise ValueError(f"speed_rounding={rounding!r}: half_even | floor")
    last = num_frames - 1
    if last == 0:
        return np.zeros(1, dtype=np.int64)
    return np.array([int(round(min(t / last * factor, 1.0) * last)) for t in range(num_frames)], dtype=np.int64)


def speed_perturb(video, factor: float, rounding: str = "half_even"):
    _check_video(video)
    return _take(video, speed_indices(len(video), factor, rounding))


# ---------------------------------------------------------------------- tube shuffle


def sample_tube_permutation(
    cfg: PretextConfig, rng: np.random.Generator, shape: tuple[int, int, int] | None = None
) -> list[int]:
    """perm over the grid's blocks (output block i <- input block perm[i]).

    ``release``: a uniform random permutation within every group of blocks of equal shape
    (``shape`` = the clip's (T, H, W) decides the groups). ``cycle``: ``tube_num_blocks``
    distinct blocks rotate cyclically, so each of them moves and every other block stays.
    """
    if cfg.tube_mode == "release":
        if shape is None:
            raise ValueError("release tube shuffle needs the clip's (T, H, W) shape")
        blocks = _block_slices(shape, cfg.tube_grid, "release")
        groups: dict[tuple, list[int]] = {}
        for i, b in enumerate(blocks):
            groups.setdefault(tuple(s.stop - s.start for s in b), []).append(i)
        perm = np.arange(len(blocks))
        for idx in groups.values():
            if len(idx) > 1:
                perm[idx] = np.asarray(idx)[rng.permutation(len(idx))]
        return perm.tolist()
    if cfg.tube_mode != "cycle":
        raise ValueError(f"tube_mode={cfg.tube_mode!r}: release | cycle")
    n = int(np.prod(cfg.tube_grid))
    k = cfg.tube_num_blocks
    if not 2 <= k <= n:
        raise ValueError(f"tube_num_blocks={k} must be in [2, {n}] for grid {cfg.tube_grid}")
    chosen = rng.choice(n, size=k, replace=False)
    perm = np.arange(n)
    perm[chosen] = np.roll(chosen, 1)
    return perm.tolist()


def _axis_ranges(size: int, parts: int, mode: str) -> list[slice]:
    base, rem = divmod(size, parts)
    if mode == "release":  # the remainder spread over the first parts: every pixel is in a tube
        sizes = [base + (1 if i < rem else 0) for i in range(parts)]
    else:  # equal parts; a remainder at the far edge is left in place
        sizes = [base] * parts
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    return [slice(a, a + n) for a, n in zip(starts, sizes)]


def _block_slices(
    shape: tuple[int, int, int], grid: list[int], mode: str = "cycle"
) -> list[tuple[slice, slice, slice]]:
    if any(s // g < 1 for s, g in zip(shape, grid)):
        raise ValueError(f"video {shape} too small for tube grid {grid}")
    axes = [_axis_ranges(s, g, mode) for s, g in zip(shape, grid)]
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


def tube_shuffle(video, grid: list[int], perm: list[int], mode: str = "cycle"):
    """Rearrange the (t, h, w) block grid: output block i is input block perm[i] (blocks of
    equal shape only; ``mode`` splits the sides as ``sample_tube_permutation`` does)."""
    _check_video(video)
    blocks = _block_slices(tuple(video.shape[:3]), grid, mode)
    if sorted(perm) != list(range(len(blocks))):
        raise ValueError("perm must be a permutation of the grid's blocks")
    out = _copy(video)
    for i, src in enumerate(perm):
        if src != i:
            if video[blocks[i]].shape != video[blocks[src]].shape:
                raise ValueError(f"tube {src} -> {i}: blocks of different shapes")
            out[blocks[i]] = video[blocks[src]]
    return out


def inverse_permutation(perm: list[int]) -> list[int]:
    return np.argsort(np.asarray(perm)).tolist()


# ---------------------------------------------------------------------- apply / sample


def apply_pretext(video, name: str, instruction: str, cfg: PretextConfig, rng: np.random.Generator) -> PretextResult:
    """Apply one named pretext with parameters drawn from ``rng``."""
    _check_video(video)
    if name == "none":
        out, params = video, {}
    elif name == "cube":
        start, length = sample_cube(len(video), cfg, rng)
        out, params = cube_inpaint(video, start, length, cfg.cube_fill), {"start": start, "length": length}
    elif name == "speed":
        factor = float(rng.choice(cfg.speed_factors))
        out = speed_perturb(video, factor, cfg.speed_rounding)
        params = {"factor": factor, "rounding": cfg.speed_rounding}
    elif name == "tube":
        perm = sample_tube_permutation(cfg, rng, tuple(video.shape[:3]))
        out = tube_shuffle(video, cfg.tube_grid, perm, cfg.tube_mode)
        params = {"grid": list(cfg.tube_grid), "perm": perm, "mode": cfg.tube_mode}
    else:
        raise ValueError(f"unknown pretext {name!r}; choose one of {PRETEXTS}")
    return PretextResult(out, name, params, compose_prompt(instruction, cfg.token(name)))


class PretextSampler:
    """Draws a pretext with the configured ratio and applies it, reproducibly per seed."""

    def __init__(self, cfg: PretextConfig = PretextConfig()):
        self.cfg = cfg
        self.p = cfg.probabilities()

    def choose(self, rng: np.random.Generator) -> str:
        if not self.cfg.enabled:
            return "none"
        return PRETEXTS[int(rng.choice(len(PRETEXTS), p=self.p))]

    def __call__(self, video, instruction: str, seed: int | str) -> PretextResult:
        """``seed``: e.g. the sample id, so a re-run of precompute gives the same source."""
        rng = rng_for(seed)
        name = self.choose(rng)
        if len(video) < 2:  # images: pretexts are for video samples only
            name = "none"
        return apply_pretext(video, name, instruction, self.cfg, rng)
