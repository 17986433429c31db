"""Benchmark manifests -> evaluation items (id, category, instruction, source, optional mask).

Formats:

- ``user``: a CSV or JSONL file with ``source, instruction, category`` and optional ``id``,
  ``mask``, ``target_caption``, ``edit`` (a system's edited video: scored, not made) and
  ``target`` (the ground truth); relative paths are relative to the file.
- ``manifest``: a ``MANIFEST`` table of ours (the ingest or filter output, a file or a
  folder): its edit samples, with their targets as ground truth (``split`` picks a
  held-out fraction by sample id).
- ``vie`` / ``openve`` / ``reco``: the released benchmark layouts. Their field names are
  not confirmed (DATASETS.md), so each reader accepts the plausible variants below: a
  JSON (list, or mapping of id -> record), JSONL or CSV file, or a folder holding such
  files (one per category, or one for all; a category missing from a record is taken
  from the file name or its folder, e.g. ReCo's ``replace/replace_data_configs.json``).
  Bare file names are looked up next to the metadata and in the usual video folders.
- ``auto``: ``manifest`` for Parquet, else the first format whose fields a file's records carry.

Any problem stops the job with a :class:`ManifestError` naming the file, the record and
the field names tried.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from dataclasses import dataclass

from sama import storage
from sama.media import IMAGE_EXTS, VIDEO_EXTS
from sama.schemas import MANIFEST, held_out, read_table

FORMATS = ("auto", "user", "vie", "openve", "reco", "manifest")


class ManifestError(ValueError):
    """The manifest cannot be read; the message names the file, the record and the field."""


@dataclass(frozen=True)
class FormatSpec:
    name: str
    source: tuple[str, ...]
    instruction: tuple[str, ...]
    category: tuple[str, ...]
    id: tuple[str, ...] = ("id", "item_id", "sample_id", "uid", "video_id", "name")
    mask: tuple[str, ...] = ("mask", "mask_path", "mask_video", "video_mask", "mask_uri")
    caption: tuple[str, ...] = ("target_caption", "edited_caption", "tgt_caption", "output_caption")
    edit: tuple[str, ...] = ()  # a system's edit of the source, made elsewhere
    target: tuple[str, ...] = ()  # the ground-truth edit
    video_dirs: tuple[str, ...] = ("videos", "source", "sources", "src_videos", "source_videos", "original_videos")
    mask_dirs: tuple[str, ...] = ("video_masks", "masks")
    category_required: bool = True  # else: from the file / folder name
    signature: tuple[str, ...] = ()  # fields (or a file-name part) that only this format has: for ``auto``


SPECS: dict[str, FormatSpec] = {
    "user": FormatSpec(
        "user",
        ("source",),
        ("instruction",),
        ("category",),
        id=("id",),
        mask=("mask",),
        caption=("target_caption",),
        edit=("edit",),
        target=("target",),
        video_dirs=(),
        mask_dirs=(),
    ),
    # OpenVE-3M ships original_video / video (the *edited* one) / prompt / edited_type: "video" is
    # never read as the source here.
    "openve": FormatSpec(
        "openve",
        ("original_video", "source_video", "src_video", "source", "input_video", "video_path"),
        ("prompt", "instruction", "edit_prompt", "edit_instruction"),
        ("edited_type", "category", "edit_type", "type"),
        category_required=False,
        signature=("original_video", "edited_type"),
    ),
    "reco": FormatSpec(
        "reco",
        ("src_video", "source_video", "src_video_path", "source", "src", "video", "video_path"),
        ("instruction", "prompt", "edit_prompt", "edit_instruction", "text"),
        ("task", "category", "edit_type", "type"),
        category_required=False,
        signature=("src_video", "src_video_path", "_data_config"),
    ),
    "vie": FormatSpec(
        "vie",
        ("source_video", "src_video", "source", "video", "video_path", "input_video", "src"),
        ("instruction", "prompt", "edit_prompt", "edit_instruction", "text"),
        ("category", "edit_type", "type", "task", "class"),
        category_required=False,
    ),
}

METADATA_EXTS = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Item:
    item_id: str
    benchmark: str
    category: str
    instruction: str
    source_uri: str
    mask_uri: str | None = None
    target_caption: str | None = None
    edit_uri: str | None = None  # brought by the user: scored, not made
    target_uri: str | None = None  # ground truth

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _records(uri: str) -> list[dict]:
    text = storage.read_text(uri)
    lower = uri.lower()
    try:
        if lower.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if lower.endswith(".json"):
            data = json.loads(text)
            if isinstance(data, dict):  # {id: record} or {"data"/"items": [...]}
                for k in ("data", "items", "samples", "annotations"):
                    if isinstance(data.get(k), list):
                        return data[k]
                return [{"id": k, **v} if isinstance(v, dict) else {"id": k, "_value": v} for k, v in data.items()]
            return data if isinstance(data, list) else []
        if lower.endswith(".csv"):
            return list(csv.DictReader(io.StringIO(text)))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{uri}: not valid JSON ({e.msg}, line {e.lineno})") from None
    raise ManifestError(f"{uri}: unknown manifest type (expected {', '.join(METADATA_EXTS)})")


def _pick(rec: dict, names: tuple[str, ...]):
    for n in names:
        v = rec.get(n)
        if v not in (None, ""):
            return v
    return None


def _resolve(value: str, base: str, dirs: tuple[str, ...], category: str | None) -> str:
    """A media path as written in the metadata -> an existing URI (or the most likely one)."""
    if "://" in value or value.startswith("/"):
        return value
    candidates = [storage.join(base, value)]
    for d in dirs:
        candidates.append(storage.join(base, d, value))
        if category:
            candidates += [storage.join(base, category, d, value), storage.join(base, d, category, value)]
    for c in candidates:
        if storage.exists(c):
            return c
    return candidates[0]  # reported as a missing source by the edit stage, not guessed further


def _category_from_path(uri: str, root: str) -> str:
    """ReCo-style ``replace/replace_data_configs.json`` or OpenVE-style ``background_change.csv``."""
    stem = posixpath.splitext(posixpath.basename(uri))[0]
    stem = re.sub(r"(_data_configs?|_test|_bench|_benchmark|_meta(data)?)$", "", stem)
    parent = posixpath.basename(posixpath.dirname(storage.filesystem(uri)[1]))
    generic = {"metadata", "meta", "annotations", "manifest", "test", "bench", "benchmark", "data", "all"}
    if stem.lower() not in generic:
        return stem
    if storage.normalize(storage.parent(uri)) != storage.normalize(root) and parent:
        return parent
    return "all"


def detect(records: list[dict], uri: str) -> str:
    """``user`` when its exact fields are there, else a benchmark by its signature, else ``vie`` (generic)."""
    keys = set().union(*(r.keys() for r in records[:20])) if records else set()
    marks = keys | {storage.basename(uri)}
    for name in ("user", "openve", "reco", "vie"):
        s = SPECS[name]
        fields_ok = (
            keys & set(s.source) and keys & set(s.instruction) and (not s.category_required or keys & set(s.category))
        )
        if fields_ok and (name in ("user", "vie") or any(m in k for m in s.signature for k in marks)):
            return name
    raise ManifestError(
        f"{uri}: cannot tell the format from its fields {sorted(keys)[:20]}; set "
        f"evaluate.format to one of {list(FORMATS[1:])}"
    )


def read_file(uri: str, fmt: str, root: str, benchmark: str | None = None) -> list[Item]:
    records = _records(uri)
    if not records:
        raise ManifestError(f"{uri}: no records")
    name = detect(records, uri) if fmt == "auto" else fmt
    spec = SPECS[name]
    base = storage.parent(uri)
    default_cat = None if spec.category_required else _category_from_path(uri, root)
    items = []
    for i, rec in enumerate(records):
        where = f"{uri} record {i + 1}"
        if not isinstance(rec, dict):
            raise ManifestError(f"{where}: not an object ({type(rec).__name__})")
        src, instr = _pick(rec, spec.source), _pick(rec, spec.instruction)
        cat = _pick(rec, spec.category) or default_cat
        for field, value, names in (
            ("source", src, spec.source),
            ("instruction", instr, spec.instruction),
            ("category", cat, spec.category),
        ):
            if value is None or not str(value).strip():
                raise ManifestError(f"{where}: no {field} (tried fields {list(names)}; the record has {sorted(rec)})")
        src_uri = _resolve(str(src), base, spec.video_dirs, str(cat))
        ext = posixpath.splitext(src_uri.lower())[1]
        if ext and ext not in VIDEO_EXTS + IMAGE_EXTS:
            raise ManifestError(f"{where}: source {src!r} is not a video or image file")
        mask, edit, target = _pick(rec, spec.mask), _pick(rec, spec.edit), _pick(rec, spec.target)
        raw_id = _pick(rec, spec.id)
        # Without an id: stable over reruns and reorderings, from what defines the item.
        item_id = str(raw_id) if raw_id is not None else storage.content_digest(str(src), str(instr), n=12)
        items.append(
            Item(
                item_id,
                benchmark or name,
                str(cat),
                str(instr).strip(),
                src_uri,
                _resolve(str(mask), base, spec.mask_dirs, str(cat)) if mask else None,
                _pick(rec, spec.caption),
                _resolve(str(edit), base, (), None) if edit else None,
                _resolve(str(target), base, (), None) if target else None,
            )
        )
    return items


def read_table_items(uri: str, benchmark: str | None = None) -> list[Item]:
    """The edit samples of a ``MANIFEST`` table, their targets as ground truth (text-to-video
    rows have no source to edit and are left out)."""
    try:
        table = read_table(uri, MANIFEST)
    except (OSError, ValueError) as e:
        raise ManifestError(f"evaluate.manifest: {uri} is not a manifest table ({e})") from None
    return [
        Item(
            row["sample_id"],
            benchmark or "manifest",
            row["category"] or row["task"],
            row["instruction"],
            row["source_uri"],
            target_uri=row["target_uri"],
        )
        for row in table.to_pylist()
        if row["task"] != "t2v" and row["source_uri"]
    ]


def read_manifest(
    uri: str,
    fmt: str = "auto",
    benchmark: str | None = None,
    categories: list[str] | None = None,
    limit: int | None = None,
    split: float | None = None,
) -> list[Item]:
    """Every item of a manifest file or folder, ids unique, in a stable order; with ``split``,
    only the held-out fraction (``sama.schemas.held_out``: by id, the same on every run)."""
    if fmt not in FORMATS:
        raise ManifestError(f"evaluate.format={fmt!r}: one of {list(FORMATS)}")
    if not storage.exists(uri):
        raise ManifestError(f"evaluate.manifest: {uri} does not exist")
    fs, path = storage.filesystem(uri)
    is_file = fs.get_file_info(path).type.name == "File"
    if fmt == "auto" and (
        uri.endswith(".parquet")
        or (not is_file and not storage.list_files(uri, METADATA_EXTS) and storage.list_files(uri, ".parquet"))
    ):
        fmt = "manifest"  # a table of ours (an ingest or filter output)
    if fmt == "manifest":
        files, items = [uri], read_table_items(uri, benchmark)
    elif is_file:
        files, items = [uri], []
    else:
        files, items = sorted(f for f in storage.list_files(uri, METADATA_EXTS) if "/." not in f), []
        if not files:
            raise ManifestError(f"evaluate.manifest: no {'/'.join(METADATA_EXTS)} metadata under {uri}")
    for f in files if fmt != "manifest" else []:
        items += read_file(f, fmt, uri if len(files) > 1 else storage.parent(uri), benchmark)
    seen: dict[str, str] = {}
    for it in items:
        if it.item_id in seen:
            raise ManifestError(
                f"{uri}: item id {it.item_id!r} appears twice ({seen[it.item_id]} and "
                f"{it.source_uri}); ids must be unique"
            )
        seen[it.item_id] = it.source_uri
    if categories:
        items = [it for it in items if it.category in categories]
    if split is not None:
        items = [it for it in items if held_out(it.item_id, split)]
    items.sort(key=lambda it: (it.category, it.item_id))
    return items[:limit] if limit else items
