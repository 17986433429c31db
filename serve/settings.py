"""The torch-free part of the service config: what the ingress needs (it never loads a model).

The ingress replica unpickles only these, so it starts without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class IngressConfig:
    """The deployment that speaks HTTP. Its job records live on the results storage (serve/jobstore.py),
    so it may run as several replicas (then ``results`` must be storage they share, e.g. s3://)."""

    num_replicas: int = 1
    # 0, like Serve's own HTTP proxies: a replacement ingress is always placeable, even when
    # editor replicas hold every CPU (it relays bytes; the editors do the work).
    num_cpus: float = 0.0
    max_ongoing_requests: int = 256  # polls and downloads are cheap; edits are bounded by queue.max_pending


@dataclass
class QueueConfig:
    max_pending: int = 16  # accepted edits not yet finished (queued + running); more: 503
    queue_timeout_s: float = 600.0  # waiting for a replica longer than this fails the job
    run_timeout_s: float = 600.0  # one edit running longer than this is cancelled and failed
    retry_after_s: int = 30  # the Retry-After header of a 503
    keep_finished: int = 256  # finished jobs also kept in memory (all are on storage until their retention)


@dataclass
class RecordsConfig:
    """Job records: one JSON file per edit under ``<results>/jobs/``, beside its result mp4."""

    retention_s: float = 7 * 24 * 3600.0  # a finished job's record and result are deleted this long after
    lease_s: float = 30.0  # an ingress replica silent this long is gone: its unfinished jobs read as failed


@dataclass
class LimitsConfig:
    max_upload_mb: float = 64.0
    max_concurrent_uploads: int = 4  # request bodies being received at once per ingress; more: 503
    max_duration_s: float = 30.0
    max_source_frames: int = 1000  # frames in the source file
    max_side: int = 1920  # of the source, pixels
    max_pixels: int = 1920 * 1080
    max_steps: int = 100
    max_prompt_chars: int = 1000
    sync_max_frames: int = 17  # the synchronous endpoint edits at most this many frames
    allowed_roots: list[str] = field(default_factory=list)  # local folders a `uri` may point into
    allowed_buckets: list[str] = field(default_factory=list)  # s3 buckets (names) a `uri` may point into

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class AuthConfig:
    token_env: Optional[str] = "SAMA_SERVE_TOKEN"  # env var holding the bearer token; null: no auth
    required: bool = True  # token_env set but empty/missing: refuse to start (false: run open, with a warning)


@dataclass(frozen=True)
class Geometry:
    """What the model edits at (from its buckets): requests are checked against it."""

    multiple: int
    area: int
    max_frames: int


@dataclass
class IngressSettings:
    name: str
    results: str
    ingress: IngressConfig
    queue: QueueConfig
    limits: LimitsConfig
    geometry: Geometry
    records: RecordsConfig = field(default_factory=RecordsConfig)
    model: dict = field(default_factory=dict)  # what GET /v1/model says: the checkpoint and its card's key facts
    steps: int = 50  # the served default (the release's); the page shows it, a request may ask for fewer
    guidance_scale: float = 5.0


def replica_placement(num_gpus: float, num_cpus: float, processes: int) -> dict:
    """Serve deployment options of an editor replica over ``processes`` processes: one
    placement group on one node (NCCL stays inside it), bundle 0 the replica, r its rank-r helper.
    Empty for a one-process replica (its ``ray_actor_options`` say it all)."""
    if processes <= 1:
        return {}
    bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
    return {
        "placement_group_bundles": [dict(bundle) for _ in range(processes)],
        "placement_group_strategy": "STRICT_PACK",
    }
