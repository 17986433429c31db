"""The stage contract and its runner: the one shape of every batch job here.

A **stage** cuts a job into **parts**, named units of work (a listing chunk, a slice of a
manifest, a benchmark item, a sample) whose outputs are files named after them, so a rerun
overwrites instead of duplicating. A stage declares

- ``tables``: its output tables, each a ``sama.schemas`` schema, a folder and how its rows
  count in the summary (:class:`Table`);
- ``plan()``: the parts the current input and config ask for;
- ``digest()``: what decides a part's outputs (a change redoes the parts);
- ``process(part)``: one part -> rows per table. A failed item is a row carrying its
  reason, never an exception;

and may override ``execute`` (how parts run: Ray Data tasks by default; precompute and
evaluate stream through GPU actor pools and commit from their last step), ``finished``
(when a committed part counts as done), ``summarize`` (what the summary adds), ``report``
(what is printed) and ``dry_run``.

:func:`run_stage` owns what every job used to repeat: it removes the outputs of parts no longer
planned, skips finished parts, writes each part's tables then its **done marker** (each
file atomically; the marker last, so a part is either done or redone), builds the summary
from the markers (``summary.json`` and a printed count table) and shows progress.
:func:`dry_run_stage` says what a run would do without doing it.

A commit usually covers one part. Precompute packs many samples (parts) into one shard; its
commits name the parts they cover, and a commit covering any part no longer planned is
removed whole (its other samples are then simply redone).

Layout under a stage's ``output``::

    <table folder>/<commit>.parquet        one file per table and commit
    _work/done/<stage>/<commit>.json       its marker: digest, parts covered, counts, stats
"""

from __future__ import annotations

import json
import logging
import posixpath
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from sama import storage
from sama.provenance import record
from sama.schemas import TableSchema
from sama.storage import StorageError

log = logging.getLogger(__name__)

ALL = "all"  # the dataset of rows in a table without a dataset column


@dataclass(frozen=True)
class Part:
    """One unit of work: ``name`` names its outputs (``/`` makes subfolders); ``spec`` is
    what the worker needs to do it (any picklable value)."""

    name: str
    spec: Any = None


@dataclass(frozen=True)
class Table:
    """One output table of a stage: ``<output>/<folder>/<commit>.parquet`` in ``schema``, and
    how its rows count in the summary (per dataset): each row under ``status`` or under its
    value in ``status_column``; its reasons (a string or a list) unless its status is ``ok``."""

    schema: TableSchema
    folder: str
    status: str | None = None
    status_column: str | None = None
    statuses: tuple[str, ...] = ()  # shown even when none has them
    reason_column: str | None = None
    ok: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # "no decision could be had": the part is redone (``retry_errors``)
    totals: tuple[str, ...] = ()  # numeric columns summed per dataset
    breakdown: tuple[str, ...] = ()  # columns whose values are counted per dataset
    row_group_size: int | None = None
    write_empty: bool = True  # False: a commit without rows for this table writes no file

    def uri(self, output: str, commit: str) -> str:
        return storage.join(output, *self.folder.split("/"), f"{commit}.parquet")

    def count(self, table: pa.Table, into: Counts) -> None:
        """Add ``table``'s rows to ``into`` (nothing for a table that declares no status)."""
        if self.status is None and self.status_column is None:
            return
        n = table.num_rows

        def column(name: str) -> list:
            return table[name].to_pylist() if name in table.column_names else [None] * n

        datasets = column("dataset") if "dataset" in table.column_names else [ALL] * n
        statuses = column(self.status_column) if self.status_column else [self.status] * n
        reasons = column(self.reason_column) if self.reason_column else [None] * n
        for i, (dataset, status) in enumerate(zip(datasets, statuses)):
            entry = into.entry(dataset or ALL, self)
            entry["status"][status] += 1
            why = reasons[i]
            if status not in self.ok and why:
                entry["reasons"].update(why if isinstance(why, list) else [why])
        for col in self.totals:
            for dataset, value in zip(datasets, column(col)):
                into.entry(dataset or ALL, self)["totals"][col] += value or 0
        for col in self.breakdown:
            for dataset, value in zip(datasets, column(col)):
                into.entry(dataset or ALL, self)["breakdown"][col][str(value)] += 1


class Counts(dict):
    """dataset -> {"status": Counter, "reasons": Counter, "totals": Counter, "breakdown": {col: Counter}}."""

    def entry(self, dataset: str, table: Table | None = None) -> dict:
        if dataset not in self:
            self[dataset] = {
                "status": Counter(),
                "reasons": Counter(),
                "totals": Counter(),
                "breakdown": defaultdict(Counter),
            }
        entry = self[dataset]
        if table is not None:
            for s in table.statuses:
                entry["status"].setdefault(s, 0)
            for c in table.totals:
                entry["totals"].setdefault(c, 0)
        return entry

    def merge(self, other: Mapping[str, dict]) -> None:
        for dataset, theirs in other.items():
            mine = self.entry(dataset)
            for key in ("status", "reasons", "totals"):
                mine[key].update(theirs.get(key, {}))
            for col, values in theirs.get("breakdown", {}).items():
                mine["breakdown"][col].update(values)

    def as_json(self) -> dict:
        return {
            d: {
                "status": dict(e["status"]),
                "reasons": dict(e["reasons"]),
                "totals": dict(e["totals"]),
                "breakdown": {c: dict(v) for c, v in e["breakdown"].items()},
            }
            for d, e in sorted(self.items())
        }


@dataclass
class Marker:
    """What a commit wrote, as its done marker says: written last, so its presence means the
    commit's files are complete."""

    name: str
    digest: str
    covers: list[str]
    counts: dict = field(default_factory=dict)  # Counts.as_json()
    stats: dict = field(default_factory=dict)  # this commit's numbers (requests made, bytes fetched...)
    meta: dict = field(default_factory=dict)  # what the stage keeps (e.g. listing chunks, skipped rows)

    def status_count(self, *statuses: str) -> int:
        return sum(e["status"].get(s, 0) for e in self.counts.values() for s in statuses)

    def reason_count(self, *reasons: str) -> int:
        return sum(e["reasons"].get(r, 0) for e in self.counts.values() for r in reasons)


class Stage(ABC):
    """A batch job cut into parts (see the module docstring). Subclasses set ``name`` and
    ``tables`` and implement ``plan`` and ``process`` (or ``execute``)."""

    name: ClassVar[str]
    tables: ClassVar[Mapping[str, Table]]
    files: ClassVar[Mapping[str, tuple[str, ...]]] = {}  # other per-commit files: folder -> suffixes
    task_cpus: float = 1.0
    retry_errors: bool = True

    def __init__(self, output: str):
        self.output = output

    # -- what a stage says -------------------------------------------------------------------

    @abstractmethod
    def plan(self) -> list[Part]:
        """Every part the current input and config ask for (finished or not)."""

    def digest(self) -> str:
        """What decides a part's outputs; a committed part with another digest is redone."""
        return ""

    def inputs(self) -> list[str | tuple[str, str]]:
        """The URIs this stage reads, or (URI, digest) pairs: the summary's provenance records
        a digest of each (by default of every file under the URI)."""
        return []

    def config_digest(self) -> str:
        """The settings behind the outputs, for the summary's provenance (default: ``digest()``)."""
        return self.digest()

    def provenance(self) -> dict[str, Any]:
        """More facts for the summary's provenance block (e.g. the judge and rubric versions)."""
        return {}

    def process(self, part: Part) -> dict[str, Any]:
        """One part -> {table: rows (dicts) or an Arrow table}, plus optionally ``"stats"``
        (numbers summed over the run) and ``"meta"`` (kept in the marker)."""
        raise NotImplementedError(f"{type(self).__name__} neither processes parts nor overrides execute")

    def execute(self, todo: list[Part]) -> list[Marker]:
        """Run ``todo``: by default one Ray Data task per part (progress from Ray Data)."""
        return map_parts(todo, lambda p: self.commit(p.name, [p.name], self.process(p)), self.task_cpus, self.name)

    def finished(self, marker: Marker) -> bool:
        errors = [s for t in self.tables.values() for s in t.errors]
        return marker.digest == self.digest() and not (self.retry_errors and errors and marker.status_count(*errors))

    def summarize(self, summary: dict, markers: Mapping[str, Marker]) -> None:  # noqa: B027 - optional hook
        """Add the stage's own keys to ``summary`` (in place)."""

    def report(self, summary: dict) -> None:
        """Print the end-of-run summary: the count table and where the outputs are."""
        columns = {s: (lambda s_: lambda d: d.get(s_, 0))(s) for s in _columns(summary["datasets"])}
        if columns:
            print(count_table(summary["datasets"], columns))
        print(f"{self.name}: parts run {summary['parts_run']}/{summary['parts']}")
        for table in self.tables.values():
            if not table.folder.startswith("_"):
                print(f"{table.folder}: {storage.join(self.output, table.folder)}")

    def dry_run(self) -> list[str]:
        return []

    # -- what the runner does ----------------------------------------------------------------

    def marker_uri(self, commit: str) -> str:
        return storage.join(self.output, "_work", "done", self.name, f"{commit}.json")

    def commit(self, name: str, covers: Sequence[str], result: Mapping[str, Any]) -> Marker:
        """Write a commit's tables (each file atomically), then its marker. Runs on workers."""
        counts = Counts()
        for key, table in self.tables.items():
            rows = result.get(key, [])
            groups = None
            if isinstance(rows, pa.Table):
                data = rows
            elif rows and isinstance(rows[0], pa.Table):  # row groups, written as such
                groups = [g.cast(table.schema.with_metadata()) for g in rows]
                data = pa.concat_tables(groups)
            else:
                data = table.schema.table(rows)
            table.count(data, counts)
            if not data.num_rows and not table.write_empty:
                continue
            kwargs = {"row_group_size": table.row_group_size} if table.row_group_size and not groups else {}
            storage.write_parquet(table.uri(self.output, name), groups or data, **kwargs)
        marker = Marker(
            name,
            self.digest(),
            list(covers),
            counts.as_json(),
            dict(result.get("stats", {})),
            dict(result.get("meta", {})),
        )
        storage.write_text(self.marker_uri(name), json.dumps(asdict(marker)))
        return marker

    def markers(self) -> dict[str, Marker]:
        """Every committed marker (read in threads: on S3 each is a request)."""
        uris = storage.list_files(storage.join(self.output, "_work", "done", self.name), ".json")
        with ThreadPoolExecutor(16) as pool:
            markers = list(pool.map(lambda uri: Marker(**json.loads(storage.read_text(uri))), uris))
        return {m.name: m for m in markers}

    def delete(self, commit: str) -> int:
        uris = [t.uri(self.output, commit) for t in self.tables.values()] + [self.marker_uri(commit)]
        uris += [
            storage.join(self.output, *folder.split("/"), commit + suffix)
            for folder, suffixes in self.files.items()
            for suffix in suffixes
        ]
        removed = 0
        for uri in uris:
            if storage.exists(uri):
                storage.delete(uri)
                removed += 1
        return removed

    def orphans(self, keep: set[str]) -> list[str]:
        """Files in the stage's folders that no kept commit or planned part names (a crash
        between a file and its marker, a part an earlier config planned)."""
        found = []
        folders = [(t.folder, (".parquet",)) for t in self.tables.values()] + list(self.files.items())
        for folder, suffixes in folders:
            base = storage.join(self.output, *folder.split("/"))
            for uri in storage.list_files(base, tuple(suffixes)):
                rel = posixpath.relpath(storage.filesystem(uri)[1], storage.filesystem(base)[1])
                stem = next(rel[: -len(s)] for s in suffixes if rel.endswith(s))
                if stem not in keep:
                    found.append(uri)
        return found


def _columns(datasets: Mapping[str, dict]) -> list[str]:
    seen: dict[str, None] = {}
    for entry in datasets.values():
        for k, v in entry.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.setdefault(k)
    return list(seen)


# --- the runner ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What :func:`run_stage` did: the summary it wrote and every planned part's marker."""

    summary: dict
    markers: dict[str, Marker]
    parts: list[Part]


@dataclass
class _Plan:
    parts: list[Part]
    kept: dict[str, Marker]  # finished commits of planned parts
    stale: list[str]  # commits to remove
    orphans: list[str]
    todo: list[Part]


def _resolve(stage: Stage) -> _Plan:
    parts = stage.plan()
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        dup = next(n for n, c in Counter(names).items() if c > 1)
        raise ValueError(f"{stage.name}: two parts are both named {dup!r}")
    planned = set(names)
    kept, stale, done = {}, [], set()
    for name, marker in stage.markers().items():
        finished = stage.finished(marker)
        if not set(marker.covers) <= planned:
            stale.append(name)
        elif finished or name in planned:  # a planned part that is not finished is overwritten
            kept[name] = marker
            done.update(marker.covers if finished else ())
        else:
            stale.append(name)
    orphans = stage.orphans(planned | set(kept))
    return _Plan(parts, kept, stale, orphans, [p for p in parts if p.name not in done])


def run_stage(stage: Stage, write_summary: bool = True) -> Outcome:
    """Run a stage: clear stale outputs, run the parts not finished, summarize from the markers."""
    plan = _resolve(stage)
    removed = sum(stage.delete(name) for name in plan.stale)
    for uri in plan.orphans:
        storage.delete(uri)
    if removed or plan.orphans:
        log.warning("%s: removed %d file(s) of parts no longer planned", stage.name, removed + len(plan.orphans))
    log.info("%s: %d of %d part(s) to run", stage.name, len(plan.todo), len(plan.parts))
    new = stage.execute(plan.todo) if plan.todo else []
    markers = {**{n: m for n, m in plan.kept.items()}, **{m.name: m for m in new}}
    summary = summarize(markers.values(), new, stage.tables.values())
    summary.update(parts=len(plan.parts), parts_run=len(plan.todo))
    stage.summarize(summary, markers)
    summary["provenance"] = record(stage.name, stage.config_digest(), stage.inputs(), **stage.provenance())
    uri = storage.join(stage.output, "summary.json")
    if not write_summary:
        pass  # a stage feeding another (ingest's listing): the next one summarizes
    elif unchanged_rerun(uri, summary, ran=bool(plan.todo or removed or plan.orphans)):
        log.info("%s: every part finished before; nothing written", stage.name)  # e.g. a read-only copy
    else:
        storage.write_text(uri, json.dumps(summary, indent=2, default=str))
        stage.report(summary)
    return Outcome(summary, markers, plan.parts)


def unchanged_rerun(uri: str, summary: dict, ran: bool) -> bool:
    """Nothing ran and the summary on storage already says the same (same counts, same config,
    code and inputs): then a rerun writes nothing, so a finished output can be read-only."""
    if ran or not storage.exists(uri):
        return False
    before = json.loads(storage.read_text(uri))
    return all(before.get(k) == json.loads(json.dumps(summary.get(k), default=str)) for k in ("datasets", "provenance"))


def dry_run_stage(stage: Stage) -> list[str]:
    """What :func:`run_stage` would do (reads the input's listing, writes nothing)."""
    try:
        plan = _resolve(stage)
    except Exception as e:  # noqa: BLE001 - e.g. the input is not written yet, or no credentials here
        lines = [f"{stage.name}: parts not planned yet ({e})"]
    else:
        lines = [
            f"{stage.name}: {len(plan.parts)} part(s) planned, {len(plan.parts) - len(plan.todo)} finished, "
            f"{len(plan.todo)} to run; {len(plan.stale) + len(plan.orphans)} stale output(s) to remove"
        ]
    return lines + stage.dry_run()


def summarize(markers: Iterable[Marker], this_run: Iterable[Marker], tables: Iterable[Table] = ()) -> dict:
    """``{"datasets": {dataset: {status: n, total: x, "reasons": {...}, column: {value: n}}}}``
    over every commit (every status and total the tables declare, even at 0), plus this
    run's stats summed (numbers and nested counts)."""
    counts = Counts()
    for m in markers:
        counts.merge(m.counts)
    for dataset in list(counts):
        for table in tables:
            counts.entry(dataset, table)
    datasets = {}
    for dataset, entry in sorted(counts.items()):
        datasets[dataset] = {
            **entry["status"],
            **entry["totals"],
            "reasons": dict(sorted(entry["reasons"].items())),
            **{c: dict(sorted(v.items())) for c, v in entry["breakdown"].items()},
        }
    return {"datasets": datasets, **add_stats(m.stats for m in this_run)}


def add_stats(stats: Iterable[Mapping[str, Any]]) -> dict:
    """Sum numbers key by key, recursively through dicts."""
    out: dict[str, Any] = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, Mapping):
                out[k] = add_stats([out.get(k, {}), v])
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
    return out


def map_parts(parts: Sequence[Any], fn, cpus: float, label: str, **ray_args) -> list:
    """``fn(part)`` for every part as Ray Data tasks; returns the results (any picklable
    values: rows carry Python objects, not JSON). Progress bars come from Ray Data."""
    if not parts:
        return []
    import ray

    ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True  # objects, quietly
    ds = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=len(parts))
    log.info("%s: %d task(s)", label, len(parts))
    ray_args.setdefault("ray_remote_args_fn", storage_retry)
    return [r["out"] for r in ds.map(lambda row: {"out": fn(row["part"])}, num_cpus=cpus, **ray_args).take_all()]


# A task that ran out of storage retries (sama.storage) is run again by Ray: a slow stretch of
# the storage must not end a job of hours. Other errors are the part's own and fail it at once.
def storage_retry() -> dict[str, Any]:
    """Ray remote args for a Ray Data operator's tasks (its ``ray_remote_args_fn``)."""
    return {"max_retries": 3, "retry_exceptions": [StorageError]}


def count_table(
    summary: Mapping[str, dict],
    columns: Mapping[str, Callable[[dict], float]],
    total: bool = True,
    note: Callable[[dict], str] = lambda s: "",
) -> str:
    """A job's end-of-run table: one line per dataset with its counts and its reasons
    (``s["reasons"]``: reason -> count), then the column totals."""
    widths = [max(len(h), 8) for h in columns]

    def line(name: str, cells: list, tail: str = "") -> str:
        cells = [f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells]
        return f"{name:<16} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)) + (f"  {tail}" if tail else "")

    lines = [line("dataset", list(columns), "reasons")]
    for name, s in summary.items():
        reasons = ", ".join(f"{k}={v}" for k, v in s.get("reasons", {}).items()) or "-"
        lines.append(line(name, [f(s) for f in columns.values()], reasons + note(s)))
    if total:
        lines.append(line("total", [sum(f(s) for s in summary.values()) for f in columns.values()]))
    return "\n".join(lines)
