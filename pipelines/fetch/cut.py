"""Cut a ``[start, end]`` span out of a downloaded video with ffmpeg, and check the result.

Frame accuracy: ``-ss`` before ``-i`` seeks the *input* to the keyframe before
``start``; with re-encoding, ffmpeg then decodes from that keyframe and drops every
frame before ``start``, so the clip begins on the exact frame (stream copy cannot:
its cut snaps to a keyframe, possibly seconds early). ``reencode: false`` trades that
accuracy for speed. Output is H.264 / yuv420p / even sides / faststart, which every
decoder downstream reads.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from sama.media import MediaError, MediaInfo, ProbeConfig, probe

from .download import FetchError


@dataclass
class CutConfig:
    reencode: bool = True  # false: stream copy (fast, but the cut snaps to keyframes)
    codec: str = "libx264"
    crf: int = 18
    preset: str = "veryfast"
    keep_audio: bool = False  # T2V clips need only the picture
    threads: int = 2  # ffmpeg threads per cut
    max_clip_seconds: float = 120.0  # longer spans are not cut (too_long)
    tolerance: float = 0.1  # seconds (+ one frame) a cut clip's duration may differ from its span
    timeout: float = 600.0  # seconds per ffmpeg run
    ffmpeg: str = "ffmpeg"

    def validate(self) -> None:
        if self.max_clip_seconds <= 0 or self.tolerance < 0:
            raise ValueError("max_clip_seconds must be > 0 and tolerance >= 0")


def ffmpeg_args(src: str, dst: str, start: float, end: float, cfg: CutConfig) -> list[str]:
    args = [
        cfg.ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-ss",
        f"{start:.3f}",
        "-i",
        src,
        "-t",
        f"{end - start:.3f}",
        "-map",
        "0:v:0",
    ]
    if cfg.keep_audio:
        args += ["-map", "0:a:0?"]
    if cfg.reencode:
        args += [
            "-c:v",
            cfg.codec,
            "-preset",
            cfg.preset,
            "-crf",
            str(cfg.crf),
            "-pix_fmt",
            "yuv420p",
            "-vf",
            "scale=trunc(iw/2)*2:trunc(ih/2)*2",
            "-threads",
            str(cfg.threads),
        ]
        args += ["-c:a", "aac"] if cfg.keep_audio else ["-an"]
    else:
        args += ["-c", "copy"] + ([] if cfg.keep_audio else ["-an"])
    return args + ["-movflags", "+faststart", "-f", "mp4", dst]


# a source may come in any codec (the cut re-encodes it)
_ANY_CODEC = ProbeConfig(video_codecs=["h264", "hevc", "vp9", "vp8", "av1", "mpeg4", "mpeg2video", "mjpeg", "prores"])


def probe_source(path: str, url: str) -> MediaInfo:
    """The downloaded video's header; a file that stops early is ``truncated``."""
    try:
        return probe(path, _ANY_CODEC)
    except MediaError as e:
        reason = "truncated" if e.reason in ("truncated", "empty_file") else "undecodable"
        raise FetchError(reason, f"{url}: {e.detail}") from None


def cut_clip(src: str, dst: str, start: float, end: float, source: MediaInfo, cfg: CutConfig, what: str) -> MediaInfo:
    """Cut ``src[start:end]`` into ``dst`` and return the clip's probe; ``what`` names it in errors."""
    if start >= source.duration or end > source.duration + cfg.tolerance:
        raise FetchError("span_out_of_range", f"{what}: span {start:.3f}-{end:.3f}s, video is {source.duration:.3f}s")
    try:
        res = subprocess.run(
            ffmpeg_args(src, dst, start, end, cfg), capture_output=True, text=True, timeout=cfg.timeout
        )
    except subprocess.TimeoutExpired:
        raise FetchError("cut_failed", f"{what}: ffmpeg ran over {cfg.timeout:.0f}s") from None
    if res.returncode != 0:
        raise FetchError("cut_failed", f"{what}: ffmpeg exit {res.returncode}: {res.stderr.strip()[-300:]}")
    try:
        clip = probe(dst, _ANY_CODEC)
    except MediaError as e:
        raise FetchError("cut_failed", f"{what}: the cut clip does not read back: {e.detail}") from None
    want = end - start
    slack = cfg.tolerance + (1.0 / source.fps if source.fps else 0.0)
    if cfg.reencode and abs(clip.duration - want) > slack:
        raise FetchError("cut_failed", f"{what}: clip is {clip.duration:.3f}s, span is {want:.3f}s")
    return clip
