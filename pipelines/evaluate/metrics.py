"""Automatic edit metrics that need no judge (numpy + a little torch, no OpenCV).

All work on a source clip and its edit already aligned to the same (T, H, W, 3) uint8
shape, downscaled to ``max_side`` for speed:

- edited region: blocks where |edit - source| exceeds ``diff_threshold`` (or a given
  mask), dilated by one block so boundary pixels do not count as "unedited";
- ``temporal_consistency``: 1 - the flow-compensated error between consecutive edit
  frames (block matching finds each block's best match in the next frame; what is left
  is flicker and popping, not motion);
- ``flicker``: how much the edit's global brightness jumps frame to frame beyond the
  source's own jumps;
- motion preservation: dense block-matching flow of source and edit compared outside the
  edited region (everywhere for a global edit: a style change must keep all motion):
  ``flow_epe`` (mean end-point error, pixels at the clip's resolution) and
  ``motion_preservation`` (fraction of textured blocks whose flows agree within
  ``flow_tolerance`` pixels);
- fidelity of unedited regions: ``fidelity_psnr`` (dB, capped at 100) and
  ``fidelity_ssim`` (grayscale, 7x7 window) over the unedited pixels only.

Against a ground-truth target (same grid as the edit), :func:`ground_truth_metrics`:
``gt_psnr`` and ``gt_ssim`` over the whole frame and, with a mask, over the edited and
unedited regions separately; :class:`PerceptualScorer` adds ``gt_perceptual``, a learned
perceptual distance (1 - cosine similarity of a vision encoder's image embeddings, any
Hugging Face CLIP / SigLIP / DINO folder given by path; off when none is given).

A metric that cannot be measured (a single frame, no unedited pixel) is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

PSNR_MAX = 100.0  # dB for identical pixels (keeps means finite)


@dataclass
class SemanticMetricConfig:
    """Text-image agreement with a CLIP or SigLIP model (both towers) given by path; null: skipped."""

    model: str | None = None  # a Hugging Face folder (local or s3://) with text + vision towers
    frames: int = 4  # edit frames scored, uniformly sampled
    device: str = "auto"


@dataclass
class PerceptualConfig:
    """The learned perceptual distance to the ground truth; null model: off ("none")."""

    model: str | None = None  # a Hugging Face vision (or CLIP / SigLIP) folder, local or s3://
    frames: int = 4  # frame pairs compared, uniformly sampled
    device: str = "auto"


@dataclass
class MetricsConfig:
    enabled: bool = True
    max_side: int = 256  # analysis resolution (long side)
    block: int = 8  # block size of flow and region masks, pixels at analysis resolution
    search_radius: int = 6  # flow search window, pixels at analysis resolution (per frame)
    diff_threshold: float = 0.08  # mean |edit - source| (0..1) above which a block counts as edited
    global_edit_fraction: float = 0.6  # edited more than this: compare motion over the whole frame
    flow_tolerance: float = 1.0  # pixels (clip resolution): flows closer than this "agree"
    texture_min_std: float = 0.02  # blocks flatter than this carry no motion information
    semantic: SemanticMetricConfig = field(default_factory=SemanticMetricConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)

    def validate(self) -> None:
        if self.block < 2 or self.search_radius < 1 or self.max_side < self.block * 2:
            raise ValueError("metrics: need block >= 2, search_radius >= 1, max_side >= 2 * block")


# --- small pieces --------------------------------------------------------------------------------


def downscale(frames: np.ndarray, max_side: int) -> np.ndarray:
    """(T, H, W, C) uint8 -> float32 in [0, 1], long side <= ``max_side`` (area averaging)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        x = F.interpolate(x, size=(max(2, round(h * s)), max(2, round(w * s))), mode="area")
    return x.permute(0, 2, 3, 1).numpy()


def gray(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float -> (T, H, W) luma (BT.601)."""
    return frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    """(..., H, W) -> (..., H // b, W // b, b * b): the image cut into whole blocks."""
    *lead, h, w = x.shape
    hb, wb = h // block, w // block
    x = x[..., : hb * block, : wb * block].reshape(*lead, hb, block, wb, block)
    return np.moveaxis(x, -3, -2).reshape(*lead, hb, wb, block * block)


def block_flow(
    a: np.ndarray, b: np.ndarray, block: int = 8, radius: int = 6, smooth: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Block-matching flow from gray frame ``a`` to ``b``.

    Returns (flow (hb, wb, 2) as (dy, dx): block at p in ``a`` is best matched at p + d in
    ``b``; cost (hb, wb): the mean absolute error left at that match). An exhaustive
    search over (2r+1)^2 shifts, each one a whole-image subtraction; ``smooth`` prefers the
    smaller shift among equal costs (flat regions: no motion rather than any).
    """
    h, w = a.shape
    hb, wb = h // block, w // block
    ac = a[: hb * block, : wb * block]
    bp = np.pad(b, radius, mode="edge")
    shifts = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    costs = np.empty((len(shifts), hb, wb), np.float32)
    for k, (dy, dx) in enumerate(shifts):
        moved = bp[radius + dy : radius + dy + hb * block, radius + dx : radius + dx + wb * block]
        costs[k] = np.abs(ac - moved).reshape(hb, block, wb, block).mean(axis=(1, 3))
    penalty = smooth * np.hypot(*np.asarray(shifts, np.float32).T)[:, None, None]
    best = np.argmin(costs + penalty, axis=0)
    flow = np.asarray(shifts, np.float32)[best]
    cost = np.take_along_axis(costs, best[None], 0)[0]
    return flow, cost


def video_flow(g: np.ndarray, block: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Flows and residual costs of every consecutive pair: (T-1, hb, wb, 2), (T-1, hb, wb)."""
    pairs = [block_flow(g[t], g[t + 1], block, radius) for t in range(len(g) - 1)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation of (..., hb, wb) boolean block masks."""
    p = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    out = np.zeros_like(mask)
    hb, wb = mask.shape[-2:]
    for dy in range(3):
        for dx in range(3):
            out |= p[..., dy : dy + hb, dx : dx + wb]
    return out


def edited_blocks(
    src: np.ndarray, edit: np.ndarray, block: int, threshold: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """(T, hb, wb) bool: blocks the edit changed (from ``mask`` (T, H, W) in 0..1 when given)."""
    if mask is not None:
        return _blocks(mask > 0.5, block).any(-1)
    diff = np.abs(src - edit).mean(-1)  # (T, H, W)
    return _blocks(diff, block).mean(-1) > threshold


def psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float | None:
    """PSNR (dB) of float images in [0, 1] over the pixels where ``keep`` (T, H, W) is set."""
    if not keep.any():
        return None
    mse = float(((a - b) ** 2).mean(-1)[keep].mean())
    return PSNR_MAX if mse <= 1e-10 else min(PSNR_MAX, 10.0 * math.log10(1.0 / mse))


def ssim_map(a: np.ndarray, b: np.ndarray, win: int = 7) -> np.ndarray:
    """Per-pixel SSIM of gray (T, H, W) frames in [0, 1] (uniform window, standard constants)."""
    x = torch.from_numpy(np.ascontiguousarray(a))[:, None].double()
    y = torch.from_numpy(np.ascontiguousarray(b))[:, None].double()

    def mean(z):
        return F.avg_pool2d(z, win, stride=1, padding=win // 2, count_include_pad=False)

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s[:, 0].numpy()


# --- all metrics of one edit ---------------------------------------------------------------------


def edit_metrics(source: np.ndarray, edit: np.ndarray, cfg: MetricsConfig, mask: np.ndarray | None = None) -> dict:
    """Metrics of one edit; ``source`` and ``edit`` are aligned (T, H, W, 3) uint8 clips,
    ``mask`` an optional (T, H, W) edited-region mask in 0..1 at the same size."""
    if source.shape != edit.shape:
        raise ValueError(f"source {source.shape} and edit {edit.shape} are not aligned")
    full_side = max(edit.shape[1:3])
    src, ed = downscale(source, cfg.max_side), downscale(edit, cfg.max_side)
    scale = full_side / max(ed.shape[1:3])  # analysis pixels -> clip pixels
    if mask is not None:
        m = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[:, None]
        mask = F.interpolate(m, size=ed.shape[1:3], mode="area")[:, 0].numpy()
    b = cfg.block
    gs, ge = gray(src), gray(ed)
    edited = edited_blocks(src, ed, b, cfg.diff_threshold, mask)  # (T, hb, wb)
    hb, wb = edited.shape[1:]
    edited_fraction = float(edited.mean())
    unedited = ~_dilate(edited)
    keep_px = np.repeat(np.repeat(unedited, b, axis=1), b, axis=2)  # (T, hb*b, wb*b)
    crop = (slice(None), slice(0, hb * b), slice(0, wb * b))

    out: dict = {
        "edited_fraction": edited_fraction,
        "fidelity_psnr": psnr(src[crop], ed[crop], keep_px),
        "fidelity_ssim": (float(ssim_map(gs, ge)[crop][keep_px].mean()) if keep_px.any() else None),
        "temporal_consistency": None,
        "flicker": None,
        "flow_epe": None,
        "motion_preservation": None,
        "motion_region": None,
    }
    if len(ed) < 2:
        return out
    luma_s, luma_e = gs.mean(axis=(1, 2)), ge.mean(axis=(1, 2))
    out["flicker"] = float(np.abs(np.diff(luma_e) - np.diff(luma_s)).mean())
    flow_e, cost_e = video_flow(ge, b, cfg.search_radius)
    out["temporal_consistency"] = float(1.0 - cost_e.mean())
    flow_s, _ = video_flow(gs, b, cfg.search_radius)
    textured = _blocks(gs[:-1], b).std(-1) > cfg.texture_min_std  # (T-1, hb, wb)
    if edited_fraction > cfg.global_edit_fraction:
        region, out["motion_region"] = np.ones_like(textured), "all"
    else:
        region, out["motion_region"] = unedited[:-1] & unedited[1:], "unedited"
    sel = region & textured
    if sel.any():
        epe = np.linalg.norm(flow_s - flow_e, axis=-1)[sel] * scale
        out["flow_epe"] = float(epe.mean())
        out["motion_preservation"] = float((epe <= cfg.flow_tolerance).mean())
    return out


# --- against the ground truth --------------------------------------------------------------------


def ground_truth_metrics(edit: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """PSNR (dB, 100 = identical) and SSIM of an edit against its target, aligned (T, H, W, 3)
    uint8 clips; with ``mask`` ((T, H, W), 0..1) also over the edited (> 0.5) and unedited
    pixels separately."""
    if edit.shape != target.shape:
        raise ValueError(f"edit {edit.shape} and target {target.shape} are not aligned")
    ed, tg = edit.astype(np.float32) / 255.0, target.astype(np.float32) / 255.0
    ssim = ssim_map(gray(ed), gray(tg))
    everywhere = np.ones(ed.shape[:3], bool)
    out = {"gt_psnr": psnr(ed, tg, everywhere), "gt_ssim": float(ssim.mean())}
    if mask is not None:
        inside = mask > 0.5
        for name, region in (("edited", inside), ("unedited", ~inside)):
            out[f"gt_psnr_{name}"] = psnr(ed, tg, region)
            out[f"gt_ssim_{name}"] = float(ssim[region].mean()) if region.any() else None
    return out


# --- learned encoders (optional, from a local path) --------------------------------------------


def _device(name: str) -> torch.device:
    return torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


class _ImageEncoder:
    """A Hugging Face model's image embeddings, pixels prepared by its processor when it has one."""

    def __init__(self, model: str, device: str):
        from transformers import AutoModel

        from sama import storage

        path = storage.materialize(model)
        self.device = _device(device)
        self.model = AutoModel.from_pretrained(path).eval().to(self.device)
        try:
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(path)
        except Exception:  # noqa: BLE001 - a folder without preprocessor_config.json: resize + normalise here
            self.processor = None
        vision = getattr(self.model.config, "vision_config", self.model.config)
        self.size = int(getattr(vision, "image_size", 224))
        self.path = path

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        if self.processor is not None:
            return self.processor(images=list(frames), return_tensors="pt")["pixel_values"]
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - 0.5) / 0.5

    def images(self, frames: np.ndarray) -> torch.Tensor:
        pixels = self.pixels(frames).to(self.device)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixels)
        else:  # a vision-only model
            out = self.model(pixel_values=pixels)
        return getattr(out, "pooler_output", out).float()


class PerceptualScorer:
    """``gt_perceptual``: mean 1 - cosine similarity of edit and target frame embeddings
    (0: the encoder sees the same image)."""

    def __init__(self, cfg: PerceptualConfig):
        self.cfg, self.encoder, self.label = cfg, _ImageEncoder(cfg.model, cfg.device), cfg.model

    @torch.no_grad()
    def distance(self, edit: np.ndarray, target: np.ndarray) -> float:
        from sama.media import sample_indices

        pick = sample_indices(len(edit), self.cfg.frames)
        a, b = self.encoder.images(edit[pick]), self.encoder.images(target[pick])
        return float((1.0 - F.cosine_similarity(a, b, dim=-1)).clamp(min=0).mean())


# --- semantic agreement (optional encoder) -------------------------------------------------------


class SemanticScorer:
    """Mean cosine similarity of the instruction (or target caption) and edit frames, with a
    CLIP / SigLIP checkpoint that has both towers (``get_text_features`` / ``get_image_features``)."""

    def __init__(self, cfg: SemanticMetricConfig):
        from transformers import AutoTokenizer

        self.cfg, self.label = cfg, cfg.model
        self.encoder = _ImageEncoder(cfg.model, cfg.device)
        self.model, self.device = self.encoder.model, self.encoder.device
        self.tokenizer = AutoTokenizer.from_pretrained(self.encoder.path)

    @torch.no_grad()
    def score(self, text: str, frames: np.ndarray) -> float:
        from sama.media import sample_indices

        frames = frames[sample_indices(len(frames), self.cfg.frames)]
        tok = self.tokenizer(
            [text],
            padding="max_length" if "siglip" in type(self.model).__name__.lower() else True,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        kw = {k: v for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        t = self.model.get_text_features(**kw)
        t = getattr(t, "pooler_output", t).float()
        i = self.encoder.images(frames)
        return float(F.cosine_similarity(i, t.expand_as(i), dim=-1).mean())
