"""Scoring one edit: its clips aligned (``align.py``), the automatic metrics (ground-truth ones
when the item has a target), the VLM judges (many requests in flight) and a contact sheet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sama import storage
from sama.buckets import make_buckets
from sama.judging import EVAL_RUBRICS, Judge, Rubric, Secret

from ..stage import Marker
from .aggregate import aggregate
from .align import Aligned, AlignmentError, align_brought, align_made
from .config import EvalConfig, judge_label, uris
from .metrics import PerceptualScorer, SemanticScorer, edit_metrics, ground_truth_metrics


def contact_sheet(rows: list[tuple[str, np.ndarray]], caption: str, n: int, thumb: int) -> bytes:
    """Labelled rows of ``n`` uniformly sampled frames each (source, edit[, other edit])."""
    import io

    from PIL import Image, ImageDraw

    from sama.media import sample_indices

    h0, w0 = rows[0][1].shape[1:3]
    s = thumb / max(h0, w0)
    tw, th = max(1, round(w0 * s)), max(1, round(h0 * s))
    label_w, top = 70, 16
    img = Image.new("RGB", (label_w + n * tw, top + len(rows) * th), "white")
    d = ImageDraw.Draw(img)
    d.text((2, 2), caption[:160], fill="black")
    for r, (label, frames) in enumerate(rows):
        y = top + r * th
        d.text((2, y + th // 2 - 6), label[:11], fill="black")
        for c, i in enumerate(sample_indices(len(frames), n)):
            img.paste(Image.fromarray(frames[i]).resize((tw, th), Image.BILINEAR), (label_w + c * tw, y))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class ScoreStage:
    """Actor: metrics + judge + contact sheet per edited item; ``commit`` writes its result."""

    def __init__(
        self,
        cfg: EvalConfig,
        output: str,
        key: Secret | None,
        cache_root: str,
        digest: str,
        commit: Callable[[str, list[str], dict], Marker],
    ):
        self.cfg, self.output, self.key, self.cache_root, self.digest = cfg, output, key, cache_root, digest
        self.commit = commit
        metrics = cfg.metrics
        self.semantic = SemanticScorer(metrics.semantic) if metrics.enabled and metrics.semantic.model else None
        self.perceptual = PerceptualScorer(metrics.perceptual) if metrics.enabled and metrics.perceptual.model else None
        self.rubrics: list[Rubric] = [EVAL_RUBRICS[r] for r in cfg.rubrics] if self.key is not None else []
        self.decode_side = max(max(b) for b in make_buckets(cfg.model.pipeline.buckets))  # as the edit stage did

    def align(self, row: dict) -> Aligned:
        if row.get("brought"):
            return align_brought(row, self.cfg.align)
        return align_made(row, self.cfg.edit.max_frames or self.cfg.model.pipeline.buckets.max_frames, self.decode_side)

    def _measure(self, row: dict) -> tuple[dict, dict[str, np.ndarray] | None]:
        """Decode + align + metrics + sheet in a thread; returns (result fields, frames for the judge)."""
        cfg = self.cfg
        try:
            clips = self.align(row)
        except AlignmentError as err:  # an edit that cannot meet its source: this item's error, file named
            return {"error_kind": err.reason, "error": err.detail[:500]}, None
        except Exception as err:  # noqa: BLE001 - an unreadable edit or source is this item's error
            return {"error_kind": "metrics_error", "error": f"{type(err).__name__}: {err}"[:500]}, None
        out: dict = {"semantic_model": "none", "perceptual_model": "none", "alignment": clips.note}
        if cfg.metrics.enabled:
            try:
                out.update(edit_metrics(clips.source, clips.edit, cfg.metrics, clips.mask))
                if self.semantic is not None:
                    text = row.get("target_caption") or row["instruction"]
                    out.update(semantic_score=self.semantic.score(text, clips.edit), semantic_model=self.semantic.label)
                if clips.target is not None:
                    out.update(ground_truth_metrics(clips.edit, clips.target, clips.mask))
                    if self.perceptual is not None:
                        out.update(
                            gt_perceptual=self.perceptual.distance(clips.edit, clips.target),
                            perceptual_model=self.perceptual.label,
                        )
            except Exception as err:  # noqa: BLE001
                return {"error_kind": "metrics_error", "error": f"{type(err).__name__}: {err}"[:500]}, None
        if cfg.report.enabled:
            sheet = uris(self.output, row["key"])["sheet"]
            caption = f"{row['item_id']} [{row['category']}] {row['instruction']}"
            rows = [("source", clips.source), (cfg.system, clips.edit)]
            rows += [("target", clips.target)] if clips.target is not None else []
            storage.write_bytes(sheet, contact_sheet(rows, caption, cfg.report.frames, cfg.report.thumb))
            out["sheet_uri"] = sheet
        return out, {"source": clips.source, "target": clips.edit}

    async def _score(self, rows: list[dict]) -> list[dict]:
        loop = asyncio.get_running_loop()
        judge = Judge(self.cfg.judge, self.key, self.cache_root) if self.rubrics else None
        try:
            with ThreadPoolExecutor(self.cfg.score.threads) as pool:

                async def one(row: dict) -> dict:
                    if row.get("error_kind"):
                        return row
                    fields, frames = await loop.run_in_executor(pool, self._measure, row)
                    row = {**row, **fields}
                    if frames is None or judge is None:
                        return row
                    outcomes = await asyncio.gather(
                        *(judge.judge(row["key"], r, row["instruction"], frames) for r in self.rubrics)
                    )
                    scores, raw, reasons, errors = {}, {}, {}, []
                    for r, o in zip(self.rubrics, outcomes):
                        if o.error:
                            errors.append(f"{r.task}: {o.error}")
                            continue
                        scores.update(aggregate(r, o.answer.scores))
                        raw.update({f"{r.task}.{k}": v for k, v in o.answer.scores.items()})
                        reasons[r.task] = judge.scrub(o.answer.reason)[:1000]
                    row.update(
                        judge_scores=scores,
                        judge_raw=raw,
                        judge_reasons=reasons,
                        judge_attempts=sum(o.attempts for o in outcomes),
                    )
                    if errors:
                        row.update(error_kind="judge_error", error="; ".join(errors)[:1000])
                    return row

                return await asyncio.gather(*(one(r) for r in rows))
        finally:
            if judge is not None:
                await judge.close()

    def __call__(self, batch: dict) -> dict:
        rows = asyncio.run(self._score([p.spec for p in batch["part"]]))
        markers = []
        for r in rows:
            r.update(
                score_digest=self.digest,
                judge_model=judge_label(self.cfg),
                rubrics=[x.version for x in self.rubrics],
                status="error" if r.get("error_kind") else "ok",
            )
            markers.append(self.commit(r["key"], [r["key"]], {"results": [r]}))
        return {"marker": np.array(markers, dtype=object)}
