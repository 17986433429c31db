"""Typed configuration of the edit service: one tree, given to ``build_app``.

``ServeConfig`` is what the builder takes (from ``serve run``, a RayService
``serveConfigV2`` ``args:`` block, or the ``serve:`` section of ``jobs/serve.yaml``);
``ServeJobConfig`` adds what only the local launcher needs (HTTP host/port).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from sama.buckets import BucketConfig
from sama.config import JobConfig
from sama.models.edit_group import GroupConfig
from sama.models.pipeline import EditModelConfig

from .settings import (
    AuthConfig,
    Geometry,
    IngressConfig,
    IngressSettings,
    LimitsConfig,
    QueueConfig,
    RecordsConfig,
    replica_placement,
)


@dataclass
class ModelConfig(EditModelConfig):
    """What the editor loads (``EditModelConfig``) and where it runs."""

    device: str = "auto"  # auto: cuda when the replica has a GPU, else cpu
    warmup: bool = True  # one small edit at start-up, so the first request is not the slow one


@dataclass
class AutoscalingConfig:
    """Ray Serve ``autoscaling_config`` of the editor (see Ray's docs for each key)."""

    min_replicas: int = 1
    max_replicas: int = 2
    initial_replicas: Optional[int] = None
    target_ongoing_requests: float = 1.0  # edits take a minute: one in flight per replica
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    metrics_interval_s: float = 10.0
    look_back_period_s: float = 30.0

    def validate(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got {self.min_replicas}..{self.max_replicas}"
            )

    def as_ray(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class EditorConfig:
    """The GPU deployment that runs the pipeline."""

    num_gpus: float = 1.0  # per process of a replica; 0 on CPU
    num_cpus: float = 1.0
    # Processes (GPUs) one replica spans, on one node: Ulysses sequence parallelism over the
    # in-context sequence, and with an even count the guidance branches on two halves
    # (cfg_parallel). Autoscaling counts replicas: a replica takes this many GPUs.
    gpus_per_replica: int = 1
    cfg_parallel: bool = True
    max_running: int = 1  # edits a replica runs at once (one saturates a GPU)
    # Edits a replica holds: the running ones plus a few waiting there, so the next starts the
    # moment one ends (a full replica is otherwise re-polled by Serve's router, up to 0.5 s late).
    max_ongoing_requests: int = 2
    max_queued_requests: int = 64  # at the caller; a safety net under queue.max_pending
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    health_check_period_s: float = 10.0
    graceful_shutdown_timeout_s: float = 20.0

    def group(self) -> GroupConfig:
        return GroupConfig(self.gpus_per_replica, self.cfg_parallel, self.num_gpus, self.num_cpus)

    def placement(self) -> dict[str, Any]:
        """Serve deployment options of a replica: its actor's resources and placement group."""
        return {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            **replica_placement(self.num_gpus, self.num_cpus, self.gpus_per_replica),
        }

    def validate(self) -> None:
        if self.gpus_per_replica < 1:
            raise ValueError(f"editor.gpus_per_replica must be >= 1, got {self.gpus_per_replica}")
        if not 1 <= self.max_running <= self.max_ongoing_requests:
            raise ValueError(
                f"need 1 <= max_running <= max_ongoing_requests, got {self.max_running} and {self.max_ongoing_requests}"
            )


@dataclass
class ServeConfig:
    name: str = "sama-edit"  # the Serve application
    route_prefix: str = "/"
    results: str = ""  # result mp4s and job records (local folder or s3://); "": a temp folder on the ingress node
    model: ModelConfig = field(default_factory=ModelConfig)
    editor: EditorConfig = field(default_factory=EditorConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def validate(self) -> None:
        if self.ingress.num_replicas < 1:
            raise ValueError(f"ingress.num_replicas must be >= 1, got {self.ingress.num_replicas}")
        if self.ingress.num_replicas > 1 and not self.results:
            raise ValueError(
                "ingress.num_replicas > 1 needs `results` on storage every replica reads (e.g. s3://...): "
                "the job records live there"
            )

    @property
    def buckets(self) -> BucketConfig:
        return self.model.pipeline.buckets

    def ingress_settings(self) -> IngressSettings:
        b = self.buckets
        results = self.results
        if results and "://" not in results:  # a local folder: the same one whatever a replica's cwd
            results = os.path.abspath(results)
        return IngressSettings(
            self.name,
            results,
            self.ingress,
            self.queue,
            self.limits,
            Geometry(b.multiple, b.area, b.max_frames),
            self.records,
            model_facts(self.model.checkpoint or self.model.transformer.pretrained),
            self.model.pipeline.num_inference_steps,
            self.model.pipeline.guidance_scale,
        )


CARD_FACTS = ("title", "base_model", "init_from", "stage", "steps", "code_version", "conversion")


def model_facts(checkpoint: Optional[str]) -> dict[str, Any]:
    """The key facts of the served checkpoint's model card (``sama.lineage``), for GET /v1/model."""
    from sama.lineage import read_card

    if not checkpoint:
        return {"checkpoint": None, "card": None, "note": "tiny random models (no checkpoint configured)"}
    card = read_card(checkpoint)
    if card is None:
        return {"checkpoint": checkpoint, "card": None, "note": "the checkpoint has no model_card.json"}
    facts = {k: card[k] for k in CARD_FACTS if card.get(k) is not None}
    if isinstance(facts.get("conversion"), dict):
        facts["conversion"] = {k: v for k, v in facts["conversion"].items() if k != "config"}
    facts["data"] = [{k: d.get(k) for k in ("source", "dataset", "samples", "license")} for d in card.get("data", [])]
    facts["licenses"] = sorted({d["license"] for d in facts["data"] if d.get("license")})
    facts["evaluations"] = [
        {k: e.get(k) for k in ("benchmark", "items", "judge_model", "metrics")} for e in card.get("evaluations", [])
    ]
    return {"checkpoint": checkpoint, "card": facts}


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface
    port: int = 8000


@dataclass
class ServeJobConfig(JobConfig):
    """``jobs/serve.yaml``: start the service on a local (embedded) Ray or join ``ray.address``."""

    job: str = "serve"
    output: str = "outputs/serve"
    http: HttpConfig = field(default_factory=HttpConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    detach: bool = False  # false: block until Ctrl-C, then remove the app; true: deploy and return
    generate_token: bool = True  # the token env var is empty: make a random token for this run and print it
