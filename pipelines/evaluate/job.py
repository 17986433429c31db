"""The evaluation job: a benchmark -> edits (made or brought), scores per item, tables and a report.

Ray Data pipeline, streaming::

    benchmark items (not done yet)
      -> edit   actor pool:  the checkpoint's pipeline (GPUs; the tiny model on CPU), one edit at
                             a time -> edits/<key>.mp4 + edits/<key>.json (the edit's marker)
         or     CPU tasks:   edits brought from another system (``evaluate.edits`` or the
                             manifest's ``edit`` column): probed, no model loaded
      -> score  actor pool:  source, edit, mask and target aligned (``align.py``), automatic
                             metrics (threads; against the target when there is one), the VLM
                             judge (many requests in flight), contact sheet -> results/<key>.parquet

On the stage runner (``pipelines/stage.py``) a part is one item, named ``<item id>-<edit
digest>`` (model, its weight files' sizes and times, sampling settings; for a brought edit, the
system and the file's size and time), so outputs are named by content: a rerun overwrites
instead of duplicating, an edit already on storage is scored without editing again, and a result is redone only when its
scoring settings changed or it holds an error (``retry_errors``; the judge cache makes the
retry pay only for the missing answers). Files of items no longer planned are removed, so
the tables hold exactly the current benchmark x system.

Output under ``output``::

    edits/<key>.mp4, edits/<key>.json     results/<key>.parquet (schemas.EVAL_RESULTS)
    by_category.parquet, summary.json     report/index.html, report/sheets/<key>.jpg
    _cache/judge/..., _work/done/...      config.yaml
"""

from __future__ import annotations

import json
import logging
import posixpath
import time

from sama import storage
from sama.config import JobEntry, to_dict
from sama.judging import Secret, api_key
from sama.media import IMAGE_EXTS, VIDEO_EXTS
from sama.schemas import EVAL_RESULTS, read_table

from ..stage import Marker, Part, Stage, Table, dry_run_stage, run_stage
from .config import EvalConfig, EvalJobConfig, edit_digest, item_key, judge_label, score_digest
from .edits import EditStage, bring_batch
from .manifest import Item, read_manifest
from .scoring import ScoreStage

log = logging.getLogger(__name__)


def read_results(output: str):
    """The results table under ``output`` (validated), as pandas."""
    return read_table(storage.join(output, "results"), EVAL_RESULTS).to_pandas()


def edits_by_id(folder: str) -> dict[str, str]:
    """A system's edits, by the item id their file is named after (``<id>.mp4``, ``<id>.png``...)."""
    files = storage.list_files(folder, VIDEO_EXTS + IMAGE_EXTS, recursive=False)
    if not files:
        raise FileNotFoundError(f"evaluate.edits: no video or image files under {folder}")
    return {posixpath.splitext(storage.basename(f))[0]: f for f in files}


def mean_metrics(results) -> dict[str, float]:
    """The mean of every numeric column over the items that were scored."""
    numeric = results[results.status == "ok"].select_dtypes("number")
    return {c: round(float(numeric[c].mean()), 4) for c in numeric.columns if numeric[c].notna().any()}


class EvalStage(Stage):
    """A part per benchmark item: edit it (once per edit digest) or take the brought edit, then score it."""

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
        self.brought = False

    def plan(self) -> list[Part]:
        e = self.cfg
        items: list[Item] = read_manifest(e.manifest, e.format, e.benchmark, e.categories, e.limit, e.split)
        if e.edits:  # one folder per system: its files matched to items by id
            found = edits_by_id(e.edits)
            items = [Item(**{**it.to_json(), "edit_uri": found.get(it.item_id)}) for it in items]
        self.brought = bool(e.edits) or any(it.edit_uri for it in items)
        digest = edit_digest(e, self.brought)
        parts = []
        for it in items:
            # A brought edit's key follows its file, so a replaced file is scored again.
            per_item = (
                storage.content_digest(digest, storage.stamp(it.edit_uri) if it.edit_uri else "missing", n=10)
                if self.brought
                else digest
            )
            key = item_key(it.item_id, per_item)
            spec = {**it.to_json(), "key": key, "model": e.system, "edit_digest": digest, "brought": self.brought}
            if self.brought:
                spec["edits_folder"] = e.edits
            parts.append(Part(key, spec))
        return parts

    def digest(self) -> str:
        return score_digest(self.cfg)

    def inputs(self) -> list[str]:
        e = self.cfg
        if e.edits:
            return [e.manifest, e.edits]
        return [e.manifest, e.model.checkpoint or e.model.transformer.pretrained or ""]

    def provenance(self) -> dict:
        return {"system": self.cfg.system, "judge_model": judge_label(self.cfg)}

    def execute(self, todo: list[Part]) -> list[Marker]:
        import ray

        e = self.cfg
        if e.judge.backend == "openai":
            self.key = api_key(e.judge)  # read once, by the driver
        how = "brought edits of" if self.brought else "edits by"
        log.info("evaluate: %d item(s) to score, %s %s", len(todo), how, e.system)
        ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True  # parts as objects
        ds = ray.data.from_items([{"part": p} for p in todo], override_num_blocks=len(todo))
        if self.brought:  # nothing to make: the files are probed on CPUs, no model is loaded
            ds = ds.map_batches(bring_batch, batch_size=1, num_cpus=e.score.num_cpus, batch_format="numpy")
        else:
            pool = ray.data.ActorPoolStrategy(min_size=e.edit.actors, max_size=e.edit.max_actors or e.edit.actors)
            ds = ds.map_batches(
                EditStage,
                fn_constructor_kwargs={"cfg": e, "output": self.output},
                batch_size=1,
                num_gpus=e.edit.num_gpus,
                num_cpus=e.edit.num_cpus,
                batch_format="numpy",
                compute=pool,
            )
        scoring = {"cfg": e, "output": self.output, "key": self.key, "cache_root": self.cache_root}
        ds = ds.map_batches(
            ScoreStage,
            fn_constructor_kwargs={**scoring, "digest": self.digest(), "commit": self.commit},
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
            model=e.system,
            edits="brought" if self.brought else "made",
            benchmark=", ".join(benchmarks) or e.benchmark or e.format,
            judge_model=judge_label(e),
            edit_digest=edit_digest(e, self.brought),
            score_digest=self.digest(),
            items=summary["parts"],
            items_run=summary["parts_run"],
            errors=int((results.status != "ok").sum()),
            seconds=round(time.time() - self.started, 1),
            semantic_model=e.metrics.semantic.model or "none",
            perceptual_model=e.metrics.perceptual.model or "none",
            by_category=json.loads(table.to_json(orient="index")),
        )
        if e.report.enabled:
            from .report import write_report

            summary["report"] = write_report(self.output, results, table, summary)
        metrics = mean_metrics(results)
        self.add_to_model_card(metrics, summary)
        self.track(metrics, summary)

    def track(self, metrics: dict[str, float], summary: dict) -> None:
        """Params and mean metrics to MLflow when ``evaluate.tracking.mlflow_uri`` is set."""
        from sama.training.metrics import start_mlflow

        mlflow = start_mlflow(self.cfg.tracking, f"eval-{self.cfg.system}", to_dict(self.cfg))
        if mlflow is None:
            return
        try:
            mlflow.log_metrics(metrics)
            mlflow.set_tags({"benchmark": summary["benchmark"], "output": self.output, "system": self.cfg.system})
            summary["mlflow_run"] = mlflow.active_run().info.run_id
        finally:
            mlflow.end_run()

    def add_to_model_card(self, metrics: dict[str, float], summary: dict) -> None:
        """An evaluated checkpoint with a model card gets the evaluation in it: the transformer's
        folder when one is named (a trained export beside a base checkpoint's VAE and text encoder)."""
        from sama.lineage import add_evaluation

        m = self.cfg.model
        checkpoint = None if self.brought else (m.transformer.pretrained or m.checkpoint)
        if not checkpoint:
            return
        added = add_evaluation(
            checkpoint,
            {
                "benchmark": summary["benchmark"],
                "output": self.output,
                "items": summary["items"],
                "errors": summary["errors"],
                "judge_model": summary["judge_model"],
                "metrics": metrics,
            },
        )
        if added:
            summary["model_card"] = storage.join(checkpoint, "README.md")

    def report(self, summary: dict) -> None:
        from .tables import format_table

        title = f"{summary['model']} on {summary['benchmark']} (judge: {summary['judge_model']})"
        print(format_table(self.by_category, title))
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
