"""N systems side by side: any number of evaluate runs on the same benchmark.

Reads each run's results table and writes

- ``leaderboard.parquet`` / ``.csv``: per system, category (and ``overall``) and metric the
  mean, its 95% bootstrap interval and ``n`` (the items with a value); ``items`` and
  ``errors`` count what each system has;
- ``win_rates.parquet`` / ``.csv``: per metric and pair of systems, over the items both
  have a value for: wins, losses, ties and the win rate (ties count half);
- ``report/index.html``: the leaderboard, the win-rate matrix of the headline metric and,
  per item, a contact sheet source | system 1 | system 2 | ... [| target], the items
  sortable by any metric of any system.

Sheets are named by the systems' edit digests, so a rerun reuses them and a new set of
runs replaces them. Every system's edit is put on the source's grid (``align.py``).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from sama import storage
from sama.config import JobConfig, JobEntry

from .align import AlignConfig, AlignmentError, align_brought
from .config import ReportConfig, item_key
from .job import read_results
from .scoring import contact_sheet
from .tables import LOWER_IS_BETTER, METRICS, NEUTRAL, judge_columns

log = logging.getLogger(__name__)

HEADLINE = ("gt_psnr", "motion_preservation", "temporal_consistency")  # the default, first one present


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)  # evaluate output folders, one per system (two or more)
    metric: Optional[str] = None  # the headline metric (win-rate matrix, sort order); null: the first of HEADLINE
    bootstrap: int = 1000  # resamples for the 95% intervals
    seed: int = 0
    report: ReportConfig = field(default_factory=ReportConfig)
    threads: int = 4  # decode threads for the side-by-side sheets

    def validate(self) -> None:
        if len(self.runs) < 2:
            raise ValueError(f"compare.runs: name two or more evaluate output folders (got {len(self.runs)})")
        if len(set(self.runs)) != len(self.runs):
            raise ValueError("compare.runs: a folder is named twice")


@dataclass
class CompareJobConfig(JobConfig):
    job: str = "evaluate_compare"
    output: str = "outputs/evaluate_compare"
    compare: CompareConfig = field(default_factory=CompareConfig)


def load_runs(folders: list[str]) -> pd.DataFrame:
    """Every run's results, one ``system`` column; two runs of one system get their folder names."""
    frames = []
    for folder in folders:
        results = read_results(folder)
        results["system"] = str(results["model"].iloc[0]) if len(results) else storage.basename(folder)
        results["run"] = folder
        frames.append(results)
    names = [f["system"].iloc[0] if len(f) else "" for f in frames]
    for f, folder in zip(frames, folders):
        if names.count(f["system"].iloc[0] if len(f) else "") > 1:
            f["system"] = f"{f['system'].iloc[0]} ({storage.basename(folder.rstrip('/'))})"
    return pd.concat(frames, ignore_index=True)


def scores(results: pd.DataFrame) -> pd.DataFrame:
    """system, item, category + one float column per metric (automatic and judged)."""
    numeric = results[list(METRICS)].astype("float64")
    return pd.concat([results[["system", "item_id", "category"]], numeric, judge_columns(results)], axis=1)


def bootstrap_interval(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def leaderboard(results: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
    """Long form: system, category (+ overall), metric, mean, ci_low, ci_high, n."""
    table = scores(results)
    metrics = [c for c in table.columns[3:] if table[c].notna().any()]
    rng = np.random.default_rng(seed)
    rows = []
    for system, mine in table.groupby("system", sort=False):
        ran = results[results.system == system]
        for category, group in [*mine.groupby("category"), ("overall", mine)]:
            in_cat = ran if category == "overall" else ran[ran.category == category]
            rows.append([system, category, "items", float(len(in_cat)), None, None, len(in_cat)])
            rows.append([system, category, "errors", float((in_cat.status != "ok").sum()), None, None, len(in_cat)])
            for metric in metrics:
                values = group[metric].dropna().to_numpy()
                if len(values):
                    low, high = bootstrap_interval(values, resamples, rng)
                    rows.append([system, category, metric, float(values.mean()), low, high, len(values)])
    return pd.DataFrame(rows, columns=["system", "category", "metric", "mean", "ci_low", "ci_high", "n"])


def win_rates(results: pd.DataFrame) -> pd.DataFrame:
    """Per metric (with a direction) and ordered pair of systems, over their shared items."""
    table = scores(results)
    systems = list(dict.fromkeys(table.system))
    rows = []
    for metric in [c for c in table.columns[3:] if table[c].notna().any() and c not in NEUTRAL]:
        wide = table.pivot_table(index="item_id", columns="system", values=metric, aggfunc="first")
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        for a in systems:
            for b in systems:
                if a == b or a not in wide or b not in wide:
                    continue
                both = wide[[a, b]].dropna()
                diff = sign * (both[a] - both[b])
                wins, losses, n = int((diff > 0).sum()), int((diff < 0).sum()), len(both)
                rate = (wins + 0.5 * (n - wins - losses)) / n if n else None
                rows.append([metric, a, b, wins, losses, n - wins - losses, n, rate])
    return pd.DataFrame(rows, columns=["metric", "system", "opponent", "wins", "losses", "ties", "items", "win_rate"])


def headline(cfg: CompareConfig, board: pd.DataFrame) -> str | None:
    present = set(board.metric)
    if cfg.metric:
        if cfg.metric not in present:
            raise ValueError(f"compare.metric={cfg.metric!r}: no run has it (known: {sorted(present)})")
        return cfg.metric
    return next((m for m in HEADLINE if m in present), None)


def write_table(output: str, name: str, table: pd.DataFrame) -> str:
    storage.write_parquet(storage.join(output, f"{name}.parquet"), pa.Table.from_pandas(table, preserve_index=False))
    storage.write_text(storage.join(output, f"{name}.csv"), table.to_csv(index=False))
    return storage.join(output, f"{name}.parquet")


def item_sheets(cfg: CompareConfig, results: pd.DataFrame, output: str) -> list[dict]:
    """One sheet per item at least one system edited: source | each system's edit [| target]."""
    sheets = storage.join(output, "report", "sheets")
    systems = list(dict.fromkeys(results.system))
    grid = AlignConfig(max_side=2 * cfg.report.thumb, min_coverage=0.0)
    table = scores(results).set_index(["item_id", "system"])
    items = []
    for item_id, rows in results.groupby("item_id", sort=True):
        edited = rows[rows.edit_uri.notna()]
        if edited.empty:
            continue
        first = rows.iloc[0]
        digests = "-".join(str(d) for d in edited.sort_values("system").edit_digest)
        values = {}
        for system in rows.system:
            for metric, value in table.loc[(item_id, system)].drop("category").items():
                if pd.notna(value):
                    values[f"{metric} · {system}"] = float(value)
        sheet = item_key(item_id, storage.content_digest(digests, n=10)) + ".jpg"
        items.append(
            {
                "item_id": item_id,
                "category": first.category,
                "instruction": first.instruction,
                "edited": edited,
                "first": first,
                "sheet": sheet,
                "values": values,
            }
        )

    def draw(item: dict) -> None:
        uri = storage.join(sheets, item["sheet"])
        if storage.exists(uri):
            return
        first, lines = item["first"], []
        for system in systems:
            row = item["edited"][item["edited"].system == system]
            if row.empty:
                continue
            spec = {
                "source_uri": first.source_uri,
                "edit_uri": row.iloc[0].edit_uri,
                "mask_uri": None,
                "target_uri": first.target_uri if isinstance(first.target_uri, str) else None,
            }
            try:
                clips = align_brought(spec, grid)
            except (AlignmentError, OSError) as err:
                log.warning("compare: no sheet row for %s of %s: %s", system, item["item_id"], err)
                continue
            if not lines:
                lines.append(("source", clips.source))
            lines.append((system, clips.edit))
            if clips.target is not None and system == systems[-1]:
                lines.append(("target", clips.target))
        if lines:
            caption = f"{item['item_id']} [{first.category}] {first.instruction}"
            storage.write_bytes(uri, contact_sheet(lines, caption, cfg.report.frames, cfg.report.thumb))

    with ThreadPoolExecutor(cfg.threads) as pool:
        list(pool.map(draw, items))
    wanted = {it["sheet"] for it in items}
    for f in storage.list_files(sheets, ".jpg", recursive=False):
        if storage.basename(f) not in wanted:
            storage.delete(f)
    return items


def run(cfg: CompareJobConfig) -> dict:
    c = cfg.compare
    results = load_runs(c.runs)
    systems = list(dict.fromkeys(results.system))
    board = leaderboard(results, c.bootstrap, c.seed)
    wins = win_rates(results)
    main = headline(c, board)
    write_table(cfg.output, "leaderboard", board)
    write_table(cfg.output, "win_rates", wins)
    overall = board[board.category == "overall"]
    summary = {
        "runs": c.runs,
        "systems": systems,
        "metric": main,
        "items": {s: int((results.system == s).sum()) for s in systems},
        "errors": {s: int(((results.system == s) & (results.status != "ok")).sum()) for s in systems},
        "overall": json.loads(overall.pivot(index="system", columns="metric", values="mean").to_json(orient="index")),
        "leaderboard": storage.join(cfg.output, "leaderboard.parquet"),
        "win_rates": storage.join(cfg.output, "win_rates.parquet"),
    }
    if c.report.enabled:
        from .report import write_compare_report

        items = item_sheets(c, results, cfg.output)
        summary["report"] = write_compare_report(cfg.output, board, wins, main, systems, items)
    storage.write_text(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2))
    print(format_leaderboard(board, systems))
    if main:
        print(f"\nwin rate on {main} (row beats column, ties count half):")
        print(win_matrix(wins, main, systems).to_string(float_format="{:.2f}".format))
    print(f"\nleaderboard: {summary['leaderboard']}\nreport: {summary.get('report', '-')}")
    return summary


def format_leaderboard(board: pd.DataFrame, systems: list[str]) -> str:
    overall = board[board.category == "overall"]
    wide = overall.pivot(index="system", columns="metric", values="mean").reindex(systems)
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.3f}".format):
        return f"leaderboard (overall means; per category and 95% intervals in leaderboard.csv)\n{wide.to_string()}"


def win_matrix(wins: pd.DataFrame, metric: str, systems: list[str]) -> pd.DataFrame:
    rows = wins[wins.metric == metric]
    return rows.pivot(index="system", columns="opponent", values="win_rate").reindex(index=systems, columns=systems)


JOB = JobEntry(CompareJobConfig, run)
