"""The fetch job: media that datasets only reference -> files under their stable names + a fetch table.

Koala-36M lists YouTube videos with ``[start, end]`` spans; Pico-Banana-400K lists
Open Images / Flickr URLs. Stages on the stage runner (``pipelines/stage.py``):

0. tars:  (Pico-Banana with ``open_images_tars``) a part per archive indexes its member
          names, so sources the user already has are copied, not downloaded.
1. list:  a part per metadata file writes its items as one listing file, a row group per
          chunk of about ``shard_size`` items (a chunk never splits one video's spans).
2. fetch: a part per chunk downloads, cuts and writes its items (see ``fetcher``), then
          its fetch-table part.

A fetch part is finished when it holds no failure whose reason is in ``retry_failed``;
a rerun therefore redoes only transient failures, and a run killed midway resumes:
files it already wrote are recorded from storage, never re-fetched.

Output layout under ``output``::

    fetch/<dataset>/<unit>-<chunk>.parquet   # schemas.FETCH, one row per item
    summary.json                             # ok / failed / reasons per dataset
    _work/listing/..., _work/tars/...        # resumable intermediate state

and the media itself under ``koala.clips`` (default ``<koala.root>/clips``) and
``pico.sources`` (default ``<pico.root>/sources``), where the ingest readers look.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from sama import storage
from sama.config import JobConfig, JobEntry
from sama.schemas import FETCH, FETCH_ITEMS, TAR_INDEX

from ..stage import Marker, Part, Stage, Table, count_table, dry_run_stage, run_stage
from .fetcher import FetchConfig, Fetcher
from .limits import Gate, start_gate_actor
from .sources import KoalaSource, PicoSource, chunked, tar_index_rows


@dataclass
class FetchJobConfig(JobConfig):
    job: str = "fetch"
    output: str = "outputs/fetch"
    fetch: FetchConfig = field(default_factory=FetchConfig)


def sources(cfg: FetchConfig) -> list[KoalaSource | PicoSource]:
    out: list[KoalaSource | PicoSource] = []
    if cfg.koala is not None:
        out.append(KoalaSource(cfg.koala, cfg.ytdlp.hosts))
    if cfg.pico is not None:
        out.append(PicoSource(cfg.pico, cfg.ytdlp.hosts))
    return out


class TarStage(Stage):
    """A part per Open Images archive the user has: its member names -> tar:// URIs."""

    name = "tars"
    tables = {"index": Table(TAR_INDEX, "_work/tars")}

    def __init__(self, folder: str, output: str, task_cpus: float):
        super().__init__(output)
        self.folder, self.task_cpus = folder, task_cpus

    def plan(self) -> list[Part]:
        archives = storage.list_files(self.folder, ".tar")
        if not archives:
            raise ValueError(f"fetch.pico.open_images_tars: no .tar files under {self.folder}")
        return [Part(storage.content_digest(a, storage.stamp(a)), a) for a in archives]

    def process(self, part: Part) -> dict:
        return {"index": tar_index_rows(part.spec)}


class ListStage(Stage):
    """A part per metadata file: what to fetch, one row group per chunk."""

    name = "list"
    tables = {"items": Table(FETCH_ITEMS, "_work/listing")}

    def __init__(self, cfg: FetchConfig, output: str, tar_indexes: list[str]):
        super().__init__(output)
        self.cfg, self.tar_indexes, self.task_cpus = cfg, tar_indexes, cfg.task_cpus

    def plan(self) -> list[Part]:
        parts = []
        for src in sources(self.cfg):
            decisive = json.dumps(dataclasses.asdict(src.cfg), sort_keys=True)
            tars = self.tar_indexes if src.name == "pico_banana" else []
            for unit in src.units():  # the name changes with the file and with what decides its items
                stem = posixpath.basename(unit).split(".")[0][:40]
                digest = storage.content_digest(
                    unit,
                    storage.stamp(unit),
                    decisive,
                    json.dumps(self.cfg.ytdlp.hosts),
                    str(self.cfg.shard_size),
                    *tars,
                    n=10,
                )
                parts.append(Part(f"{src.name}/{stem}-{digest}", (src, unit)))
        return parts

    def process(self, part: Part) -> dict:
        src, unit = part.spec
        members = load_tar_index(self.tar_indexes) if isinstance(src, PicoSource) and self.tar_indexes else {}
        groups = []
        for chunk in chunked(src.items(unit), self.cfg.shard_size):
            for item in chunk:
                if item["id"] in members and not item["error"]:
                    item.update(fetch_url=members[item["id"]], method="tar")
            groups.append(FETCH_ITEMS.table(chunk))
        return {"items": groups, "meta": {"dataset": src.name, "unit": unit, "groups": len(groups)}}


def load_tar_index(indexes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for uri in indexes:
        table = storage.read_parquet(uri)
        for name, member in zip(table["name"].to_pylist(), table["uri"].to_pylist()):
            out.setdefault(name, member)  # the first archive holding a name wins
    return out


@dataclass(frozen=True)
class Chunk:
    listing: str
    group: int


class FetchStage(Stage):
    """A part per listing chunk: download, cut and write its items, then its fetch-table part."""

    name = "fetch"
    tables = {
        "fetch": Table(
            FETCH,
            "fetch",
            status_column="status",
            statuses=("ok", "failed"),
            reason_column="error",
            ok=("ok",),
            totals=("bytes",),
        )
    }

    def __init__(self, cfg: FetchConfig, output: str, listed: dict[str, Marker]):
        super().__init__(output)
        self.cfg, self.listed, self.task_cpus = cfg, listed, cfg.task_cpus
        self.gate: Any = None

    def inputs(self) -> list[tuple[str, str]]:
        """The metadata roots, digested by what was listed there (names carry the files' stamps)."""
        roots = [c.root for c in (self.cfg.koala, self.cfg.pico) if c is not None]
        return [(r, storage.content_digest(*sorted(self.listed), n=16)) for r in roots]

    def plan(self) -> list[Part]:
        listing = ListStage.tables["items"]
        return [
            Part(f"{name}-{g:05d}", Chunk(listing.uri(self.output, name), g))
            for name, marker in sorted(self.listed.items())
            for g in range(marker.meta["groups"])
        ]

    def finished(self, marker: Marker) -> bool:
        return not self.cfg.recheck and not marker.reason_count(*self.cfg.retry_failed)

    def execute(self, todo: list[Part]) -> list[Marker]:
        self.gate = start_gate_actor(self.cfg.hosts)  # one job-wide per-host gate
        return super().execute(todo)

    def process(self, part: Part) -> dict:
        items = storage.read_row_group(part.spec.listing, part.spec.group).to_pylist()
        uri = self.tables["fetch"].uri(self.output, part.name)
        prior = {r["id"]: r for r in storage.read_parquet(uri).to_pylist()} if storage.exists(uri) else {}
        fetcher = Fetcher(self.cfg, Gate(self.gate))
        rows = fetcher.run(items, prior)
        return {"fetch": FETCH.table(rows), "stats": {"requests": fetcher.requests, "fetched": fetcher.fetched}}

    def summarize(self, summary: dict, markers) -> None:
        for src in sources(self.cfg):  # every dataset asked for, even with nothing listed
            summary["datasets"].setdefault(src.name, {"ok": 0, "failed": 0, "bytes": 0, "reasons": {}})
        summary.setdefault("requests", 0)
        summary.setdefault("fetched", 0)

    def report(self, summary: dict) -> None:
        print(
            count_table(
                summary["datasets"],
                {"ok": lambda s: s["ok"], "failed": lambda s: s["failed"], "MB": lambda s: s["bytes"] / 1e6},
            )
        )
        print(
            f"this run: {summary['fetched']} fetched, {summary['requests']} requests, "
            f"parts run {summary['parts_run']}/{summary['parts']}"
        )
        print(f"fetch table: {storage.join(self.output, 'fetch')}")


def stages(cfg: FetchJobConfig, tar_indexes: list[str]) -> ListStage:
    if not sources(cfg.fetch):
        raise ValueError("fetch: nothing to fetch; set fetch.koala.root and/or fetch.pico.root")
    return ListStage(cfg.fetch, cfg.output, tar_indexes)


def run(cfg: FetchJobConfig) -> dict:
    fc = cfg.fetch
    tar_indexes: list[str] = []
    if fc.pico is not None and fc.pico.open_images_tars:  # index the archives the user already has
        tars = TarStage(fc.pico.open_images_tars, cfg.output, fc.task_cpus)
        done = run_stage(tars, write_summary=False).markers
        tar_indexes = sorted(tars.tables["index"].uri(cfg.output, name) for name in done)
    listed = run_stage(stages(cfg, tar_indexes), write_summary=False).markers
    return run_stage(FetchStage(fc, cfg.output, listed)).summary


def dry_run(cfg: FetchJobConfig) -> list[str]:
    return dry_run_stage(stages(cfg, []))


JOB = JobEntry(FetchJobConfig, run, dry_run)
