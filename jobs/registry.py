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
        JobSpec("filter", "sama.pipelines.filter.job", "FilterJobConfig",
                summary="cheap media checks + a VLM judge: verdicts table and a filtered manifest"),
        JobSpec("precompute", "sama.pipelines.precompute.job", "PrecomputeJobConfig",
                summary="manifest -> VAE latents, SigLIP anchor tokens, text embeddings (Parquet shards)"),
        JobSpec("serve", "sama.serve.job", "ServeJobConfig",
                summary="the edit service: HTTP API + web page on Ray Serve (blocks until Ctrl-C)"),
    )
}
