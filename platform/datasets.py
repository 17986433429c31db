"""The datasets on disk: one reader per SAMA dataset, metadata on disk or S3 -> :class:`RawSample` rows.

Shared by the ingest job (which reads every sample) and the fetch job (which downloads the
media Koala-36M and Pico-Banana only reference, under the names these readers look for).

A reader is cheap to build and does two things: ``units()`` lists the metadata
files (CSV / JSON / JSONL / tar shards) on the driver, and ``read_unit(unit)``
turns one of them into samples inside a Ray task, so listing millions of rows
runs in parallel. Media is not touched here (the probe stage does that).

Field names that the public cards leave unconfirmed are looked up among
plausible variants (``FIELDS``); a file in which none of them occurs stops the
job with a message naming the file and the names tried, while a single bad row
becomes a ``bad_record`` reject naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sama import storage
from sama.records import DatasetError, json_records, manifest_files, pick, read_csv, read_jsonl, require_columns
from sama.schemas import sample_id


@dataclass
class RawSample:
    dataset: str
    task: str
    key: str  # what identifies the sample inside its dataset (relative paths + instruction)
    instruction: str
    target_uri: str
    source_uri: str | None = None
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reject_reason: str | None = None
    reject_detail: str | None = None
    record: str | None = None  # the original record: "<metadata file>:<line>" / "#<record>" / "::<member>"
    origin_url: str | None = None  # where fetched media came from (Koala: YouTube, Pico-Banana: Flickr)

    def row(self) -> dict:
        return {
            "sample_id": sample_id(self.dataset, self.key),
            "dataset": self.dataset,
            "category": self.category,
            "task": self.task,
            "instruction": self.instruction,
            "source_uri": self.source_uri,
            "target_uri": self.target_uri,
            "extra": json.dumps(self.extra, sort_keys=True, default=str) if self.extra else None,
            "reject_reason": self.reject_reason,
            "reject_detail": self.reject_detail,
            "record": self.record,
            "origin_url": self.origin_url,
        }


class BaseResolver:
    """Picks, once per file, which base folder a dataset's relative paths live under."""

    def __init__(self, bases: Sequence[str]):
        self.bases = list(bases)
        self.chosen: str | None = None

    def __call__(self, path: str) -> str:
        if path.startswith("s3://") or path.startswith("/"):
            return path
        if self.chosen is None:
            for b in self.bases:
                if storage.exists(storage.join(b, path)):
                    self.chosen = b
                    break
            else:
                return storage.join(self.bases[0], path)  # the probe rejects it as missing_file
        return storage.join(self.chosen, path)


def rel(uri: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else uri


# --- readers ---------------------------------------------------------------------------


@dataclass
class ReaderConfig:
    root: str = ""  # the dataset's folder, local or s3://
    limit: int | None = None  # at most this many samples per metadata file (debug runs)
    # more accepted names per field, tried first: e.g. {src: [source_path], tgt: [target_path]}
    fields: dict[str, list[str]] = field(default_factory=dict)
    version: str = ""  # the dataset's version / hub revision, recorded on every sample ("": unknown)


class Reader(ABC):
    name: ClassVar[str]
    task: ClassVar[str]
    config_cls: ClassVar[type[ReaderConfig]]

    FIELD_ATTRS: ClassVar[tuple[str, ...]] = ("SRC", "TGT", "PROMPT", "CATEGORY", "VIDEO", "CAPTION")

    def __init__(self, cfg: ReaderConfig):
        self.cfg = cfg
        self.root = storage.normalize(cfg.root)
        self.skipped: Counter[str] = Counter()  # rows passed over on purpose, by why (reported in the summary)
        self._map_fields(cfg.fields)

    def field_names(self) -> list[str]:
        """The fields whose accepted names ``fields`` extends, for this reader."""
        own = [a.lower() for a in self.FIELD_ATTRS if getattr(type(self), a, None)]
        return own + list(getattr(type(self), "COLS", {}))

    def _map_fields(self, extra: dict[str, list[str]]) -> None:
        for key, names in extra.items():
            if key not in self.field_names():
                raise ValueError(
                    f"{self.name}: fields.{key} is not a field of this reader (known: {self.field_names()})"
                )
            if key.upper() in self.FIELD_ATTRS and getattr(type(self), key.upper(), None):
                setattr(self, key.upper(), tuple(names) + tuple(getattr(type(self), key.upper())))
            else:
                self.COLS = {**self.COLS, key: tuple(names) + tuple(type(self).COLS[key])}

    @abstractmethod
    def units(self) -> list[str]:
        """Metadata files to read, one Ray task each (cheap: a folder listing)."""

    @abstractmethod
    def read_unit(self, unit: str) -> Iterator[RawSample]:
        """Samples of one metadata file."""

    def samples(self, unit: str) -> Iterator[RawSample]:
        for i, s in enumerate(self.read_unit(unit)):
            if self.cfg.limit is not None and i >= self.cfg.limit:
                return
            s.record = s.record or unit
            yield s

    def bad(self, unit: str, line: int | str, detail: str, key: str | None = None) -> RawSample:
        return RawSample(
            self.name,
            self.task,
            key or f"{rel(unit, self.root)}:{line}",
            "",
            "",
            reject_reason="bad_record",
            reject_detail=f"{unit}:{line}: {detail}",
            record=f"{unit}:{line}",
        )

    def _require_units(self, units: list[str], what: str) -> list[str]:
        if not units:
            raise DatasetError(f"{self.name}: no {what} found under {self.root}")
        return units


# Koala-36M ------------------------------------------------------------------------------

_TIME = re.compile(r"(\d+):(\d+):(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)")


def parse_span(text: str) -> tuple[float, float]:
    """Koala's ``timestamp``: ``['0:00:05.005', '0:00:10.010']`` or seconds -> (start, end)."""
    vals = []
    for m in _TIME.finditer(text):
        if m.group(1) is not None:
            vals.append(int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)))
        else:
            vals.append(float(m.group(4)))
    if len(vals) != 2 or vals[1] <= vals[0]:
        raise ValueError(f"timestamp {text!r} is not a [start, end] span")
    return vals[0], vals[1]


def koala_clip_name(video_id: str, start: float, end: float, ext: str = "mp4") -> str:
    """The stable file name of a fetched Koala clip: videoID + span in milliseconds."""
    return f"{video_id}_{round(start * 1000)}-{round(end * 1000)}.{ext}"


@dataclass
class KoalaConfig(ReaderConfig):
    clips: str = ""  # folder of fetched clips (default ROOT/clips), named by koala_clip_name
    require_clips: bool = False  # reject rows whose clip was not fetched (else they are counted as unfetched)


class KoalaReader(Reader):
    config_cls = KoalaConfig
    name = "koala36m"
    task = "t2v"
    COLS = {"videoID": ("videoID", "video_id"), "timestamp": ("timestamp", "span"), "caption": ("caption", "text")}
    SCORES = ("clarity_score", "aesthetic_score", "motion_score", "video_training_suitability_score")

    def __init__(self, cfg: KoalaConfig):
        super().__init__(cfg)
        self.clips = storage.normalize(cfg.clips) if cfg.clips else storage.join(self.root, "clips")
        self._fetched: set[str] | None = None

    def units(self) -> list[str]:
        files = [
            f
            for f in storage.list_files(self.root, ".csv", recursive=False)
            if posixpath.basename(f).startswith("Koala_36M")
        ]
        return self._require_units(files, "Koala_36M_*.csv files")

    def fetched(self) -> set[str]:
        if self._fetched is None:
            self._fetched = {posixpath.basename(u) for u in storage.list_files(self.clips)}
        return self._fetched

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        first = True
        for line, row in read_csv(unit):
            if first:
                require_columns(list(row), self.COLS, unit)
                first = False
            vid, ts, caption = (pick(row, self.COLS[k]) for k in ("videoID", "timestamp", "caption"))
            if not vid or not ts:
                yield self.bad(unit, line, "empty videoID or timestamp")
                continue
            try:
                start, end = parse_span(ts)
            except ValueError as e:
                yield self.bad(unit, line, str(e))
                continue
            name = koala_clip_name(vid, start, end)
            if name not in self.fetched() and not self.cfg.require_clips:
                self.skipped["clip_not_fetched"] += 1
                continue
            extra = {k: float(row[k]) for k in self.SCORES if row.get(k) not in (None, "")}
            extra.update(video_id=vid, start=start, end=end)
            url = row.get("url") or f"https://www.youtube.com/watch?v={vid}"
            yield RawSample(
                self.name,
                self.task,
                name,
                caption or "",
                storage.join(self.clips, name),
                extra=extra,
                record=f"{unit}:{line}",
                origin_url=url,
            )


# MotionBench ------------------------------------------------------------------------------


@dataclass
class MotionBenchConfig(ReaderConfig):
    manifest: str = "train.jsonl"  # relative to root


class MotionBenchReader(Reader):
    config_cls = MotionBenchConfig
    name = "motionbench"
    task = "t2v"
    VIDEO = ("video_path", "video", "path", "video_name", "video_id")
    CAPTION = ("motion_caption", "caption", "text", "description")

    def units(self) -> list[str]:
        uri = storage.join(self.root, self.cfg.manifest)
        return self._require_units([uri] if storage.exists(uri) else [], self.cfg.manifest)

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        resolve_path = BaseResolver([self.root, storage.join(self.root, "videos"), storage.parent(unit)])
        n_ok = n = 0
        for line, rec, raw in read_jsonl(unit):
            n += 1
            if rec is None:
                yield self.bad(unit, line, f"not a JSON object: {raw!r}")
                continue
            path = pick(rec, self.VIDEO)
            if path is None:
                yield self.bad(unit, line, f"no video field; looked for {list(self.VIDEO)}")
                continue
            if not str(path).lower().endswith(tuple(".mp4 .webm .mkv .mov .avi".split())):
                path = f"{path}.mp4"
            n_ok += 1
            uri = resolve_path(str(path))
            caption = pick(rec, self.CAPTION) or ""
            yield RawSample(self.name, self.task, rel(uri, self.root), caption, uri, record=f"{unit}:{line}")
        if n and not n_ok:
            raise DatasetError(f"{unit}: no record has a video field; looked for {list(self.VIDEO)}")


# Paired video edits from CSV (Ditto-1M, OpenVE-3M) ----------------------------------------


class CsvPairReader(Reader):
    """Rows of (source, target, instruction[, category]) in CSV files."""

    task = "video_edit"
    SRC: ClassVar[tuple[str, ...]]
    TGT: ClassVar[tuple[str, ...]]
    PROMPT: ClassVar[tuple[str, ...]] = ("prompt", "instruction", "edit_prompt", "edit_instruction", "text")
    CATEGORY: ClassVar[tuple[str, ...]] = ()

    def bases(self, unit: str) -> list[str]:
        return [self.root, storage.join(self.root, "videos"), storage.parent(unit)]

    def category_of(self, unit: str, row: dict) -> str | None:
        return pick(row, self.CATEGORY) if self.CATEGORY else None

    def keep(self, category: str | None) -> bool:
        return True

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        src_res, tgt_res = BaseResolver(self.bases(unit)), BaseResolver(self.bases(unit))
        first = True
        for line, row in read_csv(unit):
            if first:
                require_columns(
                    list(row), {"source video": self.SRC, "target video": self.TGT, "instruction": self.PROMPT}, unit
                )
                first = False
            category = self.category_of(unit, row)
            if not self.keep(category):  # counted, so a dataset never shrinks silently
                self.skipped[f"category_not_configured:{category}"] += 1
                continue
            src, tgt = pick(row, self.SRC), pick(row, self.TGT)
            if not src or not tgt:
                yield self.bad(unit, line, "empty source or target path")
                continue
            s, t = src_res(src), tgt_res(tgt)
            instr = pick(row, self.PROMPT) or ""
            key = f"{rel(s, self.root)}|{rel(t, self.root)}|{instr}"
            yield RawSample(self.name, self.task, key, instr, t, s, category, record=f"{unit}:{line}")


@dataclass
class DittoConfig(ReaderConfig):
    subsets: list[str] = field(default_factory=lambda: ["global_style1", "global_style2"])  # SAMA: the Style subset
    csv_dir: str = "csvs_for_DiffSynth"


class DittoReader(CsvPairReader):
    config_cls = DittoConfig
    name = "ditto1m"
    SRC = ("src_video", "source_video", "source", "src", "input_video", "original_video")
    TGT = ("tgt_video", "target_video", "edited_video", "target", "tgt", "output_video", "video")

    def units(self) -> list[str]:
        files = storage.list_files(storage.join(self.root, self.cfg.csv_dir), ".csv")
        chosen = [f for f in files if posixpath.splitext(posixpath.basename(f))[0] in self.cfg.subsets]
        return self._require_units(chosen, f"CSVs for subsets {self.cfg.subsets} in {self.cfg.csv_dir}/")

    def category_of(self, unit: str, row: dict) -> str | None:
        return posixpath.splitext(posixpath.basename(unit))[0]


@dataclass
class OpenVEConfig(ReaderConfig):
    categories: list[str] = field(
        default_factory=lambda: ["local_change", "background_change", "global_style", "subtitle_edit"]
    )


class OpenVEReader(CsvPairReader):
    config_cls = OpenVEConfig
    name = "openve3m"
    SRC = ("original_video", "source_video", "src_video", "source")
    TGT = ("video", "edited_video", "target_video", "tgt_video", "target")
    CATEGORY = ("edited_type", "edit_type", "category")

    def units(self) -> list[str]:
        return self._require_units(storage.list_files(self.root, ".csv"), "CSV files")

    def category_of(self, unit: str, row: dict) -> str | None:
        return pick(row, self.CATEGORY) or posixpath.splitext(posixpath.basename(unit))[0]

    def keep(self, category: str | None) -> bool:
        return category in self.cfg.categories


# ReCo-Data -----------------------------------------------------------------------------------


@dataclass
class RecoConfig(ReaderConfig):
    tasks: list[str] = field(default_factory=lambda: ["add", "remove", "replace", "style"])


class RecoReader(Reader):
    config_cls = RecoConfig
    name = "reco"
    task = "video_edit"
    SRC = ("src_video", "source_video", "src_video_path", "src", "source", "src_path", "video")
    TGT = ("tar_video", "tgt_video", "target_video", "tar_video_path", "tar", "target", "tgt", "tar_path")
    PROMPT = ("instruction", "prompt", "edit_instruction", "edit_prompt", "text", "caption")

    def units(self) -> list[str]:
        units = [storage.join(self.root, t, f"{t}_data_configs.json") for t in self.cfg.tasks]
        missing = [u for u in units if not storage.exists(u)]
        if missing:
            raise DatasetError(f"{self.name}: missing task config(s) {missing}")
        return units

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        task_dir = storage.parent(unit)
        category = posixpath.basename(task_dir.rstrip("/"))
        records = json_records(unit)
        if records and not any(pick(r, self.SRC) for r in records if isinstance(r, dict)):
            raise DatasetError(f"{unit}: no source video field; looked for {list(self.SRC)}")
        src_res = BaseResolver([storage.join(task_dir, "src_videos"), task_dir, self.root])
        tgt_res = BaseResolver([storage.join(task_dir, "tar_videos"), task_dir, self.root])
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                yield self.bad(unit, f"record {i}", "not a JSON object")
                continue
            src, tgt = pick(r, self.SRC), pick(r, self.TGT)
            if not src or not tgt:
                yield self.bad(unit, f"record {i}", f"missing source or target; fields {sorted(r)}")
                continue
            s, t = src_res(str(src)), tgt_res(str(tgt))
            instr = str(pick(r, self.PROMPT) or "")
            key = f"{rel(s, self.root)}|{rel(t, self.root)}|{instr}"
            yield RawSample(self.name, self.task, key, instr, t, s, category, record=f"{unit}#record {i}")


# NHR-Edit ---------------------------------------------------------------------------------


@dataclass
class NHREditConfig(ReaderConfig):
    manifest: str = "train/metadata.jsonl"


class NHREditReader(Reader):
    config_cls = NHREditConfig
    name = "nhr_edit"
    task = "image_edit"
    SRC = ("original_image", "source_image", "input_image", "original", "source", "input", "src", "image")
    TGT = ("edited_image", "target_image", "output_image", "edited", "target", "output", "tgt")
    PROMPT = ("instruction", "prompt", "edit_instruction", "edit_prompt", "text")
    CATEGORY = ("edit_type", "category", "type", "task")

    def units(self) -> list[str]:
        uri = storage.join(self.root, self.cfg.manifest)
        return self._require_units([uri] if storage.exists(uri) else [], self.cfg.manifest)

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        bases = [storage.parent(unit), storage.join(storage.parent(unit), "images"), self.root]
        src_res, tgt_res = BaseResolver(bases), BaseResolver(bases)
        n_ok = n = 0
        for line, rec, raw in read_jsonl(unit):
            n += 1
            if rec is None:
                yield self.bad(unit, line, f"not a JSON object: {raw!r}")
                continue
            src, tgt = pick(rec, self.SRC), pick(rec, self.TGT)
            if not src or not tgt:
                yield self.bad(unit, line, f"no source/target image; looked for {list(self.SRC)} / {list(self.TGT)}")
                continue
            n_ok += 1
            s, t = src_res(str(src)), tgt_res(str(tgt))
            instr = str(pick(rec, self.PROMPT) or "")
            extra = {k: rec[k] for k in ("style", "resolution") if k in rec}
            yield RawSample(
                self.name,
                self.task,
                f"{rel(s, self.root)}|{rel(t, self.root)}|{instr}",
                instr,
                t,
                s,
                pick(rec, self.CATEGORY),
                extra,
                record=f"{unit}:{line}",
            )
        if n and not n_ok:
            raise DatasetError(
                f"{unit}: no record names a source and target image; looked for {list(self.SRC)} / {list(self.TGT)}"
            )


# GPT-Image-Edit-1.5M --------------------------------------------------------------------------


@dataclass
class GPTImageEditConfig(ReaderConfig):
    sources: list[str] = field(default_factory=lambda: ["hqedit", "omniedit", "ultraedit"])


class GPTImageEditReader(Reader):
    config_cls = GPTImageEditConfig
    name = "gpt_image_edit"
    task = "image_edit"

    def _base(self) -> str:
        inner = storage.join(self.root, "gpt-edit")
        return inner if storage.list_files(inner) else self.root

    def units(self) -> list[str]:
        base = self._base()
        units = [
            f
            for src in self.cfg.sources
            for f in storage.list_files(storage.join(base, src), ".json")
            if posixpath.basename(posixpath.dirname(f)) == "metadata"
        ]
        return self._require_units(units, f"<source>/<task>/metadata/*.json for sources {self.cfg.sources}")

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        task_dir = storage.parent(storage.parent(unit))
        res = BaseResolver([task_dir, storage.parent(task_dir), self._base(), self.root])
        try:
            records = json_records(unit)
        except DatasetError as e:  # one of many per-sample files: its samples are rejected, not the job
            yield self.bad(unit, "file", str(e))
            return
        for i, r in enumerate(records):
            if not isinstance(r, dict) or not r.get("input") or not r.get("output"):
                yield self.bad(unit, f"record {i}", "missing 'input' or 'output'")
                continue
            s, t = res(str(r["input"])), res(str(r["output"]))
            instr = str(r.get("instruction") or "")
            extra = {k: r[k] for k in ("id", "dataset_source", "instruction_type", "input_description") if k in r}
            yield RawSample(
                self.name,
                self.task,
                f"{rel(s, self.root)}|{rel(t, self.root)}|{instr}",
                instr,
                t,
                s,
                r.get("task") or posixpath.basename(task_dir),
                extra,
                record=f"{unit}#record {i}",
            )


# X2Edit (WebDataset tar shards) ---------------------------------------------------------------


@dataclass
class X2EditConfig(ReaderConfig):
    generators: list[str] = field(default_factory=list)  # sub-folders to read; empty = all


class X2EditReader(Reader):
    config_cls = X2EditConfig
    name = "x2edit"
    task = "image_edit"
    SRC_EXT = (".1.jpg", ".1.png", ".1.webp")
    TGT_EXT = (".2.jpg", ".2.png", ".2.webp")

    def units(self) -> list[str]:
        shards = storage.list_files(self.root, ".tar")
        if self.cfg.generators:
            shards = [s for s in shards if rel(s, self.root).split("/")[0] in self.cfg.generators]
        return self._require_units(shards, ".tar shards")

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        groups: dict[str, dict[str, str]] = {}
        for name in storage.tar_members(unit):
            base = posixpath.basename(name)
            stem, _, ext = base.partition(".")  # WebDataset: key = up to the first dot
            groups.setdefault(posixpath.join(posixpath.dirname(name), stem), {})["." + ext] = name
        for key, parts in sorted(groups.items()):
            src = next((parts[e] for e in self.SRC_EXT if e in parts), None)
            tgt = next((parts[e] for e in self.TGT_EXT if e in parts), None)
            skey = f"{rel(unit, self.root)}::{key}"
            if not src or not tgt:
                yield self.bad(
                    unit, key, f"sample lacks {'.1.jpg' if not src else '.2.jpg'} (has {sorted(parts)})", skey
                )
                continue
            meta: dict = {}
            if ".json" in parts:
                try:
                    meta = json.loads(storage.read_bytes(f"{unit}::{parts['.json']}"))
                except json.JSONDecodeError:
                    meta = {}
            instr = str(meta.get("instruction") or meta.get("prompt") or "") if isinstance(meta, dict) else ""
            if not instr and ".txt" in parts:
                text = storage.read_text(f"{unit}::{parts['.txt']}")
                instr = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
            extra = {k: meta[k] for k in ("score", "task", "edit_type") if isinstance(meta, dict) and k in meta}
            category = extra.get("task") or extra.get("edit_type") or rel(unit, self.root).split("/")[0]
            tgt_uri, src_uri = f"{unit}::{tgt}", f"{unit}::{src}"
            yield RawSample(
                self.name, self.task, skey, instr, tgt_uri, src_uri, str(category), extra, record=f"{unit}::{key}"
            )


# Pico-Banana-400K ---------------------------------------------------------------------------


@dataclass
class PicoBananaConfig(ReaderConfig):
    manifests: list[str] = field(default_factory=lambda: ["sft.jsonl"])
    sources: str = ""  # folder of fetched Open Images sources, named by the URL's file name (default ROOT/sources)


class PicoBananaReader(Reader):
    config_cls = PicoBananaConfig
    name = "pico_banana"
    task = "image_edit"
    SRC = ("open_image_input_url", "input_image_url", "source_url", "input_image", "source_image")
    TGT = ("output_image", "output_image_path", "edited_image", "target_image")
    PROMPT = ("text", "instruction", "prompt", "edit_instruction")

    def units(self) -> list[str]:
        return manifest_files(self.name, self.root, self.cfg.manifests)

    def read_unit(self, unit: str) -> Iterator[RawSample]:
        sources = storage.normalize(self.cfg.sources) if self.cfg.sources else storage.join(self.root, "sources")
        tgt_res = BaseResolver([self.root, storage.join(self.root, "images"), storage.parent(unit)])
        for line, rec, raw in read_jsonl(unit):
            if rec is None:
                yield self.bad(unit, line, f"not a JSON object: {raw!r}")
                continue
            src, tgt = pick(rec, self.SRC), pick(rec, self.TGT)
            if not src or not tgt:
                yield self.bad(
                    unit, line, f"no source URL / output image; looked for {list(self.SRC)} / {list(self.TGT)}"
                )
                continue
            s = storage.join(sources, posixpath.basename(str(src).split("?")[0]))
            t = tgt_res(str(tgt))
            instr = str(pick(rec, self.PROMPT) or "")
            extra = {
                "source_url": src,
                **({"summarized_text": rec["summarized_text"]} if rec.get("summarized_text") else {}),
            }
            yield RawSample(
                self.name,
                self.task,
                f"{src}|{rel(t, self.root)}|{instr}",
                instr,
                t,
                s,
                rec.get("edit_type"),
                extra,
                record=f"{unit}:{line}",
                origin_url=str(src) if str(src).startswith(("http://", "https://")) else None,
            )


# --- registry ------------------------------------------------------------------------------

READERS: dict[str, type[Reader]] = {
    r.name: r
    for r in (
        KoalaReader,
        MotionBenchReader,
        DittoReader,
        OpenVEReader,
        RecoReader,
        NHREditReader,
        GPTImageEditReader,
        X2EditReader,
        PicoBananaReader,
    )
}


@dataclass
class DatasetsConfig:
    """Which datasets to read; a dataset left null is skipped."""

    koala36m: KoalaConfig | None = None
    motionbench: MotionBenchConfig | None = None
    ditto1m: DittoConfig | None = None
    openve3m: OpenVEConfig | None = None
    reco: RecoConfig | None = None
    nhr_edit: NHREditConfig | None = None
    gpt_image_edit: GPTImageEditConfig | None = None
    x2edit: X2EditConfig | None = None
    pico_banana: PicoBananaConfig | None = None

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            c = getattr(self, f.name)
            if c is not None and not c.root:
                raise ValueError(f"datasets.{f.name}.root is empty")

    def readers(self) -> list[Reader]:
        return [
            READERS[f.name](getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        ]
