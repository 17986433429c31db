"""The ingest job: every configured dataset -> one manifest table + one rejects table.

Two Ray Data passes, each a set of idempotent tasks whose outputs are named by
their content, so a rerun redoes nothing and a killed run resumes:

1. list:  one task per metadata file (CSV / JSON / JSONL / tar shard) writes its
          samples as listing chunks of ``shard_size`` rows under ``_work/listing``
          and, last, a ``.done.json`` marker.
2. probe: one task per listing chunk probes every sample's media (headers, first
          and last frames) with a thread pool and writes ``rejects/`` then
          ``manifest/`` part files (the manifest part is the completion marker).

Between the two, the driver finds duplicate sample ids across the whole listing
(the first occurrence is kept, the others are rejected as ``duplicate``).

Output layout under ``output``::

    manifest/<dataset>/<unit>-<chunk>.parquet   # schemas.MANIFEST
    rejects/<dataset>/<unit>-<chunk>.parquet    # schemas.REJECTS
    summary.json                                # counts per dataset, kept / rejected / reasons
    _work/listing/...                           # resumable intermediate state
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from sama import storage
from sama.config import JobConfig, from_dict
from sama.media import MediaError, MediaInfo, ProbeConfig, probe
from sama.schemas import MANIFEST, REJECTS, validate

from ..common import count_table, map_tasks
from .readers import READERS, DatasetsConfig, Reader

log = logging.getLogger(__name__)

LISTING = pa.schema(
    [
        ("sample_id", pa.string()), ("dataset", pa.string()), ("category", pa.string()), ("task", pa.string()),
        ("instruction", pa.string()), ("source_uri", pa.string()), ("target_uri", pa.string()),
        ("extra", pa.string()), ("reject_reason", pa.string()), ("reject_detail", pa.string()),
    ]
)


@dataclass
class IngestConfig:
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    shard_size: int = 512  # samples per listing chunk / output part
    probe_threads: int = 8  # concurrent probes inside one task (I/O bound on S3)
    task_cpus: float = 1.0  # CPUs reserved per Ray task
    max_frame_mismatch: float = 0.1  # |src - tgt| / max frames above this -> source_target_mismatch
    max_aspect_mismatch: float = 0.1  # relative aspect-ratio difference above this -> source_target_mismatch

    def validate(self) -> None:
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        if self.probe_threads < 1:
            raise ValueError("probe_threads must be >= 1")


@dataclass
class IngestJobConfig(JobConfig):
    job: str = "ingest"
    output: str = "outputs/ingest"
    ingest: IngestConfig = field(default_factory=IngestConfig)


# --- pass 1: listing ---------------------------------------------------------------------------


def _unit_id(reader: Reader, unit: str) -> str:
    fs, path = storage.filesystem(storage.split_member(unit)[0])
    info = fs.get_file_info(path)
    cfg = json.dumps(dataclasses.asdict(reader.cfg), sort_keys=True)
    stem = posixpath.basename(unit).split(".")[0][:40]
    return f"{stem}-{storage.content_digest(unit, str(info.size), str(info.mtime_ns), cfg, n=10)}"


def list_unit(item: dict, work: str) -> dict:
    """Pass 1 task: one metadata file -> listing chunks + a done marker (skipped if done)."""
    cls = READERS[item["dataset"]]
    reader: Reader = cls(from_dict(cls.config_cls, json.loads(item["reader_cfg"]), source=f"ingest.datasets.{item['dataset']}"))
    base = storage.join(work, "listing", item["dataset"], item["unit_id"])
    marker = base + ".done.json"
    if storage.exists(marker):
        return {"result": storage.read_text(marker)}
    chunks, buf = [], []

    def flush() -> None:
        uri = f"{base}-{len(chunks):05d}.parquet"
        storage.write_parquet(uri, pa.Table.from_pylist(buf, schema=LISTING))
        chunks.append(uri)
        buf.clear()

    n = 0
    for s in reader.samples(item["unit"]):
        buf.append(s.row())
        n += 1
        if len(buf) >= item["shard_size"]:
            flush()
    if buf:
        flush()
    done = {"dataset": item["dataset"], "unit": item["unit"], "chunks": chunks, "rows": n, "skipped": dict(reader.skipped)}
    storage.write_text(marker, json.dumps(done))
    return {"result": json.dumps(done)}


# --- between the passes: duplicates --------------------------------------------------------------


def find_duplicates(chunks: list[str]) -> dict[str, dict[int, str]]:
    """chunk -> {row: first chunk holding the same sample_id}, for every repeat after the first."""
    if not chunks:
        return {}
    ids = []
    for ci, c in enumerate(chunks):
        t = storage.read_parquet(c, columns=["sample_id"])
        ids.append(t.append_column("chunk", pa.array([ci] * len(t), pa.int32())).append_column("row", pa.array(range(len(t)), pa.int32())))
    table = pa.concat_tables(ids)
    counts = table.group_by("sample_id").aggregate([("row", "count")])
    dup_ids = counts.filter(pc.greater(counts["row_count"], 1))["sample_id"]
    if len(dup_ids) == 0:
        return {}
    rows = table.filter(pc.is_in(table["sample_id"], dup_ids)).sort_by([("sample_id", "ascending"), ("chunk", "ascending"), ("row", "ascending")])
    out: dict[str, dict[int, str]] = defaultdict(dict)
    first: dict[str, int] = {}
    for sid, ci, r in zip(rows["sample_id"].to_pylist(), rows["chunk"].to_pylist(), rows["row"].to_pylist()):
        if sid not in first:
            first[sid] = ci
        else:
            out[chunks[ci]][r] = chunks[first[sid]]
    return dict(out)


# --- pass 2: probing -------------------------------------------------------------------------------


def _mismatch(task: str, src: MediaInfo, tgt: MediaInfo, cfg: IngestConfig) -> str | None:
    a_src, a_tgt = src.width / max(src.height, 1), tgt.width / max(tgt.height, 1)
    if abs(a_src - a_tgt) / max(a_src, a_tgt) > cfg.max_aspect_mismatch:
        return f"aspect ratio {src.width}x{src.height} vs {tgt.width}x{tgt.height}"
    if task == "video_edit":
        if src.kind != "video" or tgt.kind != "video":
            return f"video edit with a {src.kind} source and a {tgt.kind} target"
        if abs(src.frames - tgt.frames) / max(src.frames, tgt.frames) > cfg.max_frame_mismatch:
            return f"frame count {src.frames} vs {tgt.frames}"
    return None


def check_sample(row: dict, cfg: IngestConfig) -> tuple[dict | None, tuple[str, str] | None]:
    """(manifest row, None) for a usable sample, else (None, (reason, detail))."""
    if row["reject_reason"]:
        return None, (row["reject_reason"], row["reject_detail"] or "")
    if not (row["instruction"] or "").strip():
        what = "caption" if row["task"] == "t2v" else "instruction"
        return None, ("empty_instruction", f"{row['target_uri']}: empty {what}")
    try:
        tgt = probe(row["target_uri"], cfg.probe)
        src = probe(row["source_uri"], cfg.probe) if row["source_uri"] else None
    except MediaError as e:
        return None, (e.reason, e.detail)
    if src is not None:
        why = _mismatch(row["task"], src, tgt, cfg)
        if why:
            return None, ("source_target_mismatch", f"{row['source_uri']} vs {row['target_uri']}: {why}")
    out = {k: row[k] for k in ("sample_id", "dataset", "category", "task", "instruction", "source_uri", "target_uri", "extra")}
    out.update(tgt.as_columns("tgt"))
    if src is not None:
        out.update(src.as_columns("src"))
    return out, None


def output_parts(output: str, chunk: str) -> tuple[str, str]:
    dataset = posixpath.basename(posixpath.dirname(chunk.replace("\\", "/")))
    name = posixpath.basename(chunk)
    return storage.join(output, "manifest", dataset, name), storage.join(output, "rejects", dataset, name)


def probe_chunk(item: dict, output: str, cfg: IngestConfig) -> dict:
    """Pass 2 task: probe one listing chunk; writes rejects then manifest (skipped if done)."""
    manifest_uri, rejects_uri = output_parts(output, item["chunk"])
    if storage.exists(manifest_uri):
        return {"result": json.dumps({"chunk": item["chunk"], "skipped": True})}
    rows = storage.read_parquet(item["chunk"]).to_pylist()
    dups: dict[int, str] = {int(k): v for k, v in json.loads(item["duplicates"]).items()}

    def one(i_row: tuple[int, dict]):
        i, row = i_row
        if i in dups and not row["reject_reason"]:
            return None, ("duplicate", f"same source, target and instruction as a sample in {dups[i]}")
        return check_sample(row, cfg)

    kept, rejected = [], []
    with ThreadPoolExecutor(cfg.probe_threads) as pool:
        for row, (ok, bad) in zip(rows, pool.map(one, enumerate(rows))):
            if ok is not None:
                kept.append(ok)
            else:
                reason, detail = bad
                rejected.append({"sample_id": row["sample_id"], "dataset": row["dataset"], "stage": "ingest", "reason": reason,
                                 "detail": detail, "source_uri": row["source_uri"], "target_uri": row["target_uri"] or None})
    storage.write_parquet(rejects_uri, REJECTS.table(rejected))
    storage.write_parquet(manifest_uri, MANIFEST.table(kept))  # last: its presence marks the chunk done
    return {"result": json.dumps({"chunk": item["chunk"], "skipped": False, "kept": len(kept), "rejected": len(rejected)})}


# --- the job ---------------------------------------------------------------------------------------


def prune_stale(output: str, chunks: list[str]) -> list[str]:
    """Delete manifest/rejects parts that no current listing chunk produces (e.g. the metadata
    file or the reader config changed since they were written), so nothing counts twice."""
    current = {(posixpath.basename(posixpath.dirname(c)), posixpath.basename(c)) for c in chunks}
    removed = []
    for sub in ("manifest", "rejects"):
        for f in storage.list_files(storage.join(output, sub), ".parquet"):
            key = (posixpath.basename(posixpath.dirname(f)), posixpath.basename(f))
            if key not in current:
                storage.delete(f)
                removed.append(f)
    if removed:
        log.warning("ingest: removed %d stale part(s) from an earlier listing, e.g. %s", len(removed), removed[0])
    return removed


def summarize(output: str, listed: list[dict]) -> dict:
    """Counts per dataset from what is on storage (so a resumed run reports the whole job)."""
    summary: dict[str, dict] = {}
    for name in sorted({d["dataset"] for d in listed}):
        kept = 0
        for f in storage.list_files(storage.join(output, "manifest", name), ".parquet"):
            kept += storage.read_parquet(f, columns=["sample_id"]).num_rows
        reasons: Counter[str] = Counter()
        for f in storage.list_files(storage.join(output, "rejects", name), ".parquet"):
            reasons.update(storage.read_parquet(f, columns=["reason"])["reason"].to_pylist())
        skipped: Counter[str] = Counter()
        for d in listed:
            if d["dataset"] == name:
                skipped.update(d.get("skipped", {}))
        summary[name] = {"kept": kept, "rejected": sum(reasons.values()), "reasons": dict(sorted(reasons.items())),
                         "not_listed": dict(skipped)}
    return summary


def format_summary(summary: dict) -> str:
    return count_table(summary, {"kept": lambda s: s["kept"], "rejected": lambda s: s["rejected"]},
                       note=lambda s: "".join(f"  ({v} {k})" for k, v in s["not_listed"].items()))


def run(cfg: IngestJobConfig) -> dict:
    icfg = cfg.ingest
    readers = icfg.datasets.readers()
    if not readers:
        raise ValueError("ingest: no dataset configured under ingest.datasets")
    work = storage.join(cfg.output, "_work")

    # 1. list every metadata file (driver lists folders only)
    items = []
    for r in readers:
        for unit in r.units():
            items.append({"dataset": r.name, "unit": unit, "unit_id": _unit_id(r, unit),
                          "reader_cfg": json.dumps(dataclasses.asdict(r.cfg)),
                          "shard_size": icfg.shard_size})
    listed = map_tasks(items, partial(list_unit, work=work), icfg.task_cpus, "list")
    chunks = sorted(c for d in listed for c in d["chunks"])

    # 2. the output holds exactly what this config lists: parts of earlier listings go
    prune_stale(cfg.output, chunks)

    # 3. duplicates across the whole listing
    dups = find_duplicates(chunks)

    # 4. probe every chunk not done yet
    todo = [{"chunk": c, "duplicates": json.dumps({str(k): v for k, v in dups.get(c, {}).items()})} for c in chunks]
    todo = [t for t in todo if not storage.exists(output_parts(cfg.output, t["chunk"])[0])]
    map_tasks(todo, partial(probe_chunk, output=cfg.output, cfg=icfg), icfg.task_cpus, "probe")

    summary = summarize(cfg.output, listed)
    storage.write_text(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"manifest: {storage.join(cfg.output, 'manifest')}\nrejects:  {storage.join(cfg.output, 'rejects')}")
    return summary


def read_manifest(uri: str) -> pa.Table:
    """The manifest table under ``uri`` (all datasets), validated against the schema."""
    return validate(storage.read_parquet(uri), MANIFEST, where=uri)
