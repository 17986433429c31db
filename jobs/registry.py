"""Job name (the ``job:`` key of a YAML) -> its config class and entry point.

Entry points are imported lazily so ``sama --help`` stays fast and a job's heavy
dependencies load only when that job runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class JobSpec:
    name: str
    module: str  # defines CONFIG_CLASS and run(cfg)
    config: str
    entry: str = "run"
    summary: str = ""

    def load(self) -> tuple[type, Callable[[Any], Any]]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), getattr(mod, self.entry)


JOBS: dict[str, JobSpec] = {
    s.name: s
    for s in (
        JobSpec("ingest", "sama.pipelines.ingest.job", "IngestJobConfig",
                summary="read every dataset into one manifest table (+ rejects)"),
        JobSpec("fetch", "sama.pipelines.fetch.job", "FetchJobConfig",
                summary="download referenced media (Koala-36M clips, Pico-Banana sources) + a fetch table"),
        JobSpec("filter", "sama.pipelines.filter.job", "FilterJobConfig",
                summary="cheap media checks + a VLM judge: verdicts table and a filtered manifest"),
        JobSpec("precompute", "sama.pipelines.precompute.job", "PrecomputeJobConfig",
                summary="manifest -> VAE latents, SigLIP anchor tokens, text embeddings (Parquet shards)"),
        JobSpec("evaluate", "sama.pipelines.evaluate.job", "EvalJobConfig",
                summary="edit a benchmark with a checkpoint; VLM judges + automatic metrics -> tables and a report"),
        JobSpec("evaluate_compare", "sama.pipelines.evaluate.compare", "CompareJobConfig",
                summary="two evaluate runs -> per-category deltas and a side-by-side report"),
        JobSpec("serve", "sama.serve.job", "ServeJobConfig",
                summary="the edit service: HTTP API + web page on Ray Serve (blocks until Ctrl-C)"),
        JobSpec("train", "sama.pipelines.train.job", "TrainJobConfig",
                summary="SAMA stage 0 / stage 1 training on Ray Train + DeepSpeed (checkpoints, EMA, export)"),
        JobSpec("train_export", "sama.pipelines.train.export", "ExportJobConfig",
                summary="a training checkpoint's EMA weights -> a diffusers transformer folder"),
    )
}
