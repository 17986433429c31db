"""Video-site downloads through yt-dlp, and which URLs go there.

yt-dlp's own retries are switched off so that one policy (``download.with_retries``,
under the per-host gate) governs every request; its errors are mapped onto the
fetch table's reasons by their message text (yt-dlp has no error codes).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from .download import Downloaded, FetchError, HttpConfig, host_of


@dataclass
class YtDlpConfig:
    hosts: list[str] = field(default_factory=lambda: ["youtube.com", "youtu.be", "vimeo.com", "dailymotion.com"])
    # video only (captions describe the picture); <= 720p keeps downloads small for 480p training
    format: str = "bv*[height<=720][ext=mp4]/bv*[height<=720]/b[height<=720]/bv*/b"
    max_video_seconds: float = 3600.0  # longer source videos are not downloaded (too_long)
    cookies: str | None = None  # a cookies.txt, for videos that need a login


def route(url: str, ytdlp_hosts: list[str]) -> str:
    """'ytdlp' for a video site (the host or a parent domain is listed), else 'http'."""
    host = host_of(url)
    return "ytdlp" if any(host == h or host.endswith("." + h) for h in ytdlp_hosts) else "http"


# (pattern in yt-dlp's message, reason); first match wins
_PATTERNS = [
    (r"HTTP Error 404", "http_404"),
    (r"HTTP Error 403", "http_403"),
    (r"HTTP Error 410", "http_410"),
    (r"HTTP Error 429|Too Many Requests", "http_429"),
    (r"HTTP Error 5\d\d", "http_5xx"),
    (r"available (in|from) your (country|location)|geo.?restrict|blocked it in your country", "geo_blocked"),
    (
        r"Sign in to confirm|age.?restricted|members.?only|Join this channel|requires (a )?login|cookies",
        "login_required",
    ),
    (r"removed|unavailable|Private video|no longer available|terminated|does not exist|deleted", "removed"),
    (r"max-filesize|larger than", "too_large"),
    (r"timed out|timeout", "timeout"),
    (
        r"Connection (refused|reset|aborted)|Unable to connect|Temporary failure|Network is unreachable"
        r"|RemoteDisconnected",
        "connection",
    ),
    (r"did not match the expected|incomplete|Content-Length", "truncated"),
]


def classify(message: str) -> str:
    for pattern, reason in _PATTERNS:
        if re.search(pattern, message, re.IGNORECASE):
            return reason
    return "download_failed"


class _Log:
    """Collects yt-dlp's messages instead of printing them (a task's log stays readable)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    info = debug

    def warning(self, msg: str) -> None:
        if "larger than max-filesize" in msg:
            self.errors.append(msg)

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def ytdlp_download(url: str, workdir: str, cfg: YtDlpConfig, http: HttpConfig) -> Downloaded:
    """Download ``url``'s video into ``workdir`` (a private temp folder)."""
    import yt_dlp

    logger = _Log()
    opts = {
        "outtmpl": os.path.join(workdir, "video.%(ext)s"),
        "format": cfg.format,
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": logger,
        "cachedir": False,
        "socket_timeout": http.timeout,
        "max_filesize": http.max_bytes,
        "overwrites": True,
        "continuedl": False,
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "file_access_retries": 0,
    }
    if cfg.cookies:
        opts["cookiefile"] = cfg.cookies
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=False)
            duration = (info or {}).get("duration")
            if duration and duration > cfg.max_video_seconds:
                raise FetchError("too_long", f"{url}: video is {duration:.0f}s, cap is {cfg.max_video_seconds:.0f}s")
            info = ydl.process_ie_result(info, download=True)
    except yt_dlp.utils.YoutubeDLError as e:
        msg = str(e) or "; ".join(logger.errors)
        reason = classify(msg)
        raise FetchError(reason, f"{url}: {msg.removeprefix('ERROR: ')[:300]}") from None
    paths = [d.get("filepath") for d in (info or {}).get("requested_downloads") or []]
    path = next((p for p in paths if p and os.path.exists(p)), None)
    if path is None:  # yt-dlp skips (no error) a file over max_filesize
        found = [p for p in glob.glob(os.path.join(workdir, "video.*")) if not p.endswith((".part", ".ytdl"))]
        if not found:
            why = "; ".join(logger.errors) or "no file was written"
            raise FetchError(classify(why) if logger.errors else "download_failed", f"{url}: {why[:300]}")
        path = found[0]
    size = os.path.getsize(path)
    return Downloaded(path, size, "", (info or {}).get("webpage_url") or url)
