"""HTML reports: one evaluation (table + a contact sheet per item), and N systems side by side."""

from __future__ import annotations

import html
import json
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
        for m in (
            "temporal_consistency",
            "motion_preservation",
            "fidelity_psnr",
            "fidelity_ssim",
            "semantic_score",
            "gt_psnr",
            "gt_ssim",
            "gt_perceptual",
        )
        if getattr(r, m) is not None and not pd.isna(getattr(r, m))
    ]
    vals += [f"{k}={v:.2f}" for k, v in (r.judge_scores or [])]
    if isinstance(getattr(r, "alignment", None), str):
        parts.append(f"<br><small>aligned: {html.escape(r.alignment)}</small>")
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


def write_compare_report(
    output: str, board: pd.DataFrame, wins: pd.DataFrame, metric: str | None, systems: list[str], items: list[dict]
) -> str:
    """``report/index.html`` of N systems: leaderboard (mean [95% interval] n), the win-rate matrix
    of the headline metric, then every item's sheet, sortable by any metric of any system."""
    overall = board[board.category == "overall"]
    metrics = list(dict.fromkeys(overall.metric))
    cells = {(r.system, r.metric): r for r in overall.itertuples(index=False)}

    def cell(system: str, name: str) -> str:
        r = cells.get((system, name))
        if r is None:
            return "<td>-</td>"
        if pd.isna(r.ci_low):
            return f"<td>{r.mean:g}</td>"
        return f"<td>{r.mean:.3f} <small>[{r.ci_low:.3f}, {r.ci_high:.3f}] n={r.n}</small></td>"

    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    board_rows = "".join(f"<tr><td>{html.escape(s)}</td>{''.join(cell(s, m) for m in metrics)}</tr>" for s in systems)
    parts = [
        f"<html><head><meta charset='utf-8'><title>{len(systems)} systems</title>{STYLE}</head><body>",
        f"<h1>{' vs '.join(html.escape(s) for s in systems)}</h1>",
        "<h2>Leaderboard (overall; per category in leaderboard.csv)</h2>",
        f"<table id='leaderboard'><tr><th>system</th>{head}</tr>{board_rows}</table>",
    ]
    if metric:
        rates = wins[wins.metric == metric]
        rate = {(r.system, r.opponent): r for r in rates.itertuples(index=False)}
        heads = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
        rows = ""
        for a in systems:
            tds = "".join(
                f"<td>{rate[(a, b)].win_rate:.2f} <small>({rate[(a, b)].items})</small></td>"
                if (a, b) in rate and rate[(a, b)].win_rate is not None and not pd.isna(rate[(a, b)].win_rate)
                else "<td>-</td>"
                for b in systems
            )
            rows += f"<tr><td>{html.escape(a)}</td>{tds}</tr>"
        parts.append(f"<h2>Win rate on {html.escape(metric)} (row beats column; ties half; shared items)</h2>")
        parts.append(f"<table id='wins'><tr><th></th>{heads}</tr>{rows}</table>")
    keys = sorted({k for it in items for k in it["values"]})
    options = "".join(f"<option>{html.escape(k)}</option>" for k in keys)
    parts.append(
        "<h2>Items</h2><p>sort by <select id='sortkey'>" + options + "</select> "
        "<select id='sortdir'><option value='-1'>high first</option><option value='1'>low first</option></select></p>"
        "<div id='items'>"
    )
    for it in items:
        data = html.escape(json.dumps(it["values"]), quote=True)
        parts.append(
            f"<div class='item' data-values=\"{data}\"><b>{html.escape(str(it['item_id']))}</b> "
            f"[{html.escape(str(it['category']))}] {html.escape(str(it['instruction']))}"
            f"<img src='sheets/{html.escape(it['sheet'])}'></div>"
        )
    parts.append("</div>" + SORT_SCRIPT + "</body></html>")
    index = storage.join(output, "report", "index.html")
    storage.write_text(index, "\n".join(parts))
    return index


SORT_SCRIPT = """<script>
function sortItems() {
  const key = document.getElementById('sortkey').value, dir = +document.getElementById('sortdir').value;
  const box = document.getElementById('items');
  const val = el => { const v = JSON.parse(el.dataset.values)[key]; return v === undefined ? null : v; };
  [...box.children].sort((a, b) => {
    const x = val(a), y = val(b);
    if (x === null) return y === null ? 0 : 1;
    if (y === null) return -1;
    return dir * (x - y);
  }).forEach(el => box.appendChild(el));
}
document.getElementById('sortkey').onchange = sortItems;
document.getElementById('sortdir').onchange = sortItems;
</script>"""
