"""The fetch job: media that datasets only reference -> files under their stable names + a fetch table.

Koala-36M lists YouTube videos with ``[start, end]`` spans; Pico-Banana-400K lists
Open Images / Flickr URLs. Passes (Ray Data tasks, each idempotent):

0. tars:  (Pico-Banana with ``open_images_tars``) one task per archive indexes its
          member names, so sources the user already has are copied, not downloaded.
1. list:  one task per metadata file writes its items as listing chunks of about
          ``shard_size`` items under ``_work/listing`` (+ a ``.done.json`` marker).
2. fetch: one task per chunk not finished yet downloads, cuts and writes its items
          (see ``fetcher``) and then writes the chunk's fetch-table part.

A part is finished when it exists and holds no failure whose reason is in
``retry_failed``; a rerun therefore redoes only transient failures, and a run killed
midway resumes: files it already wrote are recorded from storage, never re-fetched.

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
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from sama import storage
from sama.config import JobConfig
from sama.schemas import FETCH, validate

from ..common import count_table, map_tasks
from .fetcher import FetchConfig, Fetcher, part_name
from .limits import Gate, start_gate_actor
from .sources import ITEM, KoalaSource, PicoSource, chunked, tar_index_rows

log = logging.getLogger(__name__)


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


def _stamp(uri: str) -> str:
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    return f"{uri}|{info.size}|{info.mtime_ns}"


# --- pass 0: tar index --------------------------------------------------------------------------


def index_tar(item: dict) -> dict:
    if not storage.exists(item["index"]):
        rows = tar_index_rows(item["archive"])
        storage.write_parquet(item["index"], pa.Table.from_pylist(rows, schema=pa.schema([("name", pa.string()), ("uri", pa.string())])))
    return {"result": json.dumps(item["index"])}


def load_tar_index(indexes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for uri in indexes:
        t = storage.read_parquet(uri)
        for name, member in zip(t["name"].to_pylist(), t["uri"].to_pylist()):
            out.setdefault(name, member)  # the first archive holding a name wins
    return out


# --- pass 1: listing ----------------------------------------------------------------------------


def list_unit(item: dict, work: str, cfg: FetchConfig, tar_indexes: list[str]) -> dict:
    """One metadata file -> listing chunks + a done marker (skipped if done)."""
    src = next(s for s in sources(cfg) if s.name == item["dataset"])
    base = storage.join(work, "listing", item["dataset"], item["unit_id"])
    marker = base + ".done.json"
    if storage.exists(marker):
        return {"result": storage.read_text(marker)}
    members = load_tar_index(tar_indexes) if isinstance(src, PicoSource) and tar_indexes else {}
    chunks, n = [], 0
    for k, chunk in enumerate(chunked(src.items(item["unit"]), cfg.shard_size)):
        for it in chunk:
            if it["id"] in members and not it["error"]:
                it.update(fetch_url=members[it["id"]], method="tar")
        uri = f"{base}-{k:05d}.parquet"
        storage.write_parquet(uri, pa.Table.from_pylist(chunk, schema=ITEM))
        chunks.append(uri)
        n += len(chunk)
    done = {"dataset": item["dataset"], "unit": item["unit"], "chunks": chunks, "items": n}
    storage.write_text(marker, json.dumps(done))
    return {"result": json.dumps(done)}


# --- pass 2: fetching ---------------------------------------------------------------------------


def part_uri(output: str, chunk: str) -> str:
    dataset, name = part_name(chunk)
    return storage.join(output, "fetch", dataset, name)


def part_done(uri: str, retry: list[str]) -> bool:
    if not storage.exists(uri):
        return False
    t = storage.read_parquet(uri, columns=["status", "error"])
    failed = t.filter(pc.equal(t["status"], "failed"))["error"].to_pylist()
    return not any(e in retry for e in failed)


def fetch_chunk(item: dict, output: str, cfg: FetchConfig, gate) -> dict:
    """Pass 2 task: fetch one listing chunk, then write its fetch-table part (last)."""
    uri = part_uri(output, item["chunk"])
    items = storage.read_parquet(item["chunk"]).to_pylist()
    prior = {r["id"]: r for r in storage.read_parquet(uri).to_pylist()} if storage.exists(uri) else {}
    fetcher = Fetcher(cfg, Gate(gate))
    rows = fetcher.run(items, prior)
    storage.write_parquet(uri, FETCH.table(rows))
    stats = {"chunk": item["chunk"], "rows": len(rows), "requests": fetcher.requests, "fetched": fetcher.fetched,
             "failed": sum(1 for r in rows if r["status"] == "failed")}
    return {"result": json.dumps(stats)}


# --- the job ------------------------------------------------------------------------------------


def prune_stale(output: str, chunks: list[str]) -> list[str]:
    """Delete fetch-table parts no current listing chunk produces (the metadata or config
    changed), so the table holds exactly the current items. Media files are kept."""
    current = {part_name(c) for c in chunks}
    removed = [f for f in storage.list_files(storage.join(output, "fetch"), ".parquet") if part_name(f) not in current]
    for f in removed:
        storage.delete(f)
    if removed:
        log.warning("fetch: removed %d part(s) of an earlier listing, e.g. %s", len(removed), removed[0])
    return removed


def summarize(output: str, datasets: list[str]) -> dict:
    summary: dict[str, dict] = {}
    for name in datasets:
        files = storage.list_files(storage.join(output, "fetch", name), ".parquet")
        t = pa.concat_tables([storage.read_parquet(f, columns=["status", "error", "bytes"]) for f in files]) if files else None
        ok = failed = nbytes = 0
        reasons: Counter[str] = Counter()
        if t is not None:
            status = t["status"].to_pylist()
            ok, failed = status.count("ok"), status.count("failed")
            reasons.update(e for s, e in zip(status, t["error"].to_pylist()) if s == "failed")
            nbytes = int(pc.sum(t["bytes"]).as_py() or 0)
        summary[name] = {"ok": ok, "failed": failed, "bytes": nbytes, "reasons": dict(sorted(reasons.items()))}
    return summary


def format_summary(summary: dict) -> str:
    return count_table(summary, {"ok": lambda s: s["ok"], "failed": lambda s: s["failed"],
                                 "MB": lambda s: s["bytes"] / 1e6})


def run(cfg: FetchJobConfig) -> dict:
    fc = cfg.fetch
    srcs = sources(fc)
    if not srcs:
        raise ValueError("fetch: nothing to fetch; set fetch.koala.root and/or fetch.pico.root")
    work = storage.join(cfg.output, "_work")

    # 0. index the Open Images archives the user already has
    tar_indexes: list[str] = []
    if fc.pico is not None and fc.pico.open_images_tars:
        archives = storage.list_files(fc.pico.open_images_tars, ".tar")
        if not archives:
            raise ValueError(f"fetch.pico.open_images_tars: no .tar files under {fc.pico.open_images_tars}")
        items = [{"archive": a, "index": storage.join(work, "tars", storage.content_digest(_stamp(a)) + ".parquet")} for a in archives]
        tar_indexes = map_tasks(items, index_tar, fc.task_cpus, "tars")  # the index files' URIs

    # 1. list every metadata file; the unit id changes with the file and with what decides its items
    items = []
    for s in srcs:
        scfg = json.dumps(dataclasses.asdict(s.cfg), sort_keys=True)
        for unit in s.units():
            stem = posixpath.basename(unit).split(".")[0][:40]
            uid = storage.content_digest(_stamp(unit), scfg, json.dumps(fc.ytdlp.hosts), str(fc.shard_size),
                                         *(tar_indexes if s.name == "pico_banana" else []), n=10)
            items.append({"dataset": s.name, "unit": unit, "unit_id": f"{stem}-{uid}"})
    listed = map_tasks(items, partial(list_unit, work=work, cfg=fc, tar_indexes=tar_indexes), fc.task_cpus, "list")
    chunks = sorted(c for d in listed for c in d["chunks"])
    prune_stale(cfg.output, chunks)

    # 2. fetch every chunk not finished yet, under one job-wide per-host gate
    todo = [{"chunk": c} for c in chunks if fc.recheck or not part_done(part_uri(cfg.output, c), fc.retry_failed)]
    gate = start_gate_actor(fc.hosts) if todo else None
    done = map_tasks(todo, partial(fetch_chunk, output=cfg.output, cfg=fc, gate=gate), fc.task_cpus, "fetch")

    summary = {"datasets": summarize(cfg.output, [s.name for s in srcs]), "parts": len(chunks), "parts_run": len(todo),
               "requests": sum(d["requests"] for d in done), "fetched": sum(d["fetched"] for d in done)}
    storage.write_text(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2))
    print(format_summary(summary["datasets"]))
    print(f"this run: {summary['fetched']} fetched, {summary['requests']} requests, parts run {len(todo)}/{len(chunks)}")
    print(f"fetch table: {storage.join(cfg.output, 'fetch')}")
    return summary


def read_fetch_table(uri: str) -> pa.Table:
    """The fetch table under ``uri`` (all datasets), validated against the schema."""
    return validate(storage.read_parquet(uri), FETCH, where=uri)
