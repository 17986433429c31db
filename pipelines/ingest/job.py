"""The ingest job: every configured dataset -> one manifest table + one rejects table.

Two stages on the stage runner (``pipelines/stage.py``), each resumable part by part:

1. list:  a part per metadata file (CSV / JSON / JSONL / tar shard) writes its samples
          as one listing file under ``_work/listing``, a row group per ``shard_size`` rows.
2. probe: a part per listing row group probes every sample's media (headers, first and
          last frames) with a thread pool and writes its ``manifest`` and ``rejects`` parts.

Between the two, the driver finds duplicate sample ids across the whole listing (the
first occurrence is kept, the others are rejected as ``duplicate``). A listing part is
named by its metadata file's content and reader config, so a changed file is listed again
and the parts of the old listing are removed.

Output layout under ``output``::

    manifest/<dataset>/<unit>-<chunk>.parquet   # schemas.MANIFEST
    rejects/<dataset>/<unit>-<chunk>.parquet    # schemas.REJECTS
    summary.json                                # counts per dataset, kept / rejected / reasons
    _work/listing/..., _work/done/...           # resumable intermediate state
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from sama import storage
from sama.config import JobConfig, JobEntry
from sama.datasets import READERS, DatasetsConfig, Reader
from sama.media import MediaError, MediaInfo, ProbeConfig, probe
from sama.provenance import LicenseConfig
from sama.schemas import LISTING, MANIFEST, PROVENANCE_FIELDS, REJECTS

from ..stage import Marker, Part, Stage, Table, count_table, dry_run_stage, run_stage


@dataclass
class IngestConfig:
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    licenses: LicenseConfig = field(default_factory=LicenseConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    shard_size: int = 512  # samples per listing row group / output part
    probe_threads: int = 8  # concurrent probes inside one task (I/O bound on S3)
    task_cpus: float = 1.0  # CPUs reserved per Ray task
    max_duration_mismatch: float = 0.1  # |src - tgt| / max duration above this -> source_target_mismatch
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


# --- stage 1: listing ------------------------------------------------------------------------------


def unit_id(reader: Reader, unit: str, shard_size: int) -> str:
    """A metadata file's part name: its stem + a digest of its size, mtime and what reads it."""
    cfg = json.dumps(dataclasses.asdict(reader.cfg), sort_keys=True)
    stem = posixpath.basename(unit).split(".")[0][:40]
    return f"{stem}-{storage.content_digest(unit, storage.stamp(unit), cfg, str(shard_size), n=10)}"


def licenses_digest(licenses: LicenseConfig) -> str:
    """The license policy decides listing rows (license, license_excluded): a change relists."""
    return storage.content_digest(json.dumps(dataclasses.asdict(licenses), sort_keys=True), n=12)


class ListStage(Stage):
    """A part per metadata file: its samples as the reader sees them, bad rows included."""

    name = "list"
    tables = {"listing": Table(LISTING, "_work/listing")}

    def __init__(self, cfg: IngestConfig, output: str):
        super().__init__(output)
        self.cfg, self.task_cpus = cfg, cfg.task_cpus
        self.readers = cfg.datasets.readers()
        if not self.readers:
            raise ValueError("ingest: no dataset configured under ingest.datasets")
        self.tables = {"listing": dataclasses.replace(self.tables["listing"], row_group_size=cfg.shard_size)}

    def plan(self) -> list[Part]:
        return [
            Part(f"{r.name}/{unit_id(r, unit, self.cfg.shard_size)}", (r, unit))
            for r in self.readers
            for unit in r.units()
        ]

    def digest(self) -> str:
        return licenses_digest(self.cfg.licenses)

    def process(self, part: Part) -> dict:
        reader, unit = part.spec
        lic = self.cfg.licenses.license_of(reader.name)
        excluded = self.cfg.licenses.excluded(lic.id)
        rows = []
        for sample in reader.samples(unit):
            row = {**sample.row(), "license": lic.id, "dataset_version": reader.cfg.version or None}
            if excluded and not row["reject_reason"]:  # rejected, so the count shows in the summary
                row["reject_reason"], row["reject_detail"] = "license_excluded", f"{row['record']}: {excluded}"
            rows.append(row)
        return {
            "listing": rows,
            "meta": {"dataset": reader.name, "unit": unit, "rows": len(rows), "not_listed": dict(reader.skipped)},
        }


# --- between the stages: duplicates ---------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A probe part's input: row group ``group`` of a listing file, and which of its rows
    repeat a sample of an earlier chunk (row -> that chunk's name)."""

    listing: str
    group: int
    duplicates: dict[int, str] = field(default_factory=dict)


def chunk_parts(listed: dict[str, Marker], listing: Table, output: str, shard_size: int) -> list[Part]:
    """A probe part per listing row group, with the duplicates across the whole listing."""
    names, uris, sizes = sorted(listed), [], []
    for name in names:
        uris.append(listing.uri(output, name))
        sizes.append(listed[name].meta["rows"])
    ids = [storage.read_parquet(u, columns=["sample_id"])["sample_id"] for u in uris]
    table = pa.table(
        {
            "sample_id": pa.chunked_array([c for a in ids for c in a.chunks], pa.string()),
            "file": pa.array([i for i, n in enumerate(sizes) for _ in range(n)], pa.int32()),
            "row": pa.array([r for n in sizes for r in range(n)], pa.int64()),
        }
    )
    dups: dict[tuple[int, int], dict[int, str]] = defaultdict(dict)
    counts = table.group_by("sample_id").aggregate([("row", "count")])
    repeated = counts.filter(pc.greater(counts["row_count"], 1))["sample_id"]
    if len(repeated):
        rows = table.filter(pc.is_in(table["sample_id"], repeated)).sort_by(
            [("sample_id", "ascending"), ("file", "ascending"), ("row", "ascending")]
        )
        first: dict[str, str] = {}
        for sid, fi, row in zip(*(rows[c].to_pylist() for c in ("sample_id", "file", "row"))):
            chunk = f"{names[fi]}-{row // shard_size:05d}"
            if sid not in first:
                first[sid] = chunk
            else:
                dups[(fi, row // shard_size)][row % shard_size] = first[sid]
    return [
        Part(f"{name}-{g:05d}", Chunk(uri, g, dups.get((fi, g), {})))
        for fi, (name, uri, n) in enumerate(zip(names, uris, sizes))
        for g in range(math.ceil(n / shard_size))
    ]


# --- stage 2: probing ------------------------------------------------------------------------------


def mismatch(task: str, src: MediaInfo, tgt: MediaInfo, cfg: IngestConfig) -> str | None:
    a_src, a_tgt = src.width / max(src.height, 1), tgt.width / max(tgt.height, 1)
    if abs(a_src - a_tgt) / max(a_src, a_tgt) > cfg.max_aspect_mismatch:
        return f"aspect ratio {src.width}x{src.height} vs {tgt.width}x{tgt.height}"
    if task == "video_edit":
        if src.kind != "video" or tgt.kind != "video":
            return f"video edit with a {src.kind} source and a {tgt.kind} target"
        # Durations, not frame counts: an edit delivered at another frame rate is still the same clip.
        if abs(src.duration - tgt.duration) / max(src.duration, tgt.duration, 1e-6) > cfg.max_duration_mismatch:
            return (
                f"duration {src.duration:.2f}s ({src.frames} frames at {src.fps:g} fps) vs "
                f"{tgt.duration:.2f}s ({tgt.frames} frames at {tgt.fps:g} fps)"
            )
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
        why = mismatch(row["task"], src, tgt, cfg)
        if why:
            return None, ("source_target_mismatch", f"{row['source_uri']} vs {row['target_uri']}: {why}")
    keys = ("sample_id", "dataset", "category", "task", "instruction", "source_uri", "target_uri", "extra")
    out = {k: row[k] for k in keys + tuple(f.name for f in PROVENANCE_FIELDS)}
    out.update(tgt.as_columns("tgt"))
    if src is not None:
        out.update(src.as_columns("src"))
    return out, None


class ProbeStage(Stage):
    """A part per listing chunk: probe every sample's media; usable ones to the manifest."""

    name = "probe"
    tables = {
        "manifest": Table(MANIFEST, "manifest", status="kept", statuses=("kept",)),
        "rejects": Table(REJECTS, "rejects", status="rejected", statuses=("rejected",), reason_column="reason"),
    }

    def __init__(self, cfg: IngestConfig, output: str, listed: dict[str, Marker]):
        super().__init__(output)
        self.cfg, self.listed, self.task_cpus = cfg, listed, cfg.task_cpus

    def plan(self) -> list[Part]:
        return chunk_parts(self.listed, ListStage.tables["listing"], self.output, self.cfg.shard_size)

    def digest(self) -> str:
        decisive = [dataclasses.asdict(self.cfg.probe), self.cfg.max_duration_mismatch, self.cfg.max_aspect_mismatch]
        return storage.content_digest(json.dumps(decisive, sort_keys=True), n=12)

    def inputs(self) -> list[tuple[str, str]]:
        """Each dataset root, digested by what was listed there (its metadata files' names,
        sizes and mtimes are in the listing parts' names), not by walking millions of media files."""
        parts: dict[str, list[str]] = defaultdict(list)
        for name in self.listed:
            parts[name.split("/")[0]].append(name)
        return [(r.root, storage.content_digest(*sorted(parts[r.name]), n=16)) for r in self.cfg.datasets.readers()]

    def provenance(self) -> dict:
        return {"licenses_digest": licenses_digest(self.cfg.licenses)}

    def process(self, part: Part) -> dict:
        chunk: Chunk = part.spec
        rows = storage.read_row_group(chunk.listing, chunk.group).to_pylist()

        def one(i: int, row: dict):
            if i in chunk.duplicates and not row["reject_reason"]:
                return None, ("duplicate", f"same source, target and instruction as a sample in {chunk.duplicates[i]}")
            return check_sample(row, self.cfg)

        kept, rejected = [], []
        with ThreadPoolExecutor(self.cfg.probe_threads) as pool:
            for row, (ok, bad) in zip(rows, pool.map(one, range(len(rows)), rows)):
                if ok is not None:
                    kept.append(ok)
                    continue
                reason, detail = bad
                rejected.append(
                    {
                        "sample_id": row["sample_id"],
                        "dataset": row["dataset"],
                        "stage": "ingest",
                        "reason": reason,
                        "detail": detail,
                        "source_uri": row["source_uri"],
                        "target_uri": row["target_uri"] or None,
                    }
                )
        return {"manifest": kept, "rejects": rejected}

    def summarize(self, summary: dict, markers) -> None:
        datasets = summary["datasets"]
        for marker in self.listed.values():  # every dataset listed, and what its reader left out
            entry = datasets.setdefault(marker.meta["dataset"], {"kept": 0, "rejected": 0, "reasons": {}})
            not_listed = entry.setdefault("not_listed", {})
            for reason, n in marker.meta["not_listed"].items():
                not_listed[reason] = not_listed.get(reason, 0) + n
        summary["datasets"] = dict(sorted(datasets.items()))
        for name, entry in summary["datasets"].items():
            lic = self.cfg.licenses.license_of(name)
            entry["license"] = {"id": lic.id, "source": lic.source}
        summary["license_excluded"] = {
            name: n for name, e in summary["datasets"].items() if (n := e["reasons"].get("license_excluded", 0))
        }

    def report(self, summary: dict) -> None:
        print(
            count_table(
                summary["datasets"],
                {"kept": lambda s: s["kept"], "rejected": lambda s: s["rejected"]},
                note=lambda s: "".join(f"  ({v} {k})" for k, v in s.get("not_listed", {}).items()),
            )
        )
        if summary["license_excluded"]:
            print(f"license excluded (ingest.licenses): {summary['license_excluded']}")
        print(f"manifest: {storage.join(self.output, 'manifest')}\nrejects:  {storage.join(self.output, 'rejects')}")


def run(cfg: IngestJobConfig) -> dict:
    listed = run_stage(ListStage(cfg.ingest, cfg.output), write_summary=False).markers
    return run_stage(ProbeStage(cfg.ingest, cfg.output, listed)).summary


def preflight(cfg: IngestJobConfig) -> None:
    """Every configured dataset folder exists, checked before Ray starts."""
    from sama.config import ConfigError

    for f in dataclasses.fields(cfg.ingest.datasets):
        reader = getattr(cfg.ingest.datasets, f.name)
        if reader is None:
            continue
        key = f"ingest.datasets.{f.name}.root={reader.root}"
        try:
            found = storage.exists(reader.root)
        except storage.StorageError:
            raise  # the storage is failing, not the config: the CLI says so in one line
        except Exception as e:  # noqa: BLE001 - e.g. a bucket that does not exist or denies access
            raise ConfigError(f"{key}: cannot be read ({type(e).__name__}: {e})") from e
        if not found:
            raise ConfigError(f"{key}: does not exist")
        try:
            READERS[f.name](reader)  # e.g. a field mapping naming a field the reader does not have
        except ValueError as e:
            raise ConfigError(f"ingest.datasets.{f.name}: {e}") from e


def dry_run(cfg: IngestJobConfig) -> list[str]:
    return dry_run_stage(ListStage(cfg.ingest, cfg.output))


JOB = JobEntry(IngestJobConfig, run, dry_run, preflight)
