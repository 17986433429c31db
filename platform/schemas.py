"""Arrow schemas of every table that passes between jobs, versioned and validated on read.

A table written by a job carries its schema name and version in the Parquet
metadata (``sama.schema``, ``sama.schema_version``); a reader calls
:func:`validate` so a stale or foreign table fails with a message naming the file
and the column instead of deep inside a later stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

TASKS = ("t2v", "image_edit", "video_edit")
REJECT_REASONS = (
    "missing_file",
    "empty_file",
    "truncated",
    "undecodable",
    "unsupported_codec",
    "empty_instruction",
    "source_target_mismatch",
    "duplicate",
    "bad_record",
    "license_excluded",  # the dataset's license is outside ingest.licenses (allow / deny)
)


class SchemaError(ValueError):
    """A table does not match the schema it claims; the message names file and column."""


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    schema: pa.Schema

    def with_metadata(self) -> pa.Schema:
        return self.schema.with_metadata(
            {b"sama.schema": self.name.encode(), b"sama.schema_version": str(self.version).encode()}
        )

    def table(self, rows: Iterable[Mapping]) -> pa.Table:
        """A table of ``rows`` (dicts) in this schema; missing nullable fields become null."""
        rows = list(rows)
        cols = {f.name: [r.get(f.name) for r in rows] for f in self.schema}
        return pa.Table.from_pydict(cols, schema=self.with_metadata())

    def empty(self) -> pa.Table:
        return self.with_metadata().empty_table()


def _media_fields(prefix: str) -> list[pa.Field]:
    return [
        pa.field(f"{prefix}_width", pa.int32()),
        pa.field(f"{prefix}_height", pa.int32()),
        pa.field(f"{prefix}_frames", pa.int32()),
        pa.field(f"{prefix}_fps", pa.float32()),
        pa.field(f"{prefix}_duration", pa.float32()),
        pa.field(f"{prefix}_codec", pa.string()),
    ]


# Where a sample came from and under which terms (sama.provenance): set by ingest, carried on.
PROVENANCE_FIELDS = [
    pa.field("license", pa.string()),  # the dataset's license id (sama.provenance.LICENSES or config)
    pa.field("record", pa.string()),  # the original record: metadata file and line / record / member
    pa.field("origin_url", pa.string()),  # where fetched media came from (YouTube, Flickr), if fetched
    pa.field("dataset_version", pa.string()),  # ingest.datasets.<name>.version (a hub revision), if given
]

MANIFEST = TableSchema(
    "manifest",
    2,
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("category", pa.string()),
            pa.field("task", pa.string(), nullable=False),  # one of TASKS
            pa.field("instruction", pa.string(), nullable=False),  # edit instruction or clip caption
            pa.field("source_uri", pa.string()),  # null for t2v clips
            pa.field("target_uri", pa.string(), nullable=False),
            *_media_fields("src"),
            *_media_fields("tgt"),
            pa.field("extra", pa.string()),  # JSON: dataset-specific metadata (scores, style, ...)
            *PROVENANCE_FIELDS,
        ]
    ),
)

REJECTS = TableSchema(
    "rejects",
    1,
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),  # which job rejected it
            pa.field("reason", pa.string(), nullable=False),  # a REJECT_REASONS value or a stage's own
            pa.field("detail", pa.string()),  # human-readable: names the file or field
            pa.field("source_uri", pa.string()),
            pa.field("target_uri", pa.string()),
        ]
    ),
)

REGISTRY: dict[str, TableSchema] = {s.name: s for s in (MANIFEST, REJECTS)}


def register(schema: TableSchema) -> TableSchema:
    REGISTRY[schema.name] = schema
    return schema


VERDICTS = register(
    TableSchema(
        "verdicts",
        1,
        pa.schema(
            [
                pa.field("sample_id", pa.string(), nullable=False),
                pa.field("dataset", pa.string(), nullable=False),
                pa.field("category", pa.string()),
                pa.field("task", pa.string(), nullable=False),
                pa.field("verdict", pa.string(), nullable=False),  # "keep", "drop" or "error" (retried on the next run)
                pa.field(
                    "reasons", pa.list_(pa.string()), nullable=False
                ),  # failed checks, judge rules, or the error kind
                pa.field("detail", pa.string()),  # human-readable: names the file and the measured value
                # cheap checks (null where not measured)
                pa.field("motion", pa.float32()),
                pa.field("blank_fraction", pa.float32()),
                pa.field("scene_cuts", pa.int32()),
                pa.field("sharpness", pa.float32()),
                pa.field("edit_diff", pa.float32()),
                # the judge (null where it was not asked)
                pa.field(
                    "judge_model", pa.string(), nullable=False
                ),  # "<backend>:<model>", or "none:cheap-checks-only"
                pa.field("rubric_version", pa.string()),  # the prompt version, e.g. "video_edit-v1"
                pa.field(
                    "scores", pa.map_(pa.string(), pa.float32())
                ),  # raw per-criterion scores on the rubric's scale
                pa.field("flags", pa.list_(pa.string())),  # defect flags the judge answered true
                pa.field("overall", pa.float32()),  # 0..1 weighted mean of normalised scores
                pa.field("judge_reason", pa.string()),
                pa.field("judge_attempts", pa.int32()),
                pa.field("error", pa.string()),  # why a verdict is "error"
                pa.field("source_uri", pa.string()),
                pa.field("target_uri", pa.string(), nullable=False),
                pa.field("config_digest", pa.string(), nullable=False),  # the filter settings that decided
            ]
        ),
    )
)


FETCH_ERRORS = (
    "removed",  # the video or photo was taken down (or is private / an "unavailable" placeholder)
    "geo_blocked",
    "login_required",  # age-restricted or members-only
    "http_403",
    "http_404",
    "http_410",
    "http_429",
    "http_5xx",
    "http_error",
    "timeout",
    "connection",
    "too_large",  # over the byte cap
    "too_long",  # source video or span over the duration cap
    "truncated",  # fewer bytes than the server announced, or a file that ends early
    "undecodable",
    "span_out_of_range",  # the span ends after the video does
    "cut_failed",
    "bad_record",  # the metadata row itself is unusable
    "download_failed",  # anything else; the detail says what
)

FETCH = register(
    TableSchema(
        "fetch",
        1,
        pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),  # the stable output file name (clip or image)
                pa.field("dataset", pa.string(), nullable=False),
                pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
                pa.field("error", pa.string()),  # a FETCH_ERRORS value when failed
                pa.field("detail", pa.string()),  # human-readable: names the URL, the metadata row, the measured value
                pa.field("source_url", pa.string()),  # as the metadata lists it
                pa.field("fetch_url", pa.string()),  # what was requested (a mirror via url_template, or a tar member)
                pa.field("method", pa.string()),  # "http", "ytdlp" or "tar"
                pa.field("output_uri", pa.string()),  # where the file is (or would be); null for an unusable row
                pa.field("bytes", pa.int64()),
                pa.field("sha256", pa.string()),  # of the output file
                pa.field("start", pa.float64()),  # span in the source video, seconds (clips only)
                pa.field("end", pa.float64()),
                pa.field("duration", pa.float32()),  # probed duration of the written clip
                pa.field("attempts", pa.int32()),  # HTTP / yt-dlp requests made for it in this run (0: reused)
                pa.field("row", pa.string()),  # metadata file:line it came from
                pa.field("fetched_at", pa.string()),  # ISO-8601 UTC of the run that wrote the row
            ]
        ),
    )
)


# --- a job's own resumable state (under ``_work/``), typed like every other table ------------------

LISTING = register(
    TableSchema(
        "listing",  # ingest: a metadata file's samples as its reader saw them, one row group per part
        2,
        pa.schema(
            [
                ("sample_id", pa.string()),
                ("dataset", pa.string()),
                ("category", pa.string()),
                ("task", pa.string()),
                ("instruction", pa.string()),
                ("source_uri", pa.string()),
                ("target_uri", pa.string()),
                ("extra", pa.string()),
                ("reject_reason", pa.string()),
                ("reject_detail", pa.string()),
                *PROVENANCE_FIELDS,
            ]
        ),
    )
)

FETCH_ITEMS = register(
    TableSchema(
        "fetch_items",  # fetch: what a metadata file asks to download, one row group per part
        1,
        pa.schema(
            [
                ("id", pa.string()),
                ("dataset", pa.string()),
                ("group", pa.string()),
                ("kind", pa.string()),
                ("source_url", pa.string()),
                ("fetch_url", pa.string()),
                ("method", pa.string()),
                ("output_uri", pa.string()),
                ("start", pa.float64()),
                ("end", pa.float64()),
                ("row", pa.string()),
                ("error", pa.string()),
                ("detail", pa.string()),
            ]
        ),
    )
)

TAR_INDEX = register(
    TableSchema(
        "tar_index",  # fetch: member names of an archive the user already has -> their tar:// URIs
        1,
        pa.schema([("name", pa.string()), ("uri", pa.string())]),
    )
)


def validate(table: pa.Table, expected: TableSchema, where: str = "<table>") -> pa.Table:
    """Check ``table`` against ``expected`` and return it cast to the exact schema.

    Extra columns are an error (they would be silently dropped downstream), as are
    missing columns, incompatible types, nulls in required columns and a schema
    name/version mismatch recorded in the file's metadata.
    """
    meta = table.schema.metadata or {}
    name = meta.get(b"sama.schema", b"").decode()
    version = meta.get(b"sama.schema_version", b"").decode()
    if name and name != expected.name:
        raise SchemaError(f"{where}: is a '{name}' table, expected '{expected.name}'")
    if version and int(version) != expected.version:
        raise SchemaError(
            f"{where}: '{expected.name}' schema version {version}, this code reads version {expected.version}"
        )
    names = set(table.column_names)
    wanted = [f.name for f in expected.schema]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing} of the '{expected.name}' schema")
    extra = sorted(names - set(wanted))
    if extra:
        raise SchemaError(f"{where}: unexpected column(s) {extra} for the '{expected.name}' schema")
    table = table.select(wanted)
    for f in expected.schema:
        col = table.column(f.name)
        if not f.nullable and col.null_count:
            raise SchemaError(f"{where}: column '{f.name}' has {col.null_count} null value(s) but is required")
        if not col.type.equals(f.type):
            try:
                col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(f"{where}: column '{f.name}' has type {col.type}, expected {f.type}: {e}") from e
    return table.cast(expected.with_metadata())


def read_table(uri: str, expected: TableSchema):
    """The table under ``uri`` (one Parquet file or a folder of them), validated against ``expected``."""
    from sama import storage

    return validate(storage.read_parquet(uri), expected, where=uri)


def held_out(sample_id: str, fraction: float) -> bool:
    """Whether a sample is in the held-out ``fraction`` (0..1): decided by its id alone, so the
    split is the same on every run and machine (evaluation scores it, precompute skips it)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(b"sama-holdout\0" + sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def sample_id(dataset: str, *keys: str | None) -> str:
    """A stable id from the dataset name and the fields that identify a sample."""
    h = hashlib.sha1(dataset.encode())
    for k in keys:
        h.update(b"\0" + (k or "").encode())
    return f"{dataset}-{h.hexdigest()[:16]}"


EVAL_RESULTS = register(
    TableSchema(
        "eval_results",
        2,
        pa.schema(
            [
                pa.field("key", pa.string(), nullable=False),  # <item id>-<edit digest>: names the edit and its files
                pa.field("item_id", pa.string(), nullable=False),
                pa.field("benchmark", pa.string(), nullable=False),
                pa.field("category", pa.string(), nullable=False),
                pa.field("instruction", pa.string(), nullable=False),
                pa.field("source_uri", pa.string(), nullable=False),
                pa.field("mask_uri", pa.string()),
                pa.field("target_uri", pa.string()),  # the ground truth, when the benchmark has one
                pa.field("edit_uri", pa.string()),  # the edit scored (null when it failed or is missing)
                pa.field("model", pa.string(), nullable=False),  # the system: a checkpoint's label, or whose edits
                pa.field("edit_digest", pa.string(), nullable=False),  # model, its weights' stamps, sampling settings
                pa.field("score_digest", pa.string(), nullable=False),  # metric + judge settings that scored it
                pa.field("status", pa.string(), nullable=False),  # "ok" or "error" (redone on the next run)
                pa.field("error_kind", pa.string()),  # source_error | edit_error | metrics_error | judge_error
                pa.field("error", pa.string()),
                pa.field("frames", pa.int32()),
                pa.field("height", pa.int32()),
                pa.field("width", pa.int32()),
                pa.field("edit_seconds", pa.float32()),
                pa.field("alignment", pa.string()),  # how edit (and target) met the source's grid
                # automatic metrics (null where not measurable)
                pa.field("edited_fraction", pa.float32()),
                pa.field("temporal_consistency", pa.float32()),  # 1 - flow-compensated frame-to-frame error
                pa.field("flicker", pa.float32()),  # brightness jumps beyond the source's
                pa.field("flow_epe", pa.float32()),  # source vs edit flow, pixels
                pa.field("motion_preservation", pa.float32()),  # fraction of blocks whose flows agree
                pa.field("motion_region", pa.string()),  # "unedited" or "all" (a global edit)
                pa.field("fidelity_psnr", pa.float32()),  # unedited region, dB (100 = identical)
                pa.field("fidelity_ssim", pa.float32()),
                pa.field("semantic_score", pa.float32()),  # text-image cosine similarity
                pa.field("semantic_model", pa.string()),  # the encoder, or "none" (not measured)
                # against the ground truth (null without a target)
                pa.field("gt_psnr", pa.float32()),  # dB, 100 = identical
                pa.field("gt_ssim", pa.float32()),
                pa.field("gt_psnr_edited", pa.float32()),  # with a mask: inside it
                pa.field("gt_psnr_unedited", pa.float32()),  # and outside it
                pa.field("gt_ssim_edited", pa.float32()),
                pa.field("gt_ssim_unedited", pa.float32()),
                pa.field("gt_perceptual", pa.float32()),  # learned perceptual distance (lower is closer)
                pa.field("perceptual_model", pa.string()),  # its encoder, or "none" (off)
                # the judge
                pa.field("judge_model", pa.string(), nullable=False),  # "<backend>:<model>" or "none:off"
                pa.field("rubrics", pa.list_(pa.string())),  # rubric versions asked
                pa.field("judge_scores", pa.map_(pa.string(), pa.float32())),  # published aggregates, "<rubric>.<name>"
                pa.field("judge_raw", pa.map_(pa.string(), pa.float32())),  # the answers' raw scores
                pa.field("judge_reasons", pa.map_(pa.string(), pa.string())),  # per rubric
                pa.field("judge_attempts", pa.int32()),
                pa.field("sheet_uri", pa.string()),  # the source/edit contact sheet
            ]
        ),
    )
)
