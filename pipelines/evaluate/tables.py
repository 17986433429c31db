"""Results -> the per-category table of one run (``compare.py`` sets N runs side by side).

A row per category plus ``overall`` (the mean over all items, as the benchmarks report
it); columns: item and error counts, the automatic metrics' means and the judges'
published aggregates (``<rubric>.<name>``). Means skip items where a value is null
(an error, a metric that could not be measured), and ``n`` counts what was scored.
"""

from __future__ import annotations

import pandas as pd

METRICS = (
    "temporal_consistency",
    "flicker",
    "motion_preservation",
    "flow_epe",
    "fidelity_psnr",
    "fidelity_ssim",
    "edited_fraction",
    "semantic_score",
    "gt_psnr",
    "gt_ssim",
    "gt_psnr_edited",
    "gt_psnr_unedited",
    "gt_ssim_edited",
    "gt_ssim_unedited",
    "gt_perceptual",
)
# For comparisons: which direction is better (edited_fraction has none).
LOWER_IS_BETTER = {"flicker", "flow_epe", "errors", "gt_perceptual"}
NEUTRAL = {"edited_fraction", "n"}


def judge_columns(results: pd.DataFrame) -> pd.DataFrame:
    rows = [dict(v) if v is not None else {} for v in results["judge_scores"]]
    return pd.DataFrame(rows, index=results.index, dtype="float64")


def by_category(results: pd.DataFrame) -> pd.DataFrame:
    """Per-category means (index: category, plus ``overall``)."""
    judged = judge_columns(results)
    wide = pd.concat([results[["category"]], results[list(METRICS)].astype("float64"), judged], axis=1)
    wide["errors"] = (results["status"] != "ok").astype(int)
    value_cols = [c for c in list(METRICS) + sorted(judged.columns) if wide[c].notna().any()]
    grouped = wide.groupby("category")
    table = grouped[value_cols].mean()
    table.insert(0, "errors", grouped["errors"].sum())
    table.insert(0, "n", grouped.size())
    overall = wide[value_cols].mean().to_frame("overall").T
    overall.insert(0, "errors", wide["errors"].sum())
    overall.insert(0, "n", len(wide))
    table = pd.concat([table, overall])
    table.index.name = "category"
    return table


def format_table(table: pd.DataFrame, title: str) -> str:
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.3f}".format):
        return f"{title}\n{table.to_string()}"
