"""HTML reports: one evaluation (table + a contact sheet per item), and a two-checkpoint comparison."""

from __future__ import annotations

import html
import posixpath

import pandas as pd

from sama import storage

STYLE = (
    "<style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
    "td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}th:first-child,td:first-child"
    "{text-align:left}.b{color:#080}.a{color:#b00}.item{margin:12px 0}img{display:block}</style>"
)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def table_html(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.index.name or ""] + list(table.columns))
    body = "".join(
        "<tr>" + f"<td>{html.escape(str(i))}</td>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
        for i, row in zip(table.index, table.itertuples(index=False))
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _item_line(r) -> str:
    parts = [f"<b>{html.escape(r.item_id)}</b> [{html.escape(r.category)}] {html.escape(r.instruction)}"]
    if r.status != "ok":
        parts.append(f"<br><span class='a'>{html.escape(str(r.error_kind))}: {html.escape(str(r.error))}</span>")
    vals = [
        f"{m}={_fmt(getattr(r, m))}"
        for m in ("temporal_consistency", "motion_preservation", "fidelity_psnr", "fidelity_ssim", "semantic_score")
        if getattr(r, m) is not None and not pd.isna(getattr(r, m))
    ]
    vals += [f"{k}={v:.2f}" for k, v in (r.judge_scores or [])]
    if vals:
        parts.append("<br><small>" + html.escape(", ".join(vals)) + "</small>")
    return "".join(parts)


def write_report(output: str, results: pd.DataFrame, table: pd.DataFrame, summary: dict) -> str:
    """``report/index.html``: the summary table, then each item's source/edit sheet and scores."""
    out = storage.join(output, "report")
    parts = [
        f"<html><head><meta charset='utf-8'><title>evaluation: {html.escape(summary['model'])}</title>{STYLE}"
        f"</head><body><h1>Evaluation of {html.escape(summary['model'])}</h1>"
        f"<p>benchmark: {html.escape(summary['benchmark'])} &middot; judge: {html.escape(summary['judge_model'])}"
        f" &middot; semantic encoder: {html.escape(summary['semantic_model'])} &middot; items: {summary['items']}"
        f" &middot; errors: {summary['errors']}</p>",
        table_html(table),
        "<h2>Items</h2>",
    ]
    for r in results.sort_values(["category", "item_id"]).itertuples(index=False):
        img = f"<img src='sheets/{posixpath.basename(r.sheet_uri)}'>" if isinstance(r.sheet_uri, str) else ""
        parts.append(f"<div class='item'>{_item_line(r)}{img}</div>")
    parts.append("</body></html>")
    index = storage.join(out, "index.html")
    storage.write_text(index, "\n".join(parts))
    return index


def write_compare_report(output: str, long: pd.DataFrame, labels: tuple[str, str], items: list[dict]) -> str:
    """``report/index.html`` of a comparison: per-category a / b / delta, then source | a | b per item."""
    a, b = labels
    out = storage.join(output, "report")
    parts = [
        f"<html><head><meta charset='utf-8'><title>{html.escape(a)} vs {html.escape(b)}</title>{STYLE}</head>"
        f"<body><h1>{html.escape(a)} (a) vs {html.escape(b)} (b)</h1><p>delta = b - a; green: b is better, "
        "red: a is better.</p><table><tr><th>category</th><th>metric</th><th>a</th><th>b</th><th>delta</th></tr>"
    ]
    for r in long.itertuples(index=False):
        cls = f" class='{r.better}'" if r.better else ""
        parts.append(
            f"<tr><td>{html.escape(r.category)}</td><td>{html.escape(r.metric)}</td><td>{_fmt(r.a)}</td>"
            f"<td>{_fmt(r.b)}</td><td{cls}>{_fmt(r.delta)}</td></tr>"
        )
    parts.append("</table><h2>Items</h2>")
    for it in items:
        parts.append(
            f"<div class='item'><b>{html.escape(it['item_id'])}</b> [{html.escape(it['category'])}] "
            f"{html.escape(it['instruction'])}<br><small>{html.escape(it['scores'])}</small>"
            + (f"<img src='sheets/{html.escape(it['sheet'])}'>" if it.get("sheet") else "")
            + "</div>"
        )
    parts.append("</body></html>")
    index = storage.join(out, "index.html")
    storage.write_text(index, "\n".join(parts))
    return index
