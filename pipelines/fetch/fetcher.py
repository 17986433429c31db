"""Fetch a list of items (one listing chunk) -> one fetch-table row per item.

Items sharing a ``group`` (every span of one video) share one download; groups run
on a thread pool, each download under the job-wide per-host gate. For each item:

1. settled already? An unusable row, a span over the cap, an earlier ``ok`` whose file
   is still there, or an earlier failure not in ``retry_failed`` keep their row; a
   file already on storage without a row (a run killed after writing it) is recorded
   as ``ok`` from storage. None of these makes a request.
2. otherwise download (plain HTTP, yt-dlp, or a copy out of a local tar archive) into
   a private temp folder, verify (probe), cut each span (videos), and write each output
   with ``storage.write_bytes`` (atomic: a reader never sees half a file).

Every failure becomes a row with a reason; nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sama import storage
from sama.media import MediaError, probe
from sama.schemas import FETCH

from .cut import CutConfig, cut_clip, probe_source
from .download import Downloaded, FetchError, HttpConfig, host_of, http_download, with_retries
from .limits import Gate, HostLimitsConfig
from .sources import KoalaFetchConfig, PicoFetchConfig
from .ytdlp import YtDlpConfig, ytdlp_download

DEFAULT_RETRY = ["timeout", "connection", "http_429", "http_5xx", "truncated", "download_failed"]


@dataclass
class FetchConfig:
    koala: KoalaFetchConfig | None = None  # null: not fetched
    pico: PicoFetchConfig | None = None
    shard_size: int = 64  # items per listing chunk / fetch-table part (the unit of resume)
    threads: int = 8  # downloads in flight per task (the per-host gate still applies)
    task_cpus: float = 1.0  # CPUs per Ray task (ffmpeg cuts use them)
    tmp_dir: str | None = None  # local scratch for downloads in progress (default: the system temp folder)
    retry_failed: list[str] = field(default_factory=lambda: list(DEFAULT_RETRY))  # reasons a rerun tries again
    recheck: bool = False  # rerun finished parts too, re-fetching any output that has gone missing
    http: HttpConfig = field(default_factory=HttpConfig)
    hosts: HostLimitsConfig = field(default_factory=HostLimitsConfig)
    ytdlp: YtDlpConfig = field(default_factory=YtDlpConfig)
    cut: CutConfig = field(default_factory=CutConfig)

    def validate(self) -> None:
        if self.shard_size < 1 or self.threads < 1:
            raise ValueError("shard_size and threads must be >= 1")
        from sama.schemas import FETCH_ERRORS

        unknown = sorted(set(self.retry_failed) - set(FETCH_ERRORS))
        if unknown:
            raise ValueError(f"retry_failed: unknown reason(s) {unknown} (known: {list(FETCH_ERRORS)})")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Fetcher:
    def __init__(self, cfg: FetchConfig, gate: Gate, now: Callable[[], str] = utc_now):
        self.cfg = cfg
        self.gate = gate
        self.now = now
        self._lock = threading.Lock()
        self.requests = 0  # HTTP / yt-dlp attempts made
        self.fetched = 0  # files written by this fetcher

    def _count(self, requests: int = 0, fetched: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.fetched += fetched

    # --- rows ------------------------------------------------------------------------

    def _row(self, it: dict, status: str, **kw) -> dict:
        row = dict.fromkeys(FETCH.schema.names)
        row |= {
            "id": it["id"],
            "dataset": it["dataset"],
            "status": status,
            "source_url": it["source_url"],
            "fetch_url": it["fetch_url"],
            "method": it["method"],
            "output_uri": it["output_uri"],
            "start": it["start"],
            "end": it["end"],
            "row": it["row"],
            "fetched_at": self.now(),
            "attempts": 0,
        }
        row.update(kw)
        return row

    def _failed(self, it: dict, e: FetchError, attempts: int = 0) -> dict:
        return self._row(it, "failed", error=e.reason, detail=f"{e.detail} [{it['row']}]", attempts=attempts)

    def _settled(self, it: dict, prior: dict | None) -> dict | None:
        """A row for an item that needs no request, else None."""
        if it["error"]:
            return self._row(it, "failed", error=it["error"], detail=it["detail"])
        if it["kind"] == "clip" and it["end"] - it["start"] > self.cfg.cut.max_clip_seconds:
            span = it["end"] - it["start"]
            return self._failed(
                it,
                FetchError("too_long", f"{it['id']}: span is {span:.1f}s, cap is {self.cfg.cut.max_clip_seconds:.0f}s"),
            )
        if prior is not None and prior["status"] == "failed" and prior["error"] not in self.cfg.retry_failed:
            return prior
        if storage.exists(it["output_uri"]):
            if prior is not None and prior["status"] == "ok":
                return prior
            data = storage.read_bytes(it["output_uri"])
            duration = None
            if it["kind"] == "clip":
                with contextlib.suppress(MediaError):
                    duration = probe(it["output_uri"]).duration
            return self._row(
                it,
                "ok",
                bytes=len(data),
                sha256=sha256_of(data),
                duration=duration,
                detail="already on storage (written by an earlier run)",
            )
        return None

    # --- work ------------------------------------------------------------------------

    def run(self, items: list[dict], prior: dict[str, dict] | None = None) -> list[dict]:
        """One row per item, in order."""
        prior = prior or {}
        groups: dict[str, list[dict]] = {}
        for it in items:
            groups.setdefault(it["group"], []).append(it)
        with ThreadPoolExecutor(min(self.cfg.threads, max(1, len(groups)))) as pool:
            done: dict[str, dict] = {}
            for rows in pool.map(lambda g: self._group(g, prior), groups.values()):
                done.update((r["id"], r) for r in rows)
        return [done[it["id"]] for it in items]

    def _group(self, items: list[dict], prior: dict[str, dict]) -> list[dict]:
        rows, todo = [], []
        for it in items:
            r = self._settled(it, prior.get(it["id"]))
            if r is not None:
                rows.append(r)
            else:
                todo.append(it)
        if todo:
            work = tempfile.mkdtemp(prefix="sama-fetch-", dir=self.cfg.tmp_dir)
            try:
                rows += self._fetch(todo, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return rows

    def _download(self, it: dict, work: str) -> tuple[Downloaded, int]:
        url, method = it["fetch_url"], it["method"]
        ext = os.path.splitext(it["id"])[1] or (".mp4" if it["kind"] == "clip" else ".jpg")
        if method == "tar":  # a member of an archive the user already has: no request
            data = storage.read_bytes(url)
            path = os.path.join(work, "download" + ext)
            with open(path, "wb") as f:
                f.write(data)
            return Downloaded(path, len(data), sha256_of(data), url), 0
        n = [0]

        def attempt() -> Downloaded:
            n[0] += 1
            self._count(requests=1)
            if method == "ytdlp":
                sub = os.path.join(work, f"try{n[0]}")
                os.makedirs(sub)
                return ytdlp_download(url, sub, self.cfg.ytdlp, self.cfg.http)
            return http_download(url, os.path.join(work, f"download{n[0]}{ext}"), self.cfg.http)

        return with_retries(attempt, self.cfg.http, lambda: self.gate.slot(host_of(url)))

    def _fetch(self, todo: list[dict], work: str) -> list[dict]:
        first = todo[0]
        try:
            dl, attempts = self._download(first, work)
        except FetchError as e:
            return [self._failed(it, e, e.attempts) for it in todo]
        if first["kind"] == "image":
            return [self._image(it, dl, attempts) for it in todo]
        try:
            source = probe_source(dl.path, first["fetch_url"])
            if source.duration > self.cfg.ytdlp.max_video_seconds:
                raise FetchError(
                    "too_long",
                    f"{first['fetch_url']}: video is {source.duration:.0f}s, "
                    f"cap is {self.cfg.ytdlp.max_video_seconds:.0f}s",
                )
        except FetchError as e:
            return [self._failed(it, e, attempts) for it in todo]
        rows = []
        for i, it in enumerate(todo):
            clip_path = os.path.join(work, f"clip{i}.mp4")
            try:
                clip = cut_clip(dl.path, clip_path, it["start"], it["end"], source, self.cfg.cut, it["id"])
                with open(clip_path, "rb") as f:
                    data = f.read()
                storage.write_bytes(it["output_uri"], data)
                self._count(fetched=1)
                rows.append(
                    self._row(
                        it, "ok", bytes=len(data), sha256=sha256_of(data), duration=clip.duration, attempts=attempts
                    )
                )
            except FetchError as e:
                rows.append(self._failed(it, e, attempts))
        return rows

    def _image(self, it: dict, dl: Downloaded, attempts: int) -> dict:
        try:
            probe(dl.path)  # decodes it: a cut-off or non-image body fails here, not in training
        except MediaError as e:
            reason = "truncated" if e.reason in ("truncated", "empty_file") else "undecodable"
            return self._failed(it, FetchError(reason, f"{it['fetch_url']}: {e.detail}"), attempts)
        with open(dl.path, "rb") as f:
            data = f.read()
        storage.write_bytes(it["output_uri"], data)
        self._count(fetched=1)
        return self._row(it, "ok", bytes=len(data), sha256=dl.sha256 or sha256_of(data), attempts=attempts)
