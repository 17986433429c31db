"""The evaluation job: a benchmark manifest -> edited videos, scores per item, tables and a report.

Ray Data pipeline, streaming::

    manifest items (not done yet)
      -> edit   actor pool:  the checkpoint's pipeline (GPUs; the tiny model on CPU), one edit at
                             a time -> edits/<key>.mp4 + edits/<key>.json (the edit's marker)
      -> score  actor pool:  decode source + edit, automatic metrics (threads), the VLM judge
                             (many requests in flight), contact sheet -> results/<key>.parquet

On the stage runner (``pipelines/stage.py``) a part is one item, named ``<item id>-<edit
digest>`` (model + sampling settings), so outputs are named by content: a rerun overwrites
instead of duplicating, an edit already on storage is scored without editing again, and a
result is redone only when its scoring settings changed or it holds an error
(``retry_errors``; the judge cache makes the retry pay only for the missing answers). Files
of items no longer planned are removed, so the tables hold exactly the current manifest x
checkpoint.

Output under ``output``::

    edits/<key>.mp4, edits/<key>.json     results/<key>.parquet (schemas.EVAL_RESULTS)
    by_category.parquet, summary.json     report/index.html, report/sheets/<key>.jpg
    _cache/judge/..., _work/done/...      config.yaml
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from sama import storage
from sama.config import JobConfig, JobEntry, to_dict
from sama.judging import EVAL_RUBRICS, Judge, JudgeConfig, Rubric, Secret, api_key
from sama.media import MediaError, probe, read_clip, read_frames, write_mp4
from sama.models.pipeline import EditModelConfig
from sama.schemas import EVAL_RESULTS, validate

from ..stage import Marker, Part, Stage, Table, dry_run_stage, run_stage
from .aggregate import aggregate
from .manifest import FORMATS, Item, read_manifest
from .metrics import MetricsConfig, SemanticScorer, edit_metrics

log = logging.getLogger(__name__)

JUDGE_OFF = "none:off"


@dataclass
class EvalModelConfig(EditModelConfig):
    """The checkpoint under evaluation (``EditModelConfig``) and its name in tables and reports."""

    label: Optional[str] = None  # null: the checkpoint's folder name, or "tiny"

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return storage.basename(self.checkpoint.rstrip("/")) if self.checkpoint else "tiny"


@dataclass
class EditConfig:
    num_gpus: float = 0.0  # per edit actor; 0: CPU (the tiny model)
    num_cpus: float = 1.0
    actors: int = 1
    max_actors: Optional[int] = None  # autoscale the pool up to this many
    seed: int = 0
    steps: Optional[int] = None  # null: model.pipeline.num_inference_steps
    max_frames: Optional[int] = None  # source frames edited (consecutive from the start); null: the buckets' max
    fps: Optional[float] = None  # of the written edit; null: the source's
    crf: int = 18


@dataclass
class ScoreConfig:
    num_cpus: float = 0.5
    actors: int = 1
    batch_size: int = 4  # items per call: their judge requests run concurrently
    threads: int = 2  # decode + metrics threads per actor


@dataclass
class ReportConfig:
    enabled: bool = True
    frames: int = 4  # frames per row of a contact sheet
    thumb: int = 128  # thumbnail long side, pixels


@dataclass
class EvalConfig:
    manifest: str = ""  # a benchmark file or folder (see manifest.py for the formats)
    format: str = "auto"  # auto | user | vie | openve | reco
    benchmark: Optional[str] = None  # label in tables; null: the format's name
    categories: list[str] = field(default_factory=list)  # only these; empty: all
    limit: Optional[int] = None  # first N items (by category, id): a quick look
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # backend none: metrics only, labelled "none:off"
    rubrics: list[str] = field(default_factory=lambda: ["openve", "reco", "vie"])
    score: ScoreConfig = field(default_factory=ScoreConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    retry_errors: bool = True  # a rerun redoes items whose result is an error

    def validate(self) -> None:
        if not self.manifest:
            raise ValueError("evaluate.manifest is empty (the benchmark file or folder to read)")
        if self.format not in FORMATS:
            raise ValueError(f"evaluate.format={self.format!r}: one of {list(FORMATS)}")
        bad = [r for r in self.rubrics if r not in EVAL_RUBRICS]
        if bad:
            raise ValueError(f"evaluate.rubrics: unknown {bad} (known: {sorted(EVAL_RUBRICS)})")
        if self.judge.backend == "vllm":
            raise ValueError(
                "evaluate.judge.backend=vllm is not supported: serve the model with `vllm serve` "
                "and use backend=openai with its base_url"
            )


@dataclass
class EvalJobConfig(JobConfig):
    job: str = "evaluate"
    output: str = "outputs/evaluate"
    evaluate: EvalConfig = field(default_factory=EvalConfig)


# --- names and digests -----------------------------------------------------------------------------


def edit_digest(cfg: EvalConfig) -> str:
    """What makes the edited video: a change means new edits (and new keys)."""
    e = cfg.edit
    parts = {
        "model": to_dict(cfg.model.resolved()),
        "pipeline": to_dict(cfg.model.pipeline),
        "edit": [e.seed, e.steps, e.max_frames, e.fps, e.crf],
    }
    return storage.content_digest(json.dumps(parts, sort_keys=True, default=str), n=10)


def judge_label(cfg: EvalConfig) -> str:
    return JUDGE_OFF if cfg.judge.backend == "none" else cfg.judge.model_label


def score_digest(cfg: EvalConfig) -> str:
    """What decides the scores of an existing edit: a change rescores without re-editing."""
    j = cfg.judge
    parts = {
        "metrics": to_dict(cfg.metrics),
        "judge": [judge_label(cfg), j.base_url, j.frames, j.max_side],
        "rubrics": [EVAL_RUBRICS[r].version for r in cfg.rubrics] if j.backend != "none" else [],
        "sheet": to_dict(cfg.report),
    }
    return storage.content_digest(json.dumps(parts, sort_keys=True, default=str), n=12)


def item_key(item_id: str, digest: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id)[:60]
    if safe != item_id:  # keep distinct ids distinct after cleaning
        safe += "-" + storage.content_digest(item_id, n=6)
    return f"{safe}-{digest}"


def uris(output: str, key: str) -> dict[str, str]:
    return {
        "edit": storage.join(output, "edits", f"{key}.mp4"),
        "meta": storage.join(output, "edits", f"{key}.json"),
        "sheet": storage.join(output, "report", "sheets", f"{key}.jpg"),
    }


# --- edit stage ----------------------------------------------------------------------------------


class EditStage:
    """Actor: edits items with the checkpoint. The model loads on the first edit actually needed,
    so a rerun that only rescores never pays for it."""

    def __init__(self, cfg: EvalConfig, output: str):
        self.cfg, self.output, self.pipe = cfg, output, None

    def _load(self):
        import torch

        gpu = self.cfg.edit.num_gpus > 0 and torch.cuda.is_available()
        t0 = time.time()
        self.pipe = self.cfg.model.load("cuda" if gpu else "cpu")
        log.info("evaluate: %s loaded on %s in %.1fs", self.cfg.model.name, self.pipe.device, time.time() - t0)

    def edit(self, item: dict) -> dict:
        u = uris(self.output, item["key"])
        if storage.exists(u["meta"]):  # written after the mp4: the edit is complete
            return {**item, **json.loads(storage.read_text(u["meta"])), "edit_uri": u["edit"]}
        e = self.cfg.edit
        if self.pipe is None:
            self._load()  # a checkpoint that does not load stops the job: no item could be edited
        try:
            buckets = self.cfg.model.pipeline.buckets
            side = max(max(b) for b in self.pipe.buckets)  # decode no larger than the largest bucket
            frames = read_clip(item["source_uri"], e.max_frames or buckets.max_frames, side)
            fps = e.fps or (probe(item["source_uri"]).fps if len(frames) > 1 else 0.0) or 16.0
        except MediaError as err:
            return {**item, "error_kind": "source_error", "error": str(err)[:500]}
        except Exception as err:  # noqa: BLE001 - storage trouble: retried on the next run
            return {**item, "error_kind": "source_error", "error": f"{type(err).__name__}: {err}"[:500]}
        t0 = time.time()
        try:
            out = self.pipe(item["instruction"], frames, num_inference_steps=e.steps, seed=e.seed)
            # The pipeline pads to 4k+1 frames by repeating the last one: keep as many as came in.
            video = out.video[0].cpu().numpy()[: len(frames)]
            write_mp4(u["edit"], video, fps, e.crf)
        except Exception as err:  # noqa: BLE001 - recorded per item (e.g. out of memory on a huge clip)
            return {**item, "error_kind": "edit_error", "error": f"{type(err).__name__}: {err}"[:500]}
        t, h, w = video.shape[:3]
        meta = {
            "frames": int(t),
            "height": int(h),
            "width": int(w),
            "fps": float(fps),
            "edit_seconds": round(time.time() - t0, 3),
        }
        storage.write_text(u["meta"], json.dumps(meta))
        return {**item, **meta, "edit_uri": u["edit"]}

    def __call__(self, batch: dict) -> dict:
        return {"part": np.array([Part(p.name, self.edit(p.spec)) for p in batch["part"]], dtype=object)}


# --- score stage ---------------------------------------------------------------------------------


def aligned_clips(
    row: dict, max_frames: int, decode_side: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Source, edit and mask frames at the edit's size and length (the source put into the
    edit's bucket exactly as the pipeline did, so pixels line up)."""
    from sama.buckets import Bucket, BucketConfig, fit_to_bucket

    edit = read_frames(row["edit_uri"], indices=list(range(int(row["frames"]))))
    t, h, w = edit.shape[:3]
    cfg = BucketConfig(max_frames=max(max_frames, 1), frame_policy="pad")
    src, _ = fit_to_bucket(read_clip(row["source_uri"], max_frames, decode_side), cfg, bucket=Bucket(h, w))
    mask = None
    if row.get("mask_uri"):
        m, _ = fit_to_bucket(read_clip(row["mask_uri"], max_frames, decode_side), cfg, bucket=Bucket(h, w))
        mask = m[..., :3].mean(-1) / 255.0
        mask = mask[np.minimum(np.arange(t), len(mask) - 1)]
    n = min(t, len(src))
    return src[:n], edit[:n], (mask[:n] if mask is not None else None)


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
    """Actor: metrics + judge + contact sheet per edited item; writes ``results/<key>.parquet``."""

    def __init__(self, evaluation: EvalStage):
        cfg = evaluation.cfg
        self.evaluation, self.cfg, self.output, self.key = evaluation, cfg, evaluation.output, evaluation.key
        self.cache_root, self.digest = evaluation.cache_root, evaluation.digest()
        sem = cfg.metrics.semantic
        self.semantic = SemanticScorer(sem) if cfg.metrics.enabled and sem.model else None
        self.rubrics: list[Rubric] = [EVAL_RUBRICS[r] for r in cfg.rubrics] if self.key is not None else []
        from sama.buckets import make_buckets

        self.decode_side = max(max(b) for b in make_buckets(cfg.model.pipeline.buckets))  # as the edit stage did

    def _measure(self, row: dict) -> tuple[dict, dict[str, np.ndarray] | None]:
        """Decode + metrics + sheet in a thread; returns (result fields, frames for the judge)."""
        cfg = self.cfg
        try:
            src, edit, mask = aligned_clips(
                row, cfg.edit.max_frames or cfg.model.pipeline.buckets.max_frames, self.decode_side
            )
        except Exception as err:  # noqa: BLE001 - an unreadable edit or source is this item's error
            return {"error_kind": "metrics_error", "error": f"{type(err).__name__}: {err}"[:500]}, None
        out: dict = {"semantic_model": "none"}
        if cfg.metrics.enabled:
            try:
                out.update(edit_metrics(src, edit, cfg.metrics, mask))
                if self.semantic is not None:
                    text = row.get("target_caption") or row["instruction"]
                    out.update(semantic_score=self.semantic.score(text, edit), semantic_model=self.semantic.label)
            except Exception as err:  # noqa: BLE001
                return {"error_kind": "metrics_error", "error": f"{type(err).__name__}: {err}"[:500]}, None
        if cfg.report.enabled:
            u = uris(self.output, row["key"])
            caption = f"{row['item_id']} [{row['category']}] {row['instruction']}"
            storage.write_bytes(
                u["sheet"],
                contact_sheet(
                    [("source", src), (self.cfg.model.name, edit)], caption, cfg.report.frames, cfg.report.thumb
                ),
            )
            out["sheet_uri"] = u["sheet"]
        return out, {"source": src, "target": edit}

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
            markers.append(self.evaluation.commit(r["key"], [r["key"]], {"results": [r]}))
        return {"marker": np.array(markers, dtype=object)}


# --- the job -------------------------------------------------------------------------------------


def read_results(output: str):
    """The results table under ``output`` (validated), as pandas."""
    uri = storage.join(output, "results")
    return validate(storage.read_parquet(uri), EVAL_RESULTS, where=uri).to_pandas()


class EvalStage(Stage):
    """A part per benchmark item: edit it (once per edit digest), then score it."""

    name = "evaluate"
    tables = {
        "results": Table(
            EVAL_RESULTS,
            "results",
            status_column="status",
            statuses=("ok", "error"),
            reason_column="error_kind",
            ok=("ok",),
            errors=("error",),
        )
    }
    files = {"edits": (".mp4", ".json"), "report/sheets": (".jpg",)}

    def __init__(self, cfg: EvalConfig, output: str):
        super().__init__(output)
        self.cfg, self.retry_errors = cfg, cfg.retry_errors
        self.key: Secret | None = None  # read by execute, on the driver
        self.cache_root = cfg.judge.cache or storage.join(output, "_cache", "judge")
        self.started = time.time()

    def plan(self) -> list[Part]:
        e = self.cfg
        items: list[Item] = read_manifest(e.manifest, e.format, e.benchmark, e.categories, e.limit)
        digest = edit_digest(e)
        return [
            Part(key, {**it.to_json(), "key": key, "model": e.model.name, "edit_digest": digest})
            for it in items
            for key in [item_key(it.item_id, digest)]
        ]

    def digest(self) -> str:
        return score_digest(self.cfg)

    def execute(self, todo: list[Part]) -> list[Marker]:
        import ray

        e = self.cfg
        if e.judge.backend == "openai":
            self.key = api_key(e.judge)  # read once, by the driver
        log.info("evaluate: %d item(s) to edit and score with %s", len(todo), e.model.name)
        ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True  # parts as objects
        ds = ray.data.from_items([{"part": p} for p in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            EditStage,
            fn_constructor_kwargs={"cfg": e, "output": self.output},
            batch_size=1,
            num_gpus=e.edit.num_gpus,
            num_cpus=e.edit.num_cpus,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=e.edit.actors, max_size=e.edit.max_actors or e.edit.actors),
        )
        ds = ds.map_batches(
            ScoreStage,
            fn_constructor_kwargs={"evaluation": self},
            batch_size=e.score.batch_size,
            num_cpus=e.score.num_cpus,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=e.score.actors),
        )
        return [row["marker"] for row in ds.take_all()]

    def summarize(self, summary: dict, markers) -> None:
        from .tables import by_category

        e = self.cfg
        results = read_results(self.output)
        table = by_category(results)
        self.by_category = table
        storage.write_parquet(storage.join(self.output, "by_category.parquet"), table_to_arrow(table))
        benchmarks = sorted(set(results.benchmark))
        summary.update(
            model=e.model.name,
            benchmark=", ".join(benchmarks) or e.benchmark or e.format,
            judge_model=judge_label(e),
            edit_digest=edit_digest(e),
            score_digest=self.digest(),
            items=summary["parts"],
            items_run=summary["parts_run"],
            errors=int((results.status != "ok").sum()),
            seconds=round(time.time() - self.started, 1),
            semantic_model=e.metrics.semantic.model or "none",
            by_category=json.loads(table.to_json(orient="index")),
        )
        if e.report.enabled:
            from .report import write_report

            summary["report"] = write_report(self.output, results, table, summary)

    def report(self, summary: dict) -> None:
        from .tables import format_table

        print(
            format_table(
                self.by_category, f"{summary['model']} on {summary['benchmark']} (judge: {summary['judge_model']})"
            )
        )
        print(f"items run: {summary['items_run']}/{summary['items']}  errors: {summary['errors']}")
        print(f"results: {storage.join(self.output, 'results')}\nreport: {summary.get('report', '-')}")


def run(cfg: EvalJobConfig) -> dict:
    return run_stage(EvalStage(cfg.evaluate, cfg.output)).summary


def dry_run(cfg: EvalJobConfig) -> list[str]:
    return dry_run_stage(EvalStage(cfg.evaluate, cfg.output))


JOB = JobEntry(EvalJobConfig, run, dry_run)


def table_to_arrow(table):
    import pyarrow as pa

    return pa.Table.from_pandas(table.reset_index(), preserve_index=False)
