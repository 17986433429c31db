"""An edit request: its parameters parsed and bounded, its source checked against the limits."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from sama.media import IMAGE_EXTS, VIDEO_EXTS, MediaInfo

from .security import RequestError
from .settings import IngressSettings

FIELDS = (
    "instruction",
    "seed",
    "steps",
    "guidance_scale",
    "source_guidance_scale",
    "num_frames",
    "height",
    "width",
    "uri",
    "video",
)


@dataclass
class EditRequest:
    """What the editor needs for one edit (the source as bytes or as an already-vetted URI)."""

    instruction: str
    source_uri: Optional[str] = None
    source_bytes: Optional[bytes] = None
    source_ref: Any = None  # the uploaded bytes in Ray's object store (the ingress keeps only this ref)
    source_suffix: str = ".mp4"
    fps: float = 16.0  # of the source; the result keeps it
    seed: int = 0
    steps: Optional[int] = None  # None: the pipeline config's
    guidance_scale: Optional[float] = None
    source_guidance_scale: Optional[float] = None
    num_frames: Optional[int] = None  # source frames to edit; None: as many as the buckets take
    height: Optional[int] = None  # both or neither: a fixed output bucket
    width: Optional[int] = None

    def describe(self) -> dict[str, Any]:
        """For logs and job records: everything but the bytes."""
        return {k: v for k, v in self.__dict__.items() if k not in ("source_bytes", "source_ref")}


def _number(form: Mapping[str, Any], name: str, kind: type, lo: float, hi: float):
    raw = form.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise RequestError(400, f"'{name}' must be a plain form field")
    try:
        value = kind(raw.strip())
    except ValueError:
        raise RequestError(
            400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from None
    if (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
        raise RequestError(400, f"'{name}' = {raw} is out of range [{lo}, {hi}]")
    return value


def parse_params(form: Mapping[str, Any], cfg: IngressSettings, sync: bool) -> EditRequest:
    """Form fields -> an :class:`EditRequest` without its source (400 for anything malformed)."""
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; known: {list(FIELDS)}")
    instruction = form.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise RequestError(400, "'instruction' is required: what to change in the video")
    if len(instruction) > cfg.limits.max_prompt_chars:
        raise RequestError(400, f"'instruction' is longer than {cfg.limits.max_prompt_chars} characters")
    geo = cfg.geometry
    max_frames = min(geo.max_frames, cfg.limits.sync_max_frames) if sync else geo.max_frames
    req = EditRequest(
        instruction=instruction.strip(),
        seed=_number(form, "seed", int, 0, 2**31 - 1) or 0,
        steps=_number(form, "steps", int, 1, cfg.limits.max_steps),
        guidance_scale=_number(form, "guidance_scale", float, 0.0, 30.0),
        source_guidance_scale=_number(form, "source_guidance_scale", float, 0.0, 30.0),
        num_frames=_number(form, "num_frames", int, 1, max_frames),
        height=_number(form, "height", int, geo.multiple, cfg.limits.max_side),
        width=_number(form, "width", int, geo.multiple, cfg.limits.max_side),
    )
    if sync and req.num_frames is None:
        req.num_frames = max_frames
    if (req.height is None) != (req.width is None):
        raise RequestError(400, "give both 'height' and 'width', or neither (then the nearest bucket is used)")
    if req.height is not None:
        if req.height % geo.multiple or req.width % geo.multiple:
            raise RequestError(400, f"'height' and 'width' must be multiples of {geo.multiple}")
        if req.height * req.width > geo.area:
            raise RequestError(400, f"{req.height}x{req.width} is more than the {geo.area} pixels this model edits at")
    return req


def upload_suffix(filename: str | None) -> str:
    """The extension the probes go by (images vs videos); unknown names are tried as video."""
    ext = os.path.splitext((filename or "").lower())[1]
    return ext if ext in IMAGE_EXTS + VIDEO_EXTS else ".mp4"


def check_media(info: MediaInfo, cfg: IngressSettings) -> None:
    """422 when the source is longer or larger than the limits allow."""
    lim = cfg.limits
    if info.kind == "video" and info.duration > lim.max_duration_s:
        raise RequestError(422, f"the video lasts {info.duration:.1f}s; the limit is {lim.max_duration_s:g}s")
    frames = info.frames or int(round(info.duration * info.fps))
    if frames > lim.max_source_frames:
        raise RequestError(422, f"the video has {frames} frames; the limit is {lim.max_source_frames}")
    if max(info.width, info.height) > lim.max_side or info.width * info.height > lim.max_pixels:
        raise RequestError(
            422,
            f"{info.width}x{info.height} is larger than allowed "
            f"(long side <= {lim.max_side}, <= {lim.max_pixels} pixels)",
        )
