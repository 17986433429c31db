"""Media probing from headers (PyAV / Pillow), for local, ``s3://`` and tar-member URIs.

A probe reads the container header, decodes the first frame (proves the codec
works) and, for videos, seeks to the last keyframe and decodes one frame there
(catches files cut short after a valid header). It never decodes a whole video.
Failures raise :class:`MediaError` with a reject reason and a detail naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import av
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageFile, UnidentifiedImageError

from sama import storage
from sama.swscale import rgb_writer

if TYPE_CHECKING:  # numpy is imported where frames are decoded
    import numpy as np

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
        f = storage.open_input(uri)  # on S3 its first GET also gives the size: no HEAD per file
    except FileNotFoundError:
        raise MediaError("missing_file", f"{uri} does not exist") from None
    with f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            raise MediaError("empty_file", f"{uri} is zero bytes")
        f.seek(0)
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


# --- frame decoding (for checks and judges that look at pixels) ------------------------------


def sample_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices spread uniformly over ``total`` frames (centre of each 1/n span)."""
    if total < 1 or n < 1:
        return []
    n = min(n, total)
    return sorted({min(total - 1, int((i + 0.5) * total / n)) for i in range(n)})


def _fit(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(2, round(w * s) // 2 * 2), max(2, round(h * s) // 2 * 2)


def read_image(uri: str, max_side: int | None = None) -> "np.ndarray":
    """One image as (H, W, 3) uint8 RGB, EXIF orientation applied, long side <= ``max_side``."""
    import numpy as np
    from PIL import ImageOps

    try:
        with storage.open_input(uri) as f:
            img = Image.open(f)
            if max_side and (img.format or "").upper() == "JPEG":
                img.draft("RGB", (max_side, max_side))  # DCT-domain downscale: decodes far less
            img = ImageOps.exif_transpose(img).convert("RGB")
    except FileNotFoundError:
        raise MediaError("missing_file", f"{uri} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError("undecodable", f"{uri}: {e}") from None
    size = _fit(*img.size, max_side)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def read_frames(uri: str, n: int = 0, max_side: int | None = None, indices: list[int] | None = None) -> "np.ndarray":
    """``n`` uniformly sampled frames of a video as (n', H, W, 3) uint8 RGB (n' <= n: short clips).

    ``indices`` picks exact frames instead (repeats allowed, e.g. a clip resampled to a
    higher frame rate); indices past the end are dropped. Display rotation is applied; frames
    are scaled in the decoder so the long side is at most ``max_side``. An image gives one
    frame. Decodes sequentially (robust for variable frame rate and files without an index),
    reaching far-apart frames of a constant-rate file by keyframe seeks, and converts only the
    kept frames. Raises :class:`MediaError` naming the file.
    """
    import numpy as np

    if media_kind(uri) == "image":
        return read_image(uri, max_side)[None]
    try:
        f = storage.open_input(uri)
    except FileNotFoundError:
        raise MediaError("missing_file", f"{uri} does not exist") from None
    try:
        with f, av.open(f, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise MediaError("undecodable", f"{uri}: no video stream")
            vs = container.streams.video[0]
            total = int(vs.frames or 0)
            if total < 1:  # no frame count in the header: count packets (demux only, no decoding)
                total = sum(1 for p in container.demux(vs) if p.size)
                container.seek(0)
            order = [i for i in indices if 0 <= i < total] if indices is not None else sample_indices(total, n)
            vs.thread_type = "AUTO"  # the decoder's own threads
            frames, filled, rot = _decode_into(container, vs, order, max_side)
    except MediaError:
        raise
    except av.error.FFmpegError as e:
        raise MediaError("undecodable", f"{uri}: {e}") from None
    if frames is None or not filled.any():
        raise MediaError("undecodable", f"{uri}: no frame decodes")
    if not filled.all():  # the header counted frames the stream does not have
        frames = frames[filled]
    if rot in (90, 180, 270):  # display matrix angles are counter-clockwise, as np.rot90 turns
        frames = np.ascontiguousarray(np.rot90(frames, k=rot // 90, axes=(1, 2)))
    return frames


CONVERT_THREADS = 2  # colour conversion beside decoding (swscale releases the GIL)
IN_FLIGHT = 8  # decoded frames waiting for conversion, at most


def _decode_into(container, vs, order: list[int], max_side: int | None):
    """The frames at ``order`` as one preallocated (len(order), H, W, 3) uint8 array, a mask of
    the slots filled, and the display rotation. Decoding stays on this thread; conversion to RGB
    at the first frame's output size runs on ``CONVERT_THREADS`` threads, each with its own
    reusable converter (a new one per frame costs ~2x): in place through ``sama.swscale`` where
    it covers the stream, else PyAV's reformatter and a copy. Decoding and
    converting overlap, as in ffmpeg's own pipeline; no list of frames is stacked at the end."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    slots: dict[int, list[int]] = {}
    for k, i in enumerate(order):
        slots.setdefault(i, []).append(k)
    filled = np.zeros(len(order), bool)
    out, size, rot = None, None, 0
    local = threading.local()

    def convert(frame, at: list[int]) -> None:
        direct = getattr(local, "direct", False)
        if direct is False:  # this thread's writer straight into ``out`` (None: not for this stream)
            direct = local.direct = rgb_writer(frame, *size)
        if direct is None or not direct(frame, out[at[0]]):
            rgb = getattr(local, "rgb", None)
            if rgb is None:
                rgb = local.rgb = VideoReformatter()
            # threads=1: these threads are the parallelism (swscale's own slices would oversubscribe)
            out[at[0]] = rgb.reformat(frame, format="rgb24", width=size[0], height=size[1], threads=1).to_ndarray()
        for k in at[1:]:  # a frame wanted twice (resampled to a higher rate)
            out[k] = out[at[0]]
        filled[at] = True

    with ThreadPoolExecutor(CONVERT_THREADS, thread_name_prefix="sama-rgb") as pool:
        pending: list = []
        for i, frame in _wanted_frames(container, vs, set(order)):
            rot = _rotation(vs, frame)
            if out is None:
                size = _fit(frame.width, frame.height, max_side)
                out = np.empty((len(order), size[1], size[0], 3), np.uint8)
            pending.append(pool.submit(convert, frame, slots[i]))
            if len(pending) > IN_FLIGHT:
                pending.pop(0).result()
        for p in pending:
            p.result()
    return out, filled, rot


SEEK_GAP = 48  # frames: a wanted frame at least this far ahead is reached by a keyframe seek


def _wanted_frames(container, vs, wanted: set[int]) -> Iterator[tuple[int, "av.VideoFrame"]]:
    """(index, frame) of the ``wanted`` frames, in order. Decodes sequentially, which is exact for
    any file; a wanted frame far ahead is reached by seeking to the keyframe before it instead of
    decoding every frame in between, but only for a constant frame rate (the stream's base rate is
    its average rate, and every frame decoded so far sits where its timestamp says) and only if the
    seek lands at or before the frame (else it decodes on from the start)."""
    fps, tb, start = float(vs.average_rate or 0), float(vs.time_base or 0), vs.start_time or 0

    def index_of(frame) -> int | None:
        return round((frame.pts - start) * tb * fps) if frame.pts is not None else None

    base = float(vs.guessed_rate or vs.base_rate or 0)  # ffmpeg's r_frame_rate: equals the average only at CFR
    cfr = fps > 0 and tb > 0 and abs(base - fps) <= 0.01 * fps
    todo = sorted(wanted)
    i, sought, frames = -1, -1, container.decode(vs)
    while todo:
        if cfr and i >= 0 and todo[0] - i > SEEK_GAP and sought != todo[0]:
            sought = todo[0]
            container.seek(start + int(todo[0] / (fps * tb)), stream=vs, backward=True)
            frames = container.decode(vs)
            frame = next(frames, None)
            landed = index_of(frame) if frame is not None else None
            if landed is None or landed > todo[0]:  # not a usable landing: decode on from the start
                container.seek(start, stream=vs, backward=True)
                cfr, i, frames = False, -1, container.decode(vs)
                continue
            i = landed
        else:
            frame = next(frames, None)
            if frame is None:
                return
            i += 1
            if cfr and index_of(frame) != i:
                cfr = False
        if i == todo[0]:
            todo.pop(0)
            yield i, frame


def read_clip(uri: str, max_frames: int, max_side: int | None = None) -> "np.ndarray":
    """The first ``max_frames`` frames, consecutive (an edit keeps the motion); an image gives one."""
    if media_kind(uri) == "image":
        return read_image(uri, max_side)[None]
    return read_frames(uri, indices=list(range(max_frames)), max_side=max_side)


# --- writing (edited videos of the service and the evaluation job) --------------------------


def encode_mp4(frames: "np.ndarray", fps: float, crf: int = 18) -> bytes:
    """(T, H, W, 3) uint8 -> H.264 yuv420p mp4 (index first, so browsers play while loading).

    yuv420p needs even sides: an odd row/column is cropped (buckets are multiples of 16 anyway).
    """
    import tempfile

    import numpy as np

    t, h, w = frames.shape[:3]
    h2, w2 = h - h % 2, w - w % 2
    if h2 < 2 or w2 < 2 or t < 1:
        raise ValueError(f"cannot encode a {t}x{h}x{w} clip")
    frames = np.ascontiguousarray(frames[:, :h2, :w2, :3])
    rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(16)
    # faststart rewrites the file after muxing, which needs a real file, not a BytesIO.
    with tempfile.TemporaryDirectory(prefix="sama-encode-") as d:
        path = os.path.join(d, "out.mp4")
        with av.open(path, "w", options={"movflags": "faststart"}) as c:
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = w2, h2, "yuv420p"
            s.options = {"preset": "veryfast", "crf": str(crf)}
            for frame in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        with open(path, "rb") as f:
            return f.read()


def write_mp4(uri: str, frames: "np.ndarray", fps: float, crf: int = 18) -> str:
    """Encode ``frames`` and write them atomically to a local path or ``s3://`` URI."""
    storage.write_bytes(uri, encode_mp4(frames, fps, crf))
    return uri
