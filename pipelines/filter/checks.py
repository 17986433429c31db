"""Cheap media checks: what decoded frames and manifest columns can tell without a model.

They run before the judge, so a sample a judge would be paid to look at is at least
decodable, large enough, moving, not blank, one shot, in focus, and (for edit pairs)
a target that agrees with its source in shape and actually differs from it.

All pixel statistics are computed on frames downscaled to ``max_side`` so the
thresholds do not depend on the source resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sama.media import read_frames

CHECK_REASONS = (
    "low_resolution",
    "too_short",
    "too_long",
    "static",
    "motion_lost",
    "blank_frames",
    "scene_cut",
    "blurry",
    "duration_mismatch",
    "size_mismatch",
    "unchanged_target",
)


@dataclass
class ChecksConfig:
    enabled: bool = True
    frames: int = 12  # frames sampled uniformly per video
    max_side: int = 256  # decode at most this long side (statistics are scale-dependent)
    min_short_side: int = 256  # pixels, target and source
    min_frames: int = 9  # videos only
    min_duration: float = 0.5  # seconds, videos only
    max_duration: float | None = None  # seconds; null: no limit
    min_motion: float = 0.006  # median mean-abs difference of consecutive sampled frames (0..1)
    min_motion_kept: float = 0.5  # video edits: the target keeps at least this share of the source's motion
    blank_std: float = 4.0  # a frame whose luma std (0..255) is below this is blank (black, white, flat)
    max_blank_fraction: float = 0.2  # of sampled frames
    cut_threshold: float = 0.6  # histogram L1 distance (0..2) between consecutive samples that counts as a cut
    max_scene_cuts: int = 0
    min_sharpness: float = 15.0  # median variance of the Laplacian of luma (0..255 scale)
    max_duration_mismatch: float = 0.05  # edit pairs: |src - tgt| / max duration (frame rates may differ)
    max_aspect_mismatch: float = 0.05  # edit pairs: relative aspect-ratio difference
    min_edit_diff: float = 0.01  # edit pairs: mean-abs difference source vs target (0..1) below this...
    min_changed_blocks: float = 0.005  # ...and fewer 8x8 blocks than this share changed beyond codec noise: unchanged
    skip: list[str] = field(default_factory=list)  # check names (CHECK_REASONS) not to apply

    def validate(self) -> None:
        if self.frames < 2:
            raise ValueError("frames must be >= 2 (motion and cuts compare consecutive samples)")
        bad = [s for s in self.skip if s not in CHECK_REASONS]
        if bad:
            raise ValueError(f"skip: unknown check(s) {bad}; known: {list(CHECK_REASONS)}")


@dataclass
class CheckResult:
    metrics: dict[str, float | int | None]
    failed: list[str]  # CHECK_REASONS values
    details: list[str]  # one human-readable line per failure, naming the file


# --- pixel statistics ----------------------------------------------------------------------


def luma(frames: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, H, W) float32 in 0..255 (BT.601)."""
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def motion_diffs(y: np.ndarray) -> np.ndarray:
    """Mean absolute luma difference (0..1) of each consecutive pair of frames."""
    if len(y) < 2:
        return np.zeros(0, np.float32)
    return np.abs(np.diff(y, axis=0)).mean(axis=(1, 2)) / 255.0


def histogram_distances(frames: np.ndarray, bins: int = 16) -> np.ndarray:
    """L1 distance (0..2) of per-channel colour histograms of consecutive frames."""
    if len(frames) < 2:
        return np.zeros(0, np.float32)
    q = (frames.astype(np.int32) * bins) >> 8  # 0..bins-1 per channel
    hists = np.stack(
        [np.concatenate([np.bincount(f[..., c].ravel(), minlength=bins) for c in range(3)]) for f in q]
    ).astype(np.float32)
    hists /= hists.sum(axis=1, keepdims=True) / 3.0  # each channel's histogram sums to 1
    return np.abs(np.diff(hists, axis=0)).sum(axis=1) / 3.0


def laplacian_variance(y: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian per frame: low means blurred (or flat)."""
    if y.shape[1] < 3 or y.shape[2] < 3:
        return np.zeros(len(y), np.float32)
    lap = 4 * y[:, 1:-1, 1:-1] - y[:, :-2, 1:-1] - y[:, 2:, 1:-1] - y[:, 1:-1, :-2] - y[:, 1:-1, 2:]
    return lap.var(axis=(1, 2))


def pair_difference(src: np.ndarray, tgt: np.ndarray, block: int = 8, noise: float = 0.06) -> tuple[float, float]:
    """(mean absolute difference (0..1), share of ``block``-pixel blocks whose mean difference
    exceeds ``noise``) of source and target frames, matched by index and size. The first sees
    global edits; the second local ones (a hat on 1.5% of the frame) that vanish in a mean,
    while re-encoding noise stays below ``noise`` in every block."""
    from PIL import Image

    n = min(len(src), len(tgt))
    si = np.linspace(0, len(src) - 1, n).round().astype(int)
    ti = np.linspace(0, len(tgt) - 1, n).round().astype(int)
    h, w = tgt.shape[1:3]
    hb, wb = max(h // block, 1), max(w // block, 1)
    diffs, changed = [], []
    for a, b in zip(si, ti):
        s = src[a]
        if s.shape[:2] != (h, w):
            s = np.asarray(Image.fromarray(s).resize((w, h), Image.BILINEAR))
        d = np.abs(s.astype(np.int16) - tgt[b].astype(np.int16)).mean(-1) / 255.0
        diffs.append(d.mean())
        blocks = d[: hb * block, : wb * block].reshape(hb, block, wb, block).mean(axis=(1, 3))
        changed.append((blocks > noise).mean())
    return float(np.mean(diffs)), float(np.max(changed))


# --- the checks ----------------------------------------------------------------------------


def frame_metrics(frames: np.ndarray, cfg: ChecksConfig) -> dict[str, float | int]:
    y = luma(frames)
    diffs = motion_diffs(y)
    hist = histogram_distances(frames)
    return {
        "motion": float(np.median(diffs)) if len(diffs) else None,
        "blank_fraction": float((y.std(axis=(1, 2)) < cfg.blank_std).mean()),
        "scene_cuts": int((hist > cfg.cut_threshold).sum()),
        "sharpness": float(np.median(laplacian_variance(y))),
    }


def decode(row: dict, cfg: ChecksConfig) -> dict[str, np.ndarray]:
    """Frames the checks need: {'target': (n,H,W,3), 'source': ...}; raises MediaError naming the file."""
    frames = {"target": read_frames(row["target_uri"], cfg.frames, cfg.max_side)}
    if row.get("source_uri"):
        frames["source"] = read_frames(row["source_uri"], cfg.frames, cfg.max_side)
    return frames


def run_checks(row: dict, frames: dict[str, np.ndarray], cfg: ChecksConfig) -> CheckResult:
    """Checks for one manifest row on its decoded frames (long side <= ``cfg.max_side``)."""
    failed: list[str] = []
    details: list[str] = []
    tgt_uri, src_uri = row["target_uri"], row.get("source_uri")
    is_video = row["task"] in ("t2v", "video_edit")

    def fail(reason: str, detail: str) -> None:
        if reason not in cfg.skip and reason not in failed:
            failed.append(reason)
            details.append(detail)

    # 1. from manifest columns: no decoding needed
    for side, uri in (("tgt", tgt_uri), ("src", src_uri)):
        w, h = row.get(f"{side}_width"), row.get(f"{side}_height")
        if uri and w and h and min(w, h) < cfg.min_short_side:
            fail("low_resolution", f"{uri}: {w}x{h}, short side below {cfg.min_short_side}")
    if is_video:
        n, dur = row.get("tgt_frames") or 0, row.get("tgt_duration") or 0.0
        if n < cfg.min_frames or dur < cfg.min_duration:
            fail(
                "too_short", f"{tgt_uri}: {n} frames, {dur:.2f}s (minimum {cfg.min_frames} frames, {cfg.min_duration}s)"
            )
        if cfg.max_duration is not None and dur > cfg.max_duration:
            fail("too_long", f"{tgt_uri}: {dur:.2f}s > {cfg.max_duration}s")
    if src_uri and row.get("src_width"):
        if row["task"] == "video_edit":
            a, b = row.get("src_duration") or 0.0, row.get("tgt_duration") or 0.0
            if max(a, b) and abs(a - b) / max(a, b) > cfg.max_duration_mismatch:
                src_clip = f"{a:.2f}s ({row.get('src_frames')} frames at {row.get('src_fps') or 0:g} fps)"
                tgt_clip = f"{b:.2f}s ({row.get('tgt_frames')} frames at {row.get('tgt_fps') or 0:g} fps)"
                fail("duration_mismatch", f"{src_uri} vs {tgt_uri}: {src_clip} vs {tgt_clip}")
        ra = row["src_width"] / max(row["src_height"] or 1, 1)
        rb = row["tgt_width"] / max(row["tgt_height"] or 1, 1)
        if abs(ra - rb) / max(ra, rb) > cfg.max_aspect_mismatch:
            fail(
                "size_mismatch",
                f"{src_uri} vs {tgt_uri}: {row['src_width']}x{row['src_height']} vs "
                f"{row['tgt_width']}x{row['tgt_height']}",
            )

    # 2. from decoded frames
    m = frame_metrics(frames["target"], cfg)
    if is_video and len(frames["target"]) > 1:
        source_motion = None
        if row["task"] == "video_edit" and "source" in frames and len(frames["source"]) > 1:
            source_motion = frame_metrics(frames["source"], cfg)["motion"]
        if source_motion is not None and source_motion >= cfg.min_motion:
            # An edit is judged against its own source: it must keep the motion, not reach a bar.
            if m["motion"] is not None and m["motion"] < cfg.min_motion_kept * source_motion:
                fail(
                    "motion_lost",
                    f"{tgt_uri}: motion {m['motion']:.4f} vs the source's {source_motion:.4f} "
                    f"({m['motion'] / source_motion:.0%} kept, below {cfg.min_motion_kept:.0%})",
                )
        elif m["motion"] is not None and m["motion"] < cfg.min_motion:
            fail("static", f"{tgt_uri}: motion {m['motion']:.4f} < {cfg.min_motion}")
        if m["scene_cuts"] > cfg.max_scene_cuts:
            fail("scene_cut", f"{tgt_uri}: {m['scene_cuts']} scene cut(s) (at most {cfg.max_scene_cuts})")
    else:
        m["motion"], m["scene_cuts"] = None, None
    if m["blank_fraction"] > cfg.max_blank_fraction:
        fail("blank_frames", f"{tgt_uri}: {m['blank_fraction']:.0%} of sampled frames blank")
    if m["sharpness"] < cfg.min_sharpness and m["blank_fraction"] < 1.0:
        fail("blurry", f"{tgt_uri}: sharpness {m['sharpness']:.1f} < {cfg.min_sharpness}")
    m["edit_diff"] = None
    if src_uri:
        m["edit_diff"], changed = pair_difference(frames["source"], frames["target"])
        if m["edit_diff"] < cfg.min_edit_diff and changed < cfg.min_changed_blocks:
            fail(
                "unchanged_target",
                f"{tgt_uri}: differs from {src_uri} by {m['edit_diff']:.4f} on average (< {cfg.min_edit_diff}) "
                f"and in {changed:.2%} of blocks (< {cfg.min_changed_blocks:.1%})",
            )
    m = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
    return CheckResult(m, failed, details)
