"""The filter report: ``report/index.html`` with PNG histograms and labelled frame strips.

Per dataset: ingest rejects, kept / dropped / error counts, and every reason with its
count. Each reason shows its first ``examples`` samples as a strip of source and target
frames (each side labelled, portrait clips drawn portrait) under a caption naming the
sample, its files, the instruction, the detail and the measured values; a folding table
lists every sample of the reason (up to ``max_rows``; the verdicts table has them all).
Histograms of every check metric and judge score mark the threshold that decides.
Drawn with Pillow, so the report needs nothing beyond the job's own dependencies.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter, defaultdict
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw

from sama import storage
from sama.media import MediaError, read_frames
from sama.schemas import REJECTS, VERDICTS, read_table

from .checks import ChecksConfig

METRICS = ("motion", "sharpness", "blank_fraction", "edit_diff", "scene_cuts", "overall")
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:20px;color:#1d2430}td,th{padding:2px 8px;text-align:left;"
    "vertical-align:top;font-size:13px}table{border-collapse:collapse}tr:nth-child(even){background:#f4f5f7}"
    "figure{margin:8px 0 16px}figcaption{font-size:13px}figcaption code{background:#f0f1f3}"
    "img{margin:2px}.n{color:#667085}h3{margin-top:22px}"
)


def thresholds(checks: Optional[ChecksConfig], keep=None) -> dict[str, list[tuple[str, float]]]:
    """Per metric: (label, value) lines to mark on its histogram, from the settings that decided."""
    out: dict[str, list[tuple[str, float]]] = defaultdict(list)
    if checks is not None:
        out["motion"].append(("min", checks.min_motion))
        out["sharpness"].append(("min", checks.min_sharpness))
        out["blank_fraction"].append(("max", checks.max_blank_fraction))
        out["edit_diff"].append(("min", checks.min_edit_diff))
        out["scene_cuts"].append(("max", checks.max_scene_cuts))
    if keep is not None:
        for task, v in sorted(keep.min_overall.items()):
            out["overall"].append((f"min {task}", v))
        for name, v in sorted(keep.min_scores.items()):
            out[f"score:{name}"].append(("min", v))
    return out


def histogram_png(
    values: list[float],
    title: str,
    marks: list[tuple[str, float]] = (),
    bins: int = 20,
    size: tuple[int, int] = (360, 180),
) -> bytes:
    """Counts per bin with 5 x-axis ticks, the largest count, and each threshold as a red line."""
    w, h = size
    left, right, top, bottom = 30, 8, 16, 30
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    d.text((4, 2), f"{title} (n={len(vals)})", fill="black")
    if len(vals):
        lo = min([float(vals.min())] + [v for _, v in marks])
        hi = max([float(vals.max())] + [v for _, v in marks])
        hi = hi if hi > lo else lo + 1.0
        counts, _ = np.histogram(vals, bins=bins, range=(lo, hi))
        peak, pw = max(int(counts.max()), 1), w - left - right
        x_of = lambda v: left + pw * (v - lo) / (hi - lo)  # noqa: E731
        for i, c in enumerate(counts):
            y = h - bottom - (h - top - bottom) * c / peak
            d.rectangle([left + i * pw / bins, y, left + (i + 1) * pw / bins - 1, h - bottom], fill=(70, 110, 180))
        d.line([left, h - bottom, w - right, h - bottom], fill="black")
        d.text((2, top - 2), str(peak), fill="black")
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            x = x_of(v)
            d.line([x, h - bottom, x, h - bottom + 3], fill="black")
            d.text((min(max(0, x - 14), w - 50), h - bottom + 4), f"{v:.3g}", fill="black")
        for i, (label, v) in enumerate(marks):
            x = x_of(v)
            d.line([x, top, x, h - bottom], fill=(200, 30, 30), width=2)
            d.text((min(x + 3, w - 90), top + 12 * i), f"{label} {v:.3g}", fill=(200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def frame_strip(source: Optional[str], target: Optional[str], n_frames: int = 4, thumb: int = 96) -> bytes:
    """Source frames | target frames, each side labelled; frames keep their aspect ratio."""
    sides = []
    for label, uri in (("source", source), ("target", target)):
        if not uri:
            continue
        try:
            frames = list(read_frames(uri, n_frames, thumb))
        except MediaError as e:
            frames, label = [], f"{label}: {e.reason}"
        sides.append((label, frames))
    width = sum(max(70, sum(f.shape[1] + 2 for f in fr)) + 12 for _, fr in sides) or 1
    height = 14 + max([f.shape[0] for _, fr in sides for f in fr] or [thumb])
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    x = 0
    for label, frames in sides:
        d.text((x + 2, 1), label, fill=(40, 40, 40))
        fx = x
        for f in frames:
            img.paste(Image.fromarray(f), (fx, 14))
            fx += f.shape[1] + 2
        x += max(70, fx - x) + 12
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _metrics(r: dict) -> str:
    vals = [f"{m}={_fmt(r.get(m))}" for m in METRICS if r.get(m) is not None]
    vals += [f"{k}={_fmt(v)}" for k, v in r.get("scores") or []]
    return ", ".join(vals)


def _caption(r: dict) -> str:
    e = html.escape
    files = " → ".join(f"<code>{e(u)}</code>" for u in (r.get("source_uri"), r.get("target_uri")) if u)
    parts = [
        f"<b>{e(r['dataset'])} / {e(r['sample_id'])}</b> · {e(r.get('verdict', 'rejected'))}"
        f" · {e(', '.join(r.get('reasons') or [r.get('reason', '')]))}",
        files,
        f"instruction: “{e(r.get('instruction') or '')}”" if r.get("instruction") else "",
        f"detail: {e(detail)}" if (detail := r.get("detail") or r.get("error") or r.get("judge_reason")) else "",
        f"<span class=n>{e(_metrics(r))}</span>",
    ]
    return "<br>".join(p for p in parts if p)


COLUMNS = ("sample_id", "instruction", "source_uri", "target_uri", "reasons", "detail", "metrics")


def _rows_table(rows: list[dict], max_rows: int, where: str) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>"]
    for r in rows[:max_rows]:
        cells = [
            r["sample_id"],
            r.get("instruction") or "",
            r.get("source_uri") or "",
            r.get("target_uri") or "",
            ", ".join(r.get("reasons") or [r.get("reason", "")]),
            r.get("detail") or r.get("error") or r.get("judge_reason") or "",
            _metrics(r),
        ]
        out.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    if len(rows) > max_rows:
        out.append(f"<p class=n>… {len(rows) - max_rows} more in {e(where)}</p>")
    return "".join(out)


class Report:
    def __init__(self, output: str, cfg, checks: Optional[ChecksConfig], keep, instructions: dict[str, str]):
        self.out = storage.join(output, "report")
        self.output, self.cfg, self.checks, self.keep = output, cfg, checks, keep
        self.instructions = instructions
        self.marks = thresholds(checks, keep)
        self.n_images = 0

    def strip(self, r: dict) -> str:
        self.n_images += 1
        fname = f"strip-{self.n_images:05d}.jpg"
        storage.write_bytes(storage.join(self.out, fname), frame_strip(r.get("source_uri"), r.get("target_uri")))
        return f"<figure><img src='{fname}'><figcaption>{_caption(r)}</figcaption></figure>"

    def group(self, ds: str, title: str, rows: list[dict], where: str) -> list[str]:
        """A heading with the count, the first ``examples`` as strips, then every row folded."""
        anchor = html.escape(f"{ds}-{title}")
        parts = [f"<h3 id='{anchor}'>{html.escape(title)} <span class=n>({len(rows)})</span></h3>"]
        parts += [self.strip(r) for r in rows[: self.cfg.examples]]
        if len(rows) > self.cfg.examples:
            parts.append(f"<details><summary>all {len(rows)} samples</summary>")
            parts.append(_rows_table(rows, self.cfg.max_rows, where))
            parts.append("</details>")
        return parts

    def histograms(self, ds: str, rs: list[dict]) -> list[str]:
        series: dict[str, list] = {m: [r.get(m) for r in rs] for m in METRICS}
        for r in rs:
            for k, v in r.get("scores") or []:
                series.setdefault(f"score:{k}", []).append(v)
        parts = []
        for name, vals in series.items():
            if not any(v is not None for v in vals):
                continue
            fname = f"hist-{ds}-{name.replace(':', '_')}.png"
            png = histogram_png([float(v) for v in vals if v is not None], name, self.marks.get(name, []))
            storage.write_bytes(storage.join(self.out, fname), png)
            parts.append(f"<img src='{fname}' alt='{html.escape(name)}'>")
        return parts

    def dataset(self, ds: str, rs: list[dict], rejects: list[dict]) -> list[str]:
        parts = [f"<h2 id='{html.escape(ds)}'>{html.escape(ds)}</h2>"]
        for r in rs:
            r["instruction"] = self.instructions.get(r["sample_id"])
        parts += self.histograms(ds, rs)
        verdicts_at = storage.join(self.output, "verdicts", ds)
        by_reason: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            if r["verdict"] != "keep":
                for reason in r["reasons"] or ["(none given)"]:
                    by_reason[f"{r['verdict']}: {reason}"].append(r)
        for title, group in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            parts += self.group(ds, title, group, verdicts_at)
        judged = sorted((r for r in rs if r["overall"] is not None), key=lambda r: r["overall"])
        kept = [r for r in rs if r["verdict"] == "keep"]
        if judged:
            floor = (lambda r: self.keep.min_overall.get(r["task"], 0.5)) if self.keep else (lambda r: 0.5)
            parts += self.group(ds, "judged: best", judged[::-1], verdicts_at)
            parts += self.group(
                ds, "judged: borderline", sorted(judged, key=lambda r: abs(r["overall"] - floor(r))), verdicts_at
            )
        elif kept:
            parts += self.group(ds, "kept", kept, verdicts_at)
        if rejects:
            by_ingest: dict[str, list[dict]] = defaultdict(list)
            for r in rejects:
                by_ingest[f"ingest rejected: {r['reason']}"].append(r)
            for title, group in sorted(by_ingest.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                parts += self.group(ds, title, group, self.cfg.ingest_rejects or "the ingest rejects table")
        return parts


def ingest_rejects_uri(cfg, input_uri: Optional[str]) -> Optional[str]:
    """The ingest rejects table shown beside the verdicts: configured, or the input manifest's sibling."""
    if cfg.ingest_rejects:
        return cfg.ingest_rejects
    if input_uri and storage.basename(input_uri) == "manifest":
        return storage.join(storage.parent(input_uri), "rejects")
    return None


def _read_rejects(uri: Optional[str]) -> list[dict]:
    if not uri or not storage.exists(uri):
        return []
    try:
        return read_table(uri, REJECTS).to_pylist()
    except FileNotFoundError:  # a folder without parts yet
        return []


def _read_instructions(input_uri: Optional[str]) -> dict[str, str]:
    if not input_uri:
        return {}
    try:
        t = storage.read_parquet(input_uri, columns=["sample_id", "instruction"])
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return {}
    return dict(zip(t.column("sample_id").to_pylist(), t.column("instruction").to_pylist()))


def write_report(
    output: str, cfg, keep=None, checks: Optional[ChecksConfig] = None, input_uri: Optional[str] = None
) -> str:
    """Write the report under ``output/report``; ``keep`` (a KeepRule) and ``checks`` give the
    thresholds to mark, ``input_uri`` (the filtered manifest) the instructions and the ingest rejects."""
    rows = read_table(storage.join(output, "verdicts"), VERDICTS).to_pylist()
    rejects_uri = ingest_rejects_uri(cfg, input_uri)
    rejects = _read_rejects(rejects_uri)
    rep = Report(output, cfg, checks, keep, _read_instructions(input_uri))
    storage.delete(rep.out)  # written whole each run: no strip of an earlier run stays behind
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    rejects_by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in rejects:
        rejects_by_ds[r["dataset"]].append(r)
    datasets = sorted(set(by_ds) | set(rejects_by_ds))

    e = html.escape
    models = sorted({r["judge_model"] for r in rows})
    parts = [
        f"<html><head><meta charset='utf-8'><title>filter report</title><style>{STYLE}</style></head><body>",
        "<h1>Filter report</h1>",
        f"<p>judge: {e(', '.join(models) or 'none')} · ingest rejects: {e(rejects_uri or 'not found')}</p>",
        "<table><tr><th>dataset</th><th>ingest rejected</th><th>kept</th><th>dropped</th><th>errors</th>"
        "<th>reasons (click to see the samples)</th></tr>",
    ]
    counts = {}
    for ds in datasets:
        c = Counter(r["verdict"] for r in by_ds[ds])
        reasons = Counter(f"{r['verdict']}: {x}" for r in by_ds[ds] if r["verdict"] != "keep" for x in r["reasons"])
        reasons.update(f"ingest rejected: {r['reason']}" for r in rejects_by_ds[ds])
        links = ", ".join(
            f"<a href='#{e(ds)}-{e(k)}'>{e(k)}</a>&nbsp;{v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])
        )
        parts.append(
            f"<tr><td><a href='#{e(ds)}'>{e(ds)}</a></td><td>{len(rejects_by_ds[ds])}</td><td>{c['keep']}</td>"
            f"<td>{c['drop']}</td><td>{c['error']}</td><td>{links}</td></tr>"
        )
        counts[ds] = {**dict(c), "ingest_rejected": len(rejects_by_ds[ds])}
    parts.append("</table>")
    for ds in datasets:
        parts += rep.dataset(ds, by_ds[ds], rejects_by_ds[ds])
    parts.append("</body></html>")
    index = storage.join(rep.out, "index.html")
    storage.write_text(index, "\n".join(parts))
    storage.write_text(storage.join(rep.out, "counts.json"), json.dumps(counts, sort_keys=True))
    return index
