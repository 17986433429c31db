"""The filter report: ``report/index.html`` with PNG histograms and contact sheets.

Histograms of every judge criterion and cheap-check metric per dataset, kept /
dropped / error counts with reasons, and contact sheets (frames of source and
target) of the best, worst and borderline samples. Plots are drawn with Pillow,
so the report needs nothing beyond the job's own dependencies.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

from sama import storage
from sama.media import MediaError, read_frames
from sama.schemas import VERDICTS, read_table

METRICS = ("motion", "sharpness", "blank_fraction", "edit_diff", "overall")


def histogram_png(values: list[float], title: str, bins: int = 20, size: tuple[int, int] = (320, 160)) -> bytes:
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    d.text((4, 2), f"{title} (n={len(vals)})", fill="black")
    if len(vals):
        lo, hi = float(vals.min()), float(vals.max())
        counts, _ = np.histogram(vals, bins=bins, range=(lo, hi if hi > lo else lo + 1))
        top, bw = max(int(counts.max()), 1), (w - 8) / bins
        for i, c in enumerate(counts):
            y = h - 16 - (h - 36) * c / top
            d.rectangle([4 + i * bw, y, 4 + (i + 1) * bw - 1, h - 16], fill=(70, 110, 180))
        d.text((4, h - 14), f"{lo:.3g}", fill="black")
        d.text((w - 50, h - 14), f"{hi:.3g}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(rows: list[dict], n_frames: int = 4, thumb: int = 96) -> bytes:
    """One line per sample: source frames | target frames, captioned with id, verdict and reasons."""
    line_h = thumb + 16
    img = Image.new("RGB", (max(1, 2 * n_frames * thumb + 8), max(1, line_h * len(rows))), "white")
    d = ImageDraw.Draw(img)
    for li, r in enumerate(rows):
        y = li * line_h
        x = 0
        for side in ("source_uri", "target_uri"):
            if not r.get(side):
                x += n_frames * thumb
                continue
            try:
                frames = read_frames(r[side], n_frames, thumb)
            except MediaError:
                frames = np.zeros((0, thumb, thumb, 3), np.uint8)
            for f in frames:
                img.paste(Image.fromarray(f), (x, y + 14))
                x += thumb
            x = (n_frames * thumb + 8) if side == "source_uri" else x
        score = f" overall={r['overall']:.2f}" if r.get("overall") is not None else ""
        d.text((2, y + 1), f"{r['sample_id']} {r['verdict']}{score} {','.join(r['reasons'])}"[:120], fill="black")
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_report(output: str, cfg, keep=None) -> str:
    """Write the report under ``output/report``; ``keep`` (a KeepRule) places the borderline."""
    table = read_table(storage.join(output, "verdicts"), VERDICTS)
    rows = table.to_pylist()
    out = storage.join(output, "report")
    parts = [
        "<html><head><meta charset='utf-8'><title>filter report</title><style>body{font-family:sans-serif}"
        "td,th{padding:2px 8px;text-align:left}img{margin:4px}</style></head><body><h1>Filter report</h1>"
    ]
    models = sorted({r["judge_model"] for r in rows})
    parts.append(
        f"<p>judge: {html.escape(', '.join(models))}</p><table><tr><th>dataset</th><th>kept</th><th>dropped</th>"
        "<th>errors</th><th>reasons</th></tr>"
    )
    by_ds: dict[str, list[dict]] = {}
    for r in rows:
        by_ds.setdefault(r["dataset"], []).append(r)
    for ds, rs in sorted(by_ds.items()):
        c = Counter(r["verdict"] for r in rs)
        reasons = Counter(x for r in rs if r["verdict"] != "keep" for x in r["reasons"])
        parts.append(
            f"<tr><td>{html.escape(ds)}</td><td>{c['keep']}</td><td>{c['drop']}</td><td>{c['error']}</td>"
            f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in sorted(reasons.items())))}</td></tr>"
        )
    parts.append("</table>")
    for ds, rs in sorted(by_ds.items()):
        parts.append(f"<h2>{html.escape(ds)}</h2>")
        series = {m: [r[m] for r in rs] for m in METRICS}
        for r in rs:
            for k, v in r["scores"] or []:
                series.setdefault(f"score:{k}", []).append(v)
        for name, vals in series.items():
            if not any(v is not None for v in vals):
                continue
            fname = f"hist-{ds}-{name.replace(':', '_')}.png"
            storage.write_bytes(storage.join(out, fname), histogram_png(vals, name))
            parts.append(f"<img src='{fname}'>")
        judged = sorted((r for r in rs if r["overall"] is not None), key=lambda r: r["overall"])
        if judged:
            floor = (lambda r: keep.min_overall.get(r["task"], 0.5)) if keep else (lambda r: 0.5)
            sheets = {
                "best": judged[::-1][: cfg.examples],
                "worst": judged[: cfg.examples],
                "borderline": sorted(judged, key=lambda r: abs(r["overall"] - floor(r)))[: cfg.examples],
            }
        else:
            sheets = {
                "kept": [r for r in rs if r["verdict"] == "keep"][: cfg.examples],
                "dropped": [r for r in rs if r["verdict"] != "keep"][: cfg.examples],
            }
        for label, sample in sheets.items():
            if not sample:
                continue
            fname = f"sheet-{ds}-{label}.jpg"
            storage.write_bytes(storage.join(out, fname), contact_sheet(sample))
            parts.append(f"<h3>{label}</h3><img src='{fname}'>")
    parts.append("</body></html>")
    index = storage.join(out, "index.html")
    storage.write_text(index, "\n".join(parts))
    storage.write_text(
        storage.join(out, "counts.json"),
        json.dumps({ds: dict(Counter(r["verdict"] for r in rs)) for ds, rs in by_ds.items()}),
    )
    return index
