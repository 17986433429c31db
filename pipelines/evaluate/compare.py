"""Comparison of two evaluation runs (two checkpoints on the same benchmark).

Reads the results tables of two ``evaluate`` outputs, writes the per-category deltas
(``compare.parquet``: category, metric, a, b, delta = b - a, which is better) and a
report with source | edit a | edit b for every item both runs edited. Sheets are named
by the two runs' edit digests, so a rerun reuses them and a new run replaces them.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from sama import storage
from sama.config import JobConfig, JobEntry
from sama.media import read_frames

from .job import ReportConfig, aligned_clips, contact_sheet, item_key, read_results
from .tables import by_category, compare_tables, deltas_wide, format_table

log = logging.getLogger(__name__)


@dataclass
class CompareConfig:
    a: str = ""  # output folder of one evaluate run (the baseline)
    b: str = ""  # output folder of the other (the candidate): delta = b - a
    report: ReportConfig = field(default_factory=ReportConfig)
    threads: int = 4  # decode threads for the side-by-side sheets

    def validate(self) -> None:
        if not self.a or not self.b:
            raise ValueError("compare.a and compare.b must both name evaluate output folders")


@dataclass
class CompareJobConfig(JobConfig):
    job: str = "evaluate_compare"
    output: str = "outputs/evaluate_compare"
    compare: CompareConfig = field(default_factory=CompareConfig)


def _labels(ra: pd.DataFrame, rb: pd.DataFrame) -> tuple[str, str]:
    la, lb = (str(r["model"].iloc[0]) if len(r) else "?" for r in (ra, rb))
    return (f"{la} (a)", f"{lb} (b)") if la == lb else (la, lb)


def _scores(r, side: str) -> str:
    """Headline numbers of one side (``_a`` / ``_b`` columns of a paired row)."""
    vals = {m: getattr(r, m + side) for m in ("temporal_consistency", "motion_preservation", "fidelity_psnr")}
    vals.update(dict(getattr(r, "judge_scores" + side) or []))
    return ", ".join(f"{k}={v:.2f}" for k, v in vals.items() if v is not None and not pd.isna(v))


def run(cfg: CompareJobConfig) -> dict:
    c = cfg.compare
    ra, rb = read_results(c.a), read_results(c.b)
    labels = _labels(ra, rb)
    long = compare_tables(by_category(ra), by_category(rb))
    storage.write_parquet(storage.join(cfg.output, "compare.parquet"), pa.Table.from_pandas(long, preserve_index=False))
    pairs = ra.merge(rb, on="item_id", suffixes=("_a", "_b"))
    pairs = pairs[pairs.edit_uri_a.notna() & pairs.edit_uri_b.notna()].sort_values(["category_a", "item_id"])
    sheets = storage.join(cfg.output, "report", "sheets")
    items, wanted = [], set()
    if c.report.enabled:

        def sheet(r) -> dict:
            name = item_key(r.item_id, f"{r.edit_digest_a}-{r.edit_digest_b}") + ".jpg"
            uri = storage.join(sheets, name)
            if not storage.exists(uri):
                row = {
                    "edit_uri": r.edit_uri_a,
                    "frames": int(r.frames_a),
                    "source_uri": r.source_uri_a,
                    "mask_uri": None,
                }
                src, ea, _ = aligned_clips(row, int(r.frames_a), None)
                eb = read_frames(r.edit_uri_b, indices=list(range(int(r.frames_b))))
                caption = f"{r.item_id} [{r.category_a}] {r.instruction_a}"
                storage.write_bytes(
                    uri,
                    contact_sheet(
                        [("source", src), (labels[0], ea), (labels[1], eb)], caption, c.report.frames, c.report.thumb
                    ),
                )
            return {
                "item_id": r.item_id,
                "category": r.category_a,
                "instruction": r.instruction_a,
                "sheet": name,
                "scores": f"a: {_scores(r, '_a')} | b: {_scores(r, '_b')}",
            }

        with ThreadPoolExecutor(c.threads) as pool:
            items = list(pool.map(sheet, pairs.itertuples(index=False)))
        wanted = {it["sheet"] for it in items}
    for f in storage.list_files(sheets, ".jpg", recursive=False):
        if storage.basename(f) not in wanted:
            storage.delete(f)
    summary = {
        "a": c.a,
        "b": c.b,
        "labels": list(labels),
        "paired_items": len(pairs),
        "only_a": int((~ra.item_id.isin(rb.item_id)).sum()),
        "only_b": int((~rb.item_id.isin(ra.item_id)).sum()),
        "deltas": json.loads(deltas_wide(long).to_json(orient="index")) if len(long) else {},
    }
    if c.report.enabled:
        from .report import write_compare_report

        summary["report"] = write_compare_report(cfg.output, long, labels, items)
    storage.write_text(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2))
    print(format_table(deltas_wide(long), f"delta (b - a): a = {labels[0]}, b = {labels[1]}"))
    print(f"paired items: {len(pairs)}  only in a: {summary['only_a']}  only in b: {summary['only_b']}")
    print(f"deltas: {storage.join(cfg.output, 'compare.parquet')}\nreport: {summary.get('report', '-')}")
    return summary


JOB = JobEntry(CompareJobConfig, run)
