"""The filter job: a manifest -> verdicts table + filtered manifest (+ summary and report).

A part is ``shard_size`` rows of one input manifest file, decided in one Ray task
(``samples.py``): ``keep`` / ``drop`` with reasons (failed checks, judge rules, decode
errors), or ``error`` when no decision could be had (``judge_error`` after retries,
``check_error`` for a storage failure). Errors are in neither the kept nor the dropped
set; the next run redoes their parts (``retry_errors``), paying only for them thanks to
the judge cache. A config change that decides verdicts (``config.config_digest``) redoes
every part.

With ``judge.backend=vllm`` a first pass (vllm_judge.py) answers every sample the judge
would see through Ray Data's LLM processor into that cache; the parts then decide from it.

Output layout under ``output`` (parts named after their input, so reruns overwrite)::

    verdicts/<dataset>/<part>.parquet   # schemas.VERDICTS
    manifest/<dataset>/<part>.parquet   # schemas.MANIFEST, kept samples only
    summary.json, report/index.html     # counts; histograms and contact sheets
    _work/done/filter/...               # the stage runner's markers
    _cache/judge/...                    # judge answers by (model, rubric version, sample_id)
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import TYPE_CHECKING, Optional

import pyarrow.parquet as pq

from sama import storage
from sama.config import JobEntry
from sama.judging import CachedAnswers, Judge, Secret, api_key
from sama.schemas import MANIFEST, VERDICTS

from ..stage import Marker, Part, Stage, Table, dry_run_stage, run_stage
from .config import FilterConfig, FilterJobConfig, config_digest
from .samples import Slice, Verdicts, part_rows

if TYPE_CHECKING:
    from .vllm_judge import Engine


def plan_parts(input_uri: str, shard_size: int) -> list[Part]:
    """One part per ``shard_size`` rows of every input Parquet file, named after the file."""
    fs, root = storage.filesystem(input_uri)
    info = fs.get_file_info(root)
    files = [input_uri] if info.type.name == "File" else storage.list_files(input_uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"filter.input: no manifest Parquet files under {input_uri}")
    parts = []
    for uri in files:
        path = storage.filesystem(uri)[1]
        rel = posixpath.splitext(posixpath.basename(path) if uri == input_uri else posixpath.relpath(path, root))[0]
        rows = pq.read_metadata(path, filesystem=fs).num_rows
        for offset in range(0, max(rows, 1), shard_size):
            parts.append(Part(f"{rel}-{offset:07d}", Slice(uri, offset, shard_size)))
    return parts


class FilterStage(Stage):
    name = "filter"
    tables = {
        "verdicts": Table(
            VERDICTS,
            "verdicts",
            status_column="verdict",
            statuses=("keep", "drop", "error"),
            reason_column="reasons",
            ok=("keep",),
            errors=("error",),
        ),
        "manifest": Table(MANIFEST, "manifest"),
    }

    def __init__(self, cfg: FilterConfig, output: str, engine: Optional[Engine] = None):
        super().__init__(output)
        self.cfg, self.engine = cfg, engine
        self.task_cpus, self.retry_errors = cfg.task_cpus, cfg.retry_errors
        self.key: Optional[Secret] = None  # read by execute, on the driver
        self.cache_root = cfg.judge.cache or storage.join(output, "_cache", "judge")
        self.failures: dict[str, str] = {}  # in-cluster judge: samples without an answer, and why
        self.asked = 0

    def plan(self) -> list[Part]:
        return plan_parts(self.cfg.input, self.cfg.shard_size)

    def digest(self) -> str:
        return config_digest(self.cfg)

    def inputs(self) -> list[str]:
        return [self.cfg.input]

    def provenance(self) -> dict:
        from sama.judging import RUBRICS

        return {
            "judge_model": self.cfg.judge.model_label,
            "rubric_versions": sorted(r.version for r in RUBRICS.values()),
        }

    def execute(self, todo: list[Part]) -> list[Marker]:
        if self.cfg.judge.backend == "openai":  # workers get the key in memory, never on disk or in logs
            self.key = api_key(self.cfg.judge)
        if self.cfg.judge.backend == "vllm":
            from .vllm_judge import prejudge

            self.asked, self.failures = prejudge(todo, self.cfg, self.cache_root, self.engine)
            self.engine = None  # the processor stays on the driver
        return super().execute(todo)

    def judge(self) -> CachedAnswers | None:
        if self.cfg.judge.backend == "vllm":  # pass 1 (vllm_judge.prejudge) has answered into the cache
            from .vllm_judge import CachedJudge

            return CachedJudge(self.cfg.judge, self.cache_root, self.failures)
        return Judge(self.cfg.judge, self.key, self.cache_root) if self.key is not None else None

    def process(self, part: Part) -> dict:
        rows = part_rows(part.spec, self.cfg.datasets)
        decider = Verdicts(self.cfg.checks, self.cfg.judge, self.cfg.decode_threads, self.digest())

        async def decide() -> tuple[list[dict], int]:
            judge = self.judge()
            try:
                return await decider.decide(rows, judge), (judge.requests if judge else 0)
            finally:
                if judge is not None:
                    await judge.close()

        verdicts, requests = asyncio.run(decide())
        kept = {v["sample_id"] for v in verdicts if v["verdict"] == "keep"}
        return {
            "verdicts": verdicts,
            "manifest": [r for r in rows if r["sample_id"] in kept],
            "stats": {"judge_requests": requests},
        }

    def summarize(self, summary: dict, markers) -> None:
        summary.update(
            judge_model=self.cfg.judge.model_label,
            config_digest=self.digest(),
            judge_requests=self.asked + summary.pop("judge_requests", 0),
        )
        if self.cfg.report.enabled:
            from .report import write_report

            summary["report"] = write_report(
                self.output, self.cfg.report, self.cfg.judge.keep, self.cfg.checks, self.cfg.input
            )

    def report(self, summary: dict) -> None:
        super().report(summary)
        print(f"judge: {summary['judge_model']}  requests this run: {summary['judge_requests']}")


def run(cfg: FilterJobConfig, engine: Optional[Engine] = None) -> dict:
    """``engine``: what answers the in-cluster judge's requests (backend=vllm); None: vLLM."""
    return run_stage(FilterStage(cfg.filter, cfg.output, engine)).summary


def dry_run(cfg: FilterJobConfig) -> list[str]:
    return dry_run_stage(FilterStage(cfg.filter, cfg.output))


JOB = JobEntry(FilterJobConfig, run, dry_run)
