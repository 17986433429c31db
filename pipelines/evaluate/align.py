"""Putting an edit, its source, mask and ground truth on one grid before they are compared.

- **Our own edits** are made in a bucket: the source (and mask and target) is fit into the
  edit's bucket exactly as the pipeline did, so pixels line up.
- **Edits brought from other systems** rarely match the source (a 1920x1080 edit of an
  832x480 source, 20 fps against 30): they are put on the source's grid, resized to its
  size, and their frames matched by timestamp (for each source frame, the edit frame shown
  at that moment); what was done is recorded with the result. An edit covering less than
  ``min_coverage`` of the source cannot be compared and is refused with a per-item error
  that names the file; the ground truth goes through the same steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sama.buckets import Bucket, BucketConfig, fit_to_bucket
from sama.media import MediaError, MediaInfo, probe, read_clip, read_frames


@dataclass
class AlignConfig:
    """How brought edits are put on the source's grid."""

    max_frames: int = 121  # source frames compared (consecutive from the start)
    max_side: int = 832  # the source grid's long side at most (decoding cost)
    min_coverage: float = 0.5  # an edit (or target) covering less of the source is refused


class AlignmentError(ValueError):
    """An edit that cannot be put on the source's grid; ``reason`` is a short kind."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class Aligned:
    source: np.ndarray  # (T, H, W, 3) uint8
    edit: np.ndarray  # same shape
    mask: np.ndarray | None  # (T, H, W) in 0..1
    target: np.ndarray | None  # same shape as the edit
    note: str  # what was done to line them up


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, h, w, C) uint8 -> (T, height, width, C): area averaging down, bilinear up."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    down = height <= frames.shape[1] and width <= frames.shape[2]
    mode, corners = ("area", None) if down else ("bilinear", False)
    x = F.interpolate(x, size=(height, width), mode=mode, align_corners=corners)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def frames_by_timestamp(n_ref: int, fps_ref: float, n_other: int, fps_other: float) -> list[int]:
    """For each reference frame, the index of the other clip's frame shown at its time
    (the last one started by then); the list stops where the other clip ends. Without
    both frame rates the two clips are taken to span the same time."""
    if fps_ref > 0 and fps_other > 0:
        out = []
        for i in range(n_ref):
            j = math.floor(i / fps_ref * fps_other + 1e-6)
            if j >= n_other:
                break
            out.append(j)
        return out
    if n_ref <= 1:
        return [0] if n_other else []
    return [round(i * (n_other - 1) / (n_ref - 1)) for i in range(n_ref)]


def _info(uri: str, what: str) -> MediaInfo:
    try:
        return probe(uri)
    except MediaError as e:
        raise AlignmentError(f"{what}_unreadable", f"{what} {e.detail}") from None


def onto_grid(uri: str, what: str, n_ref: int, fps_ref: float, height: int, width: int) -> tuple[np.ndarray, str]:
    """A clip (an edit, a target) on the reference grid: frames by timestamp, resized. Raises
    AlignmentError naming the file when it is unreadable or covers too little."""
    info = _info(uri, what)
    if info.kind == "image" or n_ref == 1:
        frames = read_clip(uri, 1)[:1]
        picked = [0]
    else:
        picked = frames_by_timestamp(n_ref, fps_ref, info.frames, info.fps)
        if not picked:
            raise AlignmentError(f"{what}_too_short", f"{uri}: {what} has no frame at the source's start")
        try:
            frames = read_frames(uri, indices=picked, max_side=max(height, width))
        except MediaError as e:
            raise AlignmentError(f"{what}_unreadable", f"{what} {e.detail}") from None
    note = f"{what} {info.width}x{info.height}"
    if info.kind == "video":
        note += f" {info.frames}f@{info.fps:g}fps"
    if (info.width, info.height) != (width, height):
        note += f" resized to {width}x{height}"
    if info.kind == "video" and n_ref > 1:
        note += f", {len(picked)}/{n_ref} frames by timestamp"
    return resize(frames[: len(picked)], height, width), note


def align_brought(row: dict, cfg: AlignConfig) -> Aligned:
    """A brought edit (``row["edit_uri"]``) and the target, if any, on the source's grid."""
    src_info = _info(row["source_uri"], "source")
    source = read_clip(row["source_uri"], cfg.max_frames, cfg.max_side)
    n, height, width = source.shape[:3]
    fps = src_info.fps if src_info.kind == "video" else 0.0
    edit, note = onto_grid(row["edit_uri"], "edit", n, fps, height, width)
    covered = len(edit)
    target = None
    if row.get("target_uri"):
        target, target_note = onto_grid(row["target_uri"], "target", n, fps, height, width)
        covered, note = min(covered, len(target)), f"{note}; {target_note}"
    if covered < max(1, math.ceil(cfg.min_coverage * n)):
        short = "edit" if len(edit) == covered else "target"
        uri = row["edit_uri"] if short == "edit" else row["target_uri"]
        raise AlignmentError(
            f"{short}_too_short",
            f"{uri}: covers {covered} of the source's {n} frames (less than {cfg.min_coverage:.0%})",
        )
    mask = _mask(row.get("mask_uri"), n, height, width, lambda clip: resize(clip, height, width))
    cut = slice(0, covered)
    return Aligned(
        source[cut],
        edit[cut],
        mask[cut] if mask is not None else None,
        target[cut] if target is not None else None,
        note + (f"; compared over {covered} of {n} source frames" if covered < n else ""),
    )


def align_made(row: dict, max_frames: int, decode_side: int | None) -> Aligned:
    """Our own edit (made in a bucket) with the source, mask and target fit into its bucket
    exactly as the pipeline fit the source."""
    edit = read_frames(row["edit_uri"], indices=list(range(int(row["frames"]))))
    t, h, w = edit.shape[:3]
    cfg = BucketConfig(max_frames=max(max_frames, 1), frame_policy="pad")

    def fit(clip: np.ndarray) -> np.ndarray:
        return fit_to_bucket(clip, cfg, bucket=Bucket(h, w))[0]

    source = fit(read_clip(row["source_uri"], max_frames, decode_side))
    mask = _mask(row.get("mask_uri"), t, h, w, fit, max_frames, decode_side)
    target = fit(read_clip(row["target_uri"], max_frames, decode_side)) if row.get("target_uri") else None
    n = min(t, len(source), *([len(target)] if target is not None else []))
    return Aligned(
        source[:n],
        edit[:n],
        mask[:n] if mask is not None else None,
        target[:n] if target is not None else None,
        f"made in a {w}x{h} bucket, {n} frames",
    )


def _mask(uri, n: int, height: int, width: int, place, max_frames: int | None = None, side=None):
    """A mask clip on the grid, one mask per frame (the last repeated), in 0..1; None without one."""
    if not uri:
        return None
    clip = place(read_clip(uri, max_frames or n, side))
    mask = clip[..., :3].mean(-1) / 255.0
    return mask[np.minimum(np.arange(n), len(mask) - 1)]
