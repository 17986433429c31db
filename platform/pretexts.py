"""Motion-alignment pretexts (paper Sec. 3.3): perturb the *source* video only.

The target stays the original clip; the model learns to restore it from the perturbed
source. As in the public SAMA release:

- cube inpainting: one contiguous span of frames is masked (filled), never the first frame;
- speed perturbation: the clip is replayed 0.5x or 2x faster/slower (same frame count);
- tube shuffle: the clip is cut into a (t, h, w) grid of spatio-temporal blocks and four
  of them swap places (a cyclic permutation, so every chosen block moves).

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
    # cube inpainting: span length as a fraction of the clip, and the fill value (input units)
    cube_min_fraction: float = 0.2
    cube_max_fraction: float = 0.5
    cube_fill: float = 0.0
    # speed perturbation: playback factors (>1 faster, <1 slower)
    speed_factors: list[float] = field(default_factory=lambda: [0.5, 2.0])
    # tube shuffle: grid (t, h, w) and how many blocks swap places
    tube_grid: list[int] = field(default_factory=lambda: [2, 2, 2])
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


def speed_indices(num_frames: int, factor: float) -> np.ndarray:
    """Source frame for each output frame when replaying at ``factor`` x speed, same length.

    2x: 0, 2, 4, ... (then the last frame held); 0.5x: 0, 0, 1, 1, 2, 2, ...
    """
    if factor <= 0:
        raise ValueError("speed factor must be positive")
    return np.minimum(np.floor(np.arange(num_frames) * factor).astype(np.int64), num_frames - 1)


def speed_perturb(video, factor: float):
    _check_video(video)
    return _take(video, speed_indices(len(video), factor))


# ---------------------------------------------------------------------- tube shuffle


def sample_tube_permutation(cfg: PretextConfig, rng: np.random.Generator) -> list[int]:
    """perm over the grid's blocks (output block i <- input block perm[i]).

    ``tube_num_blocks`` distinct blocks are chosen and rotated cyclically, so each of them
    moves and every other block stays.
    """
    n = int(np.prod(cfg.tube_grid))
    k = cfg.tube_num_blocks
    if not 2 <= k <= n:
        raise ValueError(f"tube_num_blocks={k} must be in [2, {n}] for grid {cfg.tube_grid}")
    chosen = rng.choice(n, size=k, replace=False)
    perm = np.arange(n)
    perm[chosen] = np.roll(chosen, 1)
    return perm.tolist()


def _block_slices(shape: tuple[int, int, int], grid: list[int]) -> list[tuple[slice, slice, slice]]:
    # Equal blocks of floor(size / g); a remainder at the far edge is left in place.
    sizes = [s // g for s, g in zip(shape, grid)]
    if min(sizes) < 1:
        raise ValueError(f"video {shape} too small for tube grid {grid}")
    out = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            for k in range(grid[2]):
                out.append(tuple(slice(a * s, (a + 1) * s) for a, s in zip((i, j, k), sizes)))
    return out


def tube_shuffle(video, grid: list[int], perm: list[int]):
    """Rearrange the (t, h, w) block grid: output block i is input block perm[i]."""
    _check_video(video)
    blocks = _block_slices(tuple(video.shape[:3]), grid)
    if sorted(perm) != list(range(len(blocks))):
        raise ValueError("perm must be a permutation of the grid's blocks")
    out = _copy(video)
    for i, src in enumerate(perm):
        if src != i:
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
        out, params = speed_perturb(video, factor), {"factor": factor}
    elif name == "tube":
        perm = sample_tube_permutation(cfg, rng)
        out, params = tube_shuffle(video, cfg.tube_grid, perm), {"grid": list(cfg.tube_grid), "perm": perm}
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
