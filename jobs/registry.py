"""Job name (the ``job:`` key of a YAML) -> the module that declares it (``JOB``).

Entry points are imported lazily so ``sama --help`` stays fast and a job's heavy
dependencies load only when that job runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from sama.config import JobEntry


@dataclass(frozen=True)
class JobSpec:
    name: str
    module: str  # declares ``JOB`` (a sama.config.JobEntry): config class, run, optional dry run
    summary: str = ""

    def load(self) -> JobEntry:
        entry = getattr(importlib.import_module(self.module), "JOB", None)
        if not isinstance(entry, JobEntry):
            raise TypeError(f"{self.module} declares no JOB = JobEntry(...) for job '{self.name}'")
        return entry


JOBS: dict[str, JobSpec] = {
    s.name: s
    for s in (
        JobSpec(
            "ingest", "sama.pipelines.ingest.job", summary="read every dataset into one manifest table (+ rejects)"
        ),
        JobSpec(
            "fetch",
            "sama.pipelines.fetch.job",
            summary="download referenced media (Koala-36M clips, Pico-Banana sources) + a fetch table",
        ),
        JobSpec(
            "filter",
            "sama.pipelines.filter.job",
            summary="cheap media checks + a VLM judge: verdicts table and a filtered manifest",
        ),
        JobSpec(
            "precompute",
            "sama.pipelines.precompute.job",
            summary="manifest -> VAE latents, SigLIP anchor tokens, text embeddings (Parquet shards)",
        ),
        JobSpec(
            "evaluate",
            "sama.pipelines.evaluate.job",
            summary="edit a benchmark with a checkpoint; VLM judges + automatic metrics -> tables and a report",
        ),
        JobSpec(
            "evaluate_compare",
            "sama.pipelines.evaluate.compare",
            summary="two evaluate runs -> per-category deltas and a side-by-side report",
        ),
        JobSpec(
            "serve",
            "sama.serve.job",
            summary="the edit service: HTTP API + web page on Ray Serve (blocks until Ctrl-C)",
        ),
        JobSpec(
            "train",
            "sama.pipelines.train.job",
            summary="SAMA stage 0 / stage 1 training on Ray Train + DeepSpeed (checkpoints, EMA, export)",
        ),
        JobSpec(
            "train_export",
            "sama.pipelines.train.export",
            summary="a training checkpoint's EMA weights -> a diffusers transformer folder",
        ),
    )
}
