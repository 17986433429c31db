"""The evaluate job's settings, and the names and digests its outputs are keyed by."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from sama import storage
from sama.config import JobConfig, to_dict
from sama.judging import EVAL_RUBRICS, JudgeConfig
from sama.models.pipeline import EditModelConfig
from sama.training.metrics import TrackingConfig

from .align import AlignConfig
from .manifest import FORMATS
from .metrics import MetricsConfig

JUDGE_OFF = "none:off"


@dataclass
class EvalModelConfig(EditModelConfig):
    """The checkpoint under evaluation (``EditModelConfig``) and its name in tables and reports."""

    label: Optional[str] = None  # null: the checkpoint's folder name (the edits folder's, for brought edits), or "tiny"

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return storage.basename(self.checkpoint.rstrip("/")) if self.checkpoint else "tiny"


@dataclass
class EditConfig:
    num_gpus: float = 0.0  # per edit actor (per process of one); 0: CPU (the tiny model)
    num_cpus: float = 1.0
    gpus_per_actor: int = 1  # > 1: each edit actor drives that many processes (sequence + CFG parallel, as serving)
    cfg_parallel: bool = True
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
    format: str = "auto"  # auto | user | vie | openve | reco | manifest (our MANIFEST table)
    benchmark: Optional[str] = None  # label in tables; null: the format's name
    categories: list[str] = field(default_factory=list)  # only these; empty: all
    limit: Optional[int] = None  # first N items (by category, id): a quick look
    split: Optional[float] = None  # only the held-out fraction, by item id (sama.schemas.held_out)
    edits: Optional[str] = None  # a folder of one system's edits named <item id>.<ext>: scored, no model loaded
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    align: AlignConfig = field(default_factory=AlignConfig)  # how brought edits meet their source
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # backend none: metrics only, labelled "none:off"
    rubrics: list[str] = field(default_factory=lambda: ["openve", "reco", "vie"])
    score: ScoreConfig = field(default_factory=ScoreConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow: params + mean metrics of a run
    retry_errors: bool = True  # a rerun redoes items whose result is an error

    def validate(self) -> None:
        if not self.manifest:
            raise ValueError("evaluate.manifest is empty (the benchmark file or folder to read)")
        if self.format not in FORMATS:
            raise ValueError(f"evaluate.format={self.format!r}: one of {list(FORMATS)}")
        bad = [r for r in self.rubrics if r not in EVAL_RUBRICS]
        if bad:
            raise ValueError(f"evaluate.rubrics: unknown {bad} (known: {sorted(EVAL_RUBRICS)})")
        if self.split is not None and not 0 < self.split < 1:
            raise ValueError(f"evaluate.split={self.split}: the held-out fraction, between 0 and 1")
        if self.judge.backend == "vllm":
            raise ValueError(
                "evaluate.judge.backend=vllm is not supported: serve the model with `vllm serve` "
                "and use backend=openai with its base_url"
            )

    @property
    def system(self) -> str:
        """The name of the system under evaluation in tables and reports."""
        if self.model.label or not self.edits:
            return self.model.name
        return storage.basename(self.edits.rstrip("/"))


@dataclass
class EvalJobConfig(JobConfig):
    job: str = "evaluate"
    output: str = "outputs/evaluate"
    evaluate: EvalConfig = field(default_factory=EvalConfig)


# --- names and digests -----------------------------------------------------------------------------


def edit_digest(cfg: EvalConfig, brought: bool = False) -> str:
    """What makes the edited video: a change means new edits (and new keys). Models: the config
    and the stamp of every weight file it loads (retraining into the same folder counts). Brought
    edits: the system's name (each file's size and time are in its item's key)."""
    if brought:
        return storage.content_digest("brought", cfg.system, n=10)
    e = cfg.edit
    parts = {
        "model": to_dict(cfg.model.resolved()),
        "pipeline": to_dict(cfg.model.pipeline),
        "edit": [e.seed, e.steps, e.max_frames, e.fps, e.crf],
        # The weights themselves: a model retrained into the same folder makes new edits.
        "weights": {path: storage.tree_stamp(path) for path in sorted(set(_model_paths(to_dict(cfg.model))))},
    }
    return storage.content_digest(json.dumps(parts, sort_keys=True, default=str), n=10)


def _model_paths(node) -> Iterator[str]:
    """Every folder or file a model config loads weights from (``checkpoint``, ``base``, any
    part's ``pretrained``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("checkpoint", "base", "pretrained") and isinstance(value, str) and value:
                yield value
            else:
                yield from _model_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _model_paths(value)


def judge_label(cfg: EvalConfig) -> str:
    return JUDGE_OFF if cfg.judge.backend == "none" else cfg.judge.model_label


def score_digest(cfg: EvalConfig) -> str:
    """What decides the scores of an existing edit: a change rescores without re-editing."""
    j = cfg.judge
    parts = {
        "metrics": to_dict(cfg.metrics),
        "align": to_dict(cfg.align),
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
