"""One download, over plain HTTP(S), with the failure it ends in named.

A download streams into a local temp file chosen by the caller (never the output
location), so a partial file is never visible. Every way it can fail becomes a
:class:`FetchError` with a reason from ``schemas.FETCH_ERRORS``; ``retryable``
says whether trying again can help (5xx, 429, timeouts, dropped connections,
short bodies), never for 403 / 404 / 410 or a file over the cap.
:func:`with_retries` runs any attempt under the per-host gate with exponential
backoff and jitter, honouring a server's Retry-After.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlparse

T = TypeVar("T")

RETRYABLE = frozenset({"timeout", "connection", "http_429", "http_5xx", "truncated"})


class FetchError(Exception):
    """A fetch that failed: ``reason`` is a FETCH_ERRORS value, ``detail`` names the URL."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.attempts = 0  # set by with_retries

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE


@dataclass
class HttpConfig:
    timeout: float = 30.0  # seconds to connect, and the longest wait for the next bytes
    max_seconds: float = 900.0  # a whole download (slow-drip servers)
    max_retries: int = 4  # extra attempts after a retryable failure
    backoff_base: float = 1.0  # seconds; attempt k waits ~ base * 2^k, with full jitter
    backoff_max: float = 60.0
    max_retry_after: float = 300.0  # cap on a server's Retry-After
    max_bytes: int = 2 * 1024**3  # per downloaded file (a video before cutting, or an image)
    chunk_bytes: int = 1 << 20
    user_agent: str = "sama-fetch/0.1 (dataset research; respects Retry-After)"
    # a redirect to a URL containing one of these means "taken down" (Flickr's deleted-photo placeholder)
    removed_markers: list[str] = field(default_factory=lambda: ["photo_unavailable"])

    def validate(self) -> None:
        if self.timeout <= 0 or self.max_seconds <= 0:
            raise ValueError("timeout and max_seconds must be > 0")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")


@dataclass
class Downloaded:
    path: str
    bytes: int
    sha256: str
    final_url: str


def host_of(url: str) -> str:
    return (urlparse(url).hostname or "").lower()


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def http_status_error(code: int, url: str, headers=None, what: str = "") -> FetchError:
    detail = f"{url}: HTTP {code}{' ' + what if what else ''}"
    if code in (403, 404, 410, 429):
        return FetchError(f"http_{code}", detail, _retry_after(headers) if code == 429 else None)
    if code >= 500:
        return FetchError("http_5xx", detail, _retry_after(headers))
    return FetchError("http_error", detail)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in str(exc).lower()


def http_download(url: str, dest: str, cfg: HttpConfig) -> Downloaded:
    """One GET of ``url`` streamed into ``dest`` (removed again on any failure)."""
    req = urllib.request.Request(url, headers={"User-Agent": cfg.user_agent, "Accept-Encoding": "identity"})
    try:
        resp = urllib.request.urlopen(req, timeout=cfg.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        raise http_status_error(e.code, url, e.headers, str(e.reason or "")) from None
    except urllib.error.URLError as e:
        kind = "timeout" if _is_timeout(e.reason if isinstance(e.reason, BaseException) else e) else "connection"
        raise FetchError(kind, f"{url}: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise FetchError("timeout" if _is_timeout(e) else "connection", f"{url}: {e}") from None
    h, n = hashlib.sha256(), 0
    deadline = time.monotonic() + cfg.max_seconds
    try:
        with resp:
            final = resp.geturl()
            if any(m in final for m in cfg.removed_markers):
                raise FetchError("removed", f"{url}: redirected to a placeholder ({final})")
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > cfg.max_bytes:
                raise FetchError("too_large", f"{url}: {expected} bytes announced, cap is {cfg.max_bytes}")
            with open(dest, "wb") as f:
                while True:
                    try:
                        chunk = resp.read(cfg.chunk_bytes)
                    except http.client.IncompleteRead as e:
                        raise FetchError(
                            "truncated", f"{url}: body ended after {n + len(e.partial)} of {expected} bytes"
                        ) from None
                    except (OSError, http.client.HTTPException) as e:
                        raise FetchError(
                            "timeout" if _is_timeout(e) else "connection", f"{url}: after {n} bytes: {e}"
                        ) from None
                    if not chunk:
                        break
                    n += len(chunk)
                    if n > cfg.max_bytes:
                        raise FetchError("too_large", f"{url}: more than {cfg.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError("timeout", f"{url}: not done after {cfg.max_seconds:.0f}s ({n} bytes)")
                    h.update(chunk)
                    f.write(chunk)
            if expected is not None and n < expected:
                raise FetchError("truncated", f"{url}: body ended after {n} of {expected} bytes")
    except BaseException:
        if os.path.exists(dest):
            os.unlink(dest)
        raise
    return Downloaded(dest, n, h.hexdigest(), final)


def backoff(attempt: int, cfg: HttpConfig, retry_after: float | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: a server's Retry-After if given, else full jitter."""
    if retry_after is not None:
        return min(retry_after, cfg.max_retry_after)
    return random.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2**attempt))


def with_retries(
    attempt: Callable[[], T], cfg: HttpConfig, slot, sleep: Callable[[float], None] = time.sleep
) -> tuple[T, int]:
    """(result, attempts made). ``slot()`` is a context manager holding a per-host slot for
    one attempt; the wait between attempts happens outside it, so a backing-off download
    does not block the host for others."""
    for k in range(cfg.max_retries + 1):
        try:
            with slot():
                return attempt(), k + 1
        except FetchError as e:
            e.attempts = k + 1
            if not e.retryable or k == cfg.max_retries:
                raise
            sleep(backoff(k, cfg, e.retry_after))
    raise AssertionError("unreachable")
