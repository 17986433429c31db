"""What to fetch: Koala-36M CSV rows and Pico-Banana JSONL records -> ``schemas.FETCH_ITEMS`` rows.

Output names are exactly those the ingest readers look for, so ingest reads the
fetched files directly: a Koala clip is ``<clips>/<videoID>_<start_ms>-<end_ms>.mp4``
(``sama.datasets.koala_clip_name``), a Pico-Banana source image is ``<sources>/<file name of
the URL>``. Rows that cannot be fetched at all become items carrying ``error=bad_record``
and a detail naming the file and line, so they land in the fetch table too.

Items that share a download (every span of one video, every record of one image)
share a ``group``; a listing chunk never splits a run of consecutive rows of one
group, so each video is downloaded once per chunk.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from sama import storage
from sama.datasets import KoalaReader, PicoBananaReader, koala_clip_name, parse_span
from sama.records import DatasetError, manifest_files, pick, read_csv, read_jsonl, require_columns
from sama.schemas import FETCH_ITEMS

from .ytdlp import route


@dataclass
class KoalaFetchConfig:
    root: str = ""  # folder holding Koala_36M_*.csv
    clips: str = ""  # where clips go (default ROOT/clips: where the ingest Koala reader looks)
    url_template: str | None = None  # fetch "{video_id}" from here instead of the CSV's url (a mirror)
    downloader: Literal["auto", "http", "ytdlp"] = "auto"  # auto: yt-dlp for video sites, else plain HTTP
    limit: int | None = None  # at most this many rows per CSV (debug runs)

    def validate(self) -> None:
        if not self.root:
            raise ValueError("root is empty")
        if self.url_template is not None and "{video_id}" not in self.url_template:
            raise ValueError(f"url_template {self.url_template!r} has no {{video_id}}")


@dataclass
class PicoFetchConfig:
    root: str = ""  # folder holding the JSONL manifests
    manifests: list[str] = field(default_factory=lambda: ["sft.jsonl"])
    sources: str = ""  # where source images go (default ROOT/sources: where the ingest reader looks)
    open_images_tars: str | None = (
        None  # a folder of .tar archives you already have: members named like the URL's file are copied, not downloaded
    )
    limit: int | None = None  # at most this many records per manifest (debug runs)

    def validate(self) -> None:
        if not self.root:
            raise ValueError("root is empty")


def _item(dataset: str, id: str, group: str, kind: str, row: str, **kw) -> dict:
    base = {"id": id, "dataset": dataset, "group": group, "kind": kind, "row": row}
    return {**{f: None for f in FETCH_ITEMS.schema.names}, **base, **kw}


def _bad(dataset: str, unit: str, line: int, detail: str) -> dict:
    row = f"{unit}:{line}"
    return _item(
        dataset, f"{posixpath.basename(unit)}:{line}", row, "none", row, error="bad_record", detail=f"{row}: {detail}"
    )


class KoalaSource:
    name = KoalaReader.name
    URL = ("url", "video_url", "youtube_url")

    def __init__(self, cfg: KoalaFetchConfig, ytdlp_hosts: list[str]):
        self.cfg = cfg
        self.root = storage.normalize(cfg.root)
        self.clips = storage.normalize(cfg.clips) if cfg.clips else storage.join(self.root, "clips")
        self.ytdlp_hosts = ytdlp_hosts

    def units(self) -> list[str]:
        files = [
            f
            for f in storage.list_files(self.root, ".csv", recursive=False)
            if posixpath.basename(f).startswith("Koala_36M")
        ]
        if not files:
            raise DatasetError(f"{self.name}: no Koala_36M_*.csv files found under {self.root}")
        return files

    def items(self, unit: str) -> Iterator[dict]:
        first = True
        seen: set[str] = set()  # a repeated row is fetched (and listed) once
        for n, (line, row) in enumerate(read_csv(unit)):
            if self.cfg.limit is not None and n >= self.cfg.limit:
                return
            if first:
                need = {k: v for k, v in KoalaReader.COLS.items() if k != "caption"}
                if self.cfg.url_template is None:
                    need["url"] = self.URL
                require_columns(list(row), need, unit)
                first = False
            vid, ts = pick(row, KoalaReader.COLS["videoID"]), pick(row, KoalaReader.COLS["timestamp"])
            if not vid or not ts:
                yield _bad(self.name, unit, line, "empty videoID or timestamp")
                continue
            try:
                start, end = parse_span(ts)
            except ValueError as e:
                yield _bad(self.name, unit, line, str(e))
                continue
            url = pick(row, self.URL) or f"https://www.youtube.com/watch?v={vid}"
            fetch_url = self.cfg.url_template.format(video_id=vid) if self.cfg.url_template else url
            method = route(fetch_url, self.ytdlp_hosts) if self.cfg.downloader == "auto" else self.cfg.downloader
            name = koala_clip_name(vid, start, end)
            if name in seen:
                continue
            seen.add(name)
            yield _item(
                self.name,
                name,
                vid,
                "clip",
                f"{unit}:{line}",
                source_url=url,
                fetch_url=fetch_url,
                method=method,
                output_uri=storage.join(self.clips, name),
                start=start,
                end=end,
            )


class PicoSource:
    name = PicoBananaReader.name

    def __init__(self, cfg: PicoFetchConfig, ytdlp_hosts: list[str]):
        self.cfg = cfg
        self.root = storage.normalize(cfg.root)
        self.sources = storage.normalize(cfg.sources) if cfg.sources else storage.join(self.root, "sources")

    def units(self) -> list[str]:
        return manifest_files(self.name, self.root, self.cfg.manifests)

    def items(self, unit: str) -> Iterator[dict]:
        seen: set[str] = set()  # many edits share a source image: fetch it once
        for n, (line, rec, raw) in enumerate(read_jsonl(unit)):
            if self.cfg.limit is not None and n >= self.cfg.limit:
                return
            if rec is None:
                yield _bad(self.name, unit, line, f"not a JSON object: {raw!r}")
                continue
            url = pick(rec, PicoBananaReader.SRC)
            if not url or not isinstance(url, str) or "://" not in url:
                yield _bad(self.name, unit, line, f"no source image URL; looked for {list(PicoBananaReader.SRC)}")
                continue
            name = posixpath.basename(url.split("?")[0])  # the ingest reader's naming
            if not name or name in seen:
                if not name:
                    yield _bad(self.name, unit, line, f"URL {url!r} has no file name")
                continue
            seen.add(name)
            yield _item(
                self.name,
                name,
                url,
                "image",
                f"{unit}:{line}",
                source_url=url,
                fetch_url=url,
                method="http",
                output_uri=storage.join(self.sources, name),
            )


def chunked(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """Chunks of about ``size`` items that never split a run of one group."""
    buf: list[dict] = []
    for it in items:
        if len(buf) >= size and it["group"] != buf[-1]["group"]:
            yield buf
            buf = []
        buf.append(it)
    if buf:
        yield buf


def tar_index_rows(archive: str) -> list[dict]:
    """(file name, member URI) of every regular member of one Open Images tar archive."""
    return [
        {"name": posixpath.basename(m), "uri": f"{archive}{storage.TAR_SEP}{m}"} for m in storage.tar_members(archive)
    ]
