"""The filter job's settings, and the digest of those that decide a verdict."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from sama import storage
from sama.config import JobConfig
from sama.judging import RUBRICS, JudgeConfig

from .checks import ChecksConfig


@dataclass
class ReportConfig:
    enabled: bool = True
    examples: int = 4  # samples drawn as frame strips per reason (every one is listed in a folding table)
    max_rows: int = 1000  # rows listed per reason (the verdicts table has them all)
    ingest_rejects: str = ""  # the ingest rejects table to show too; "": the `rejects` beside filter.input


@dataclass
class FilterConfig:
    input: str = "outputs/ingest/manifest"  # a manifest folder (the ingest job's) or one Parquet file
    datasets: list[str] = field(default_factory=list)  # only these datasets; empty: all
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    shard_size: int = 512  # rows per part: the unit of resume
    decode_threads: int = 4  # concurrent decodes per task
    task_cpus: float = 1.0
    retry_errors: bool = True  # a rerun redoes parts holding "error" verdicts

    def validate(self) -> None:
        if self.shard_size < 1 or self.decode_threads < 1:
            raise ValueError("shard_size and decode_threads must be >= 1")


@dataclass
class FilterJobConfig(JobConfig):
    job: str = "filter"
    output: str = "outputs/filter"
    filter: FilterConfig = field(default_factory=FilterConfig)


def config_digest(cfg: FilterConfig) -> str:
    """What decides a verdict (not throughput knobs): a change redoes the parts."""
    judge = cfg.judge
    decisive = {
        "checks": dataclasses.asdict(cfg.checks),
        "datasets": cfg.datasets,
        "judge": [
            judge.backend,
            judge.model_label,
            judge.base_url,
            judge.frames,
            judge.max_side,
            dataclasses.asdict(judge.keep),
            sorted(r.version for r in RUBRICS.values()),
        ],
    }
    return storage.content_digest(json.dumps(decisive, sort_keys=True, default=str), n=12)
