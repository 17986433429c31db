"""Media probing from headers (PyAV / Pillow), for local, ``s3://`` and tar-member URIs.

A probe reads the container header, decodes the first frame (proves the codec
works) and, for videos, seeks to the last keyframe and decodes one frame there
(catches files cut short after a valid header). It never decodes a whole video.
Failures raise :class:`MediaError` with a reject reason and a detail naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image, ImageFile, UnidentifiedImageError

from sama import storage

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
DEFAULT_VIDEO_CODECS = ("h264", "hevc", "vp9", "vp8", "av1", "mpeg4")
DEFAULT_IMAGE_CODECS = ("jpeg", "png", "webp", "bmp")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a cut-off JPEG must fail, not decode grey


class MediaError(Exception):
    """A file that cannot be used: ``reason`` is a reject reason, ``detail`` names the file."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MediaInfo:
    kind: str  # "video" or "image"
    width: int  # displayed width (after rotation metadata)
    height: int
    frames: int
    fps: float
    duration: float
    codec: str

    def as_columns(self, prefix: str) -> dict:
        return {f"{prefix}_{k}": v for k, v in dataclasses.asdict(self).items() if k != "kind"}


@dataclass(frozen=True)
class ProbeConfig:
    video_codecs: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_VIDEO_CODECS))
    image_codecs: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_IMAGE_CODECS))
    check_tail: bool = True  # seek to the end and decode a frame (catches truncated files)


def media_kind(uri: str) -> str:
    name = storage.split_member(uri)[1] or uri
    ext = os.path.splitext(name.lower())[1]
    if ext in IMAGE_EXTS or name.lower().endswith(tuple(f".1{e}" for e in IMAGE_EXTS)):
        return "image"
    return "video"


def probe(uri: str, cfg: ProbeConfig = ProbeConfig()) -> MediaInfo:
    """Probe one image or video; raises :class:`MediaError` for anything unusable."""
    try:
        n = storage.size(uri)
    except FileNotFoundError:
        raise MediaError("missing_file", f"{uri} does not exist") from None
    if n == 0:
        raise MediaError("empty_file", f"{uri} is zero bytes")
    with storage.open_input(uri) as f:
        if media_kind(uri) == "image":
            return _probe_image(f, uri, cfg)
        return _probe_video(f, uri, cfg)


def _probe_image(f, uri: str, cfg: ProbeConfig) -> MediaInfo:
    try:
        img = Image.open(f)
        fmt = (img.format or "").lower()
        codec = "jpeg" if fmt in ("jpeg", "mpo") else fmt
        if codec not in cfg.image_codecs:
            raise MediaError("unsupported_codec", f"{uri}: image format {fmt!r} not in {cfg.image_codecs}")
        w, h = img.size
        if codec == "jpeg":
            img.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # decode at 1/8 scale: cheap, still reads all data
        img.load()
    except MediaError:
        raise
    except UnidentifiedImageError as e:
        raise MediaError("undecodable", f"{uri}: not a readable image ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "undecodable"
        raise MediaError(reason, f"{uri}: {e}") from None
    return MediaInfo("image", w, h, 1, 0.0, 0.0, codec)


def _rotation(stream, frame) -> int:
    """Degrees of display rotation: the decoded frame's display matrix, else stream metadata."""
    rot = getattr(frame, "rotation", None)  # PyAV >= 14 reads the display matrix
    if not rot and stream.metadata and "rotate" in stream.metadata:
        rot = float(stream.metadata["rotate"])
    return int(rot or 0) % 360


def _probe_video(f, uri: str, cfg: ProbeConfig) -> MediaInfo:
    try:
        container = av.open(f, metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        f.seek(0)
        if f.read(12)[4:8] == b"ftyp":  # an mp4 whose index (moov, written last) never arrived
            raise MediaError("truncated", f"{uri}: mp4 without its index, cut short ({e})") from None
        raise MediaError("undecodable", f"{uri}: not a readable media container ({e})") from None
    except av.error.FFmpegError as e:
        msg = str(e)
        reason = "truncated" if "moov atom not found" in msg or "End of file" in msg else "undecodable"
        raise MediaError(reason, f"{uri}: {msg}") from None
    with container:
        if not container.streams.video:
            raise MediaError("undecodable", f"{uri}: no video stream")
        vs = container.streams.video[0]
        codec = vs.codec_context.name
        if codec not in cfg.video_codecs:
            raise MediaError("unsupported_codec", f"{uri}: video codec {codec!r} not in {cfg.video_codecs}")
        # One decoder thread: a probe decodes two frames, and frame threading would first
        # buffer a frame per thread (slower) while workers in parallel already use the cores.
        vs.codec_context.thread_count = 1
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        fps = float(rate) if rate else 0.0
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frames = int(vs.frames or 0) or int(round(duration * fps))
        try:
            first = next(container.decode(vs))
        except (StopIteration, av.error.FFmpegError) as e:
            raise MediaError("undecodable", f"{uri}: first frame does not decode ({e or 'no frames'})") from None
        w, h = first.width, first.height
        if cfg.check_tail and duration > 0 and frames > 1:
            _check_tail(container, vs, duration, uri)
    if _rotation(vs, first) in (90, 270):
        w, h = h, w
    return MediaInfo("video", int(w), int(h), max(frames, 1), fps, duration, codec)


def _check_tail(container, vs, duration: float, uri: str) -> None:
    """Seek to the keyframe before the last second and decode a frame there."""
    target = max(0.0, duration - 1.0)
    offset = int(target / vs.time_base) if vs.time_base else 0
    start = vs.start_time or 0
    try:
        container.seek(start + offset, stream=vs, backward=True, any_frame=False)
        for frame in container.decode(vs):
            t = float(frame.pts * vs.time_base) if frame.pts is not None else None
            if t is None or t >= target - 2.0:
                return
        raise MediaError("truncated", f"{uri}: header says {duration:.2f}s but no frame decodes near the end")
    except MediaError:
        raise
    except av.error.FFmpegError as e:
        raise MediaError("truncated", f"{uri}: cannot decode near the end ({e})") from None


def fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)
