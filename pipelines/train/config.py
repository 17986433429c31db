"""The training job's typed config tree (``train:`` in ``jobs/train_*.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from sama import storage
from sama.buckets import BucketConfig
from sama.config import JobConfig
from sama.models.losses import LossConfig
from sama.models.transformer import SamaModelConfig
from sama.training.metrics import TrackingConfig
from sama.training.mixing import SourceConfig
from sama.training.schedule import ScheduleConfig


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    image_batch: int = 448  # global images per image step (the paper: 448)
    video_batch: int = 112  # global videos per video step (the paper: 112)
    shuffle_buffer: int = 64  # rows per rank in the seeded shuffle buffer
    max_pending_buckets: int = 64  # open partial batches per stream before the oldest is flushed short
    text_len: Optional[int] = None  # pad text embeddings to this length; null: the longest in the batch
    read_num_cpus: float = 0.25  # per Ray Data read task (the workers hold the rest)
    # Read each rank's row groups in the training process instead of a Ray Data pipeline: for small
    # runs on few cores, where the pipeline's scheduling loop (a busy thread in every worker) costs
    # more than the reads. The world debug recipe on 2 CPUs: 2.66x the steps/s (bench/train_steps.py).
    read_in_worker: bool = False
    # The buckets the shards were made with (precompute.buckets): the dry run sizes the tokens
    # per GPU from their largest sample.
    buckets: BucketConfig = field(default_factory=BucketConfig)

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty (which latent shards to train on)")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources names must be unique, got {names}")
        if self.image_batch < 1 or self.video_batch < 1:
            raise ValueError("data.image_batch and data.video_batch must be >= 1")


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # global grad-norm clipping; 0: off
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class EngineConfig:
    """DeepSpeed settings we type; ``extra`` is deep-merged last for anything else."""

    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU | bf16 | fp32
    activation_checkpointing: bool = False  # recompute each transformer block in backward
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU
    offload_params: bool = False  # ZeRO-3 only: parameters to CPU
    overlap_comm: bool = True
    reduce_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    torch_adam: Optional[bool] = None  # null: torch AdamW on CPU, DeepSpeed's fused Adam on GPU
    # Ulysses sequence parallelism (sama.models.sequence_parallel): this many consecutive ranks
    # share each sample and split its sequence; heads and num_workers must divide by it.
    sequence_parallel: int = 1
    # Gradient accumulation: each optimizer step runs this many micro-batches per data-parallel
    # group (DeepSpeed's gradient_accumulation_steps); the global batch counts all of them.
    grad_accum: int = 1
    # Seconds a collective (NCCL / gloo) may wait before the rank fails with a readable error and
    # Ray Train restarts the group from the last checkpoint (torch's default is 1800).
    collective_timeout_s: float = 600.0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage={self.zero_stage}: 0 | 1 | 2 | 3")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"engine.precision={self.precision!r}: auto | bf16 | fp32")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("engine.offload_params needs zero_stage 3")
        if self.sequence_parallel < 1:
            raise ValueError(f"engine.sequence_parallel={self.sequence_parallel} must be >= 1")
        if self.grad_accum < 1:
            raise ValueError(f"engine.grad_accum={self.grad_accum} must be >= 1")
        if self.collective_timeout_s <= 0:
            raise ValueError(f"engine.collective_timeout_s={self.collective_timeout_s} must be > 0")


@dataclass
class EmaConfig:
    decay: float = 0.9998  # the paper: 0.9998, updated every iteration

    def validate(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay={self.decay} must be in [0, 1)")


@dataclass
class WorkersConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu
    memory_per_worker_gb: Optional[float] = None
    resources_per_worker: dict[str, float] = field(default_factory=dict)  # custom resources
    accelerator_type: Optional[str] = None  # e.g. H100: schedule workers only there
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD

    def resources(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker, **self.resources_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        if self.memory_per_worker_gb:
            res["memory"] = self.memory_per_worker_gb * 2**30
        return res


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps; one is also written at the last step
    keep: Optional[int] = 3  # newest checkpoints kept on storage; null: all
    max_failures: int = 3  # worker-group restarts from the last checkpoint (FailureConfig)
    async_upload: bool = True  # upload in the background while training goes on (at most one at a time)
    upload_timeout_s: float = 3600.0  # a new checkpoint waits this long for the previous upload


@dataclass
class MetricsConfig:
    log_every: int = 10  # console line every N steps (TensorBoard / JSONL get every step)
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class ExportConfig:
    enabled: bool = True  # write the EMA weights as a diffusers checkpoint after training
    output: Optional[str] = None  # null: <output>/export
    dtype: str = "float32"  # of the exported weights (bfloat16 halves the folder)
    memory_gb: float = 4.0  # declared by the export task; streaming holds about one parameter


@dataclass
class DebugConfig:
    """Fault injection for tests and drills (never set in a real recipe)."""

    fail_at_step: Optional[int] = None  # the last rank dies (os._exit) at this step, once (a marker on storage)
    stop_after_step: Optional[int] = None  # stop cleanly after this step (with a checkpoint): an interruption
    nan_at_steps: list[int] = field(default_factory=list)  # force a non-finite loss at these steps
    stall_at_step: Optional[int] = None  # the last rank sleeps past engine.collective_timeout_s here
    record_fetches: bool = False  # each rank writes which checkpoint files it fetched (<run>/debug/)


@dataclass
class TrainConfig:
    stage: int = 0  # 0: factorized pre-training, 1: SFT (only names the run and the logs)
    run_name: Optional[str] = None  # Ray Train run (checkpoints under <output>/<run_name>); null: stage<N>
    steps: int = 1000
    seed: int = 0
    init_from: Optional[str] = None  # a checkpoint (or run folder) whose weights and EMA start this run
    max_nonfinite: int = 20  # consecutive non-finite steps tolerated (skipped) before stopping
    model: SamaModelConfig = field(default_factory=SamaModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def validate(self) -> None:
        if self.stage not in (0, 1):
            raise ValueError(f"train.stage={self.stage}: 0 (pre-training) or 1 (SFT)")
        if self.steps < 1 or self.checkpoint.every < 1:
            raise ValueError("train.steps and train.checkpoint.every must be >= 1")
        n, sp, k = self.workers.num_workers, self.engine.sequence_parallel, self.engine.grad_accum
        if n % sp:
            raise ValueError(f"workers.num_workers={n} is not divisible by engine.sequence_parallel={sp}")
        for what, b in (("image_batch", self.data.image_batch), ("video_batch", self.data.video_batch)):
            if b % (n // sp * k):
                by = (
                    f"workers.num_workers={n}"
                    if sp == 1
                    else f"the {n // sp} data-parallel groups (workers.num_workers={n} / engine.sequence_parallel={sp})"
                )
                by += f" x engine.grad_accum={k}" if k > 1 else ""
                raise ValueError(f"data.{what}={b} is not divisible by {by}")

    @property
    def data_parallel(self) -> int:
        """Groups of ranks that each train on their own samples."""
        return self.workers.num_workers // self.engine.sequence_parallel

    @property
    def name(self) -> str:
        return self.run_name or f"stage{self.stage}"

    def global_batch(self, family: str) -> int:
        return self.data.image_batch if family == "image" else self.data.video_batch

    def micro_batch(self, family: str) -> int:
        """Samples per data-parallel group per micro-batch."""
        return self.global_batch(family) // (self.data_parallel * self.engine.grad_accum)


def absolute_paths(cfg: "TrainJobConfig") -> "TrainJobConfig":
    """The config with every local path made absolute: Ray Train workers do not run in the
    driver's working directory, so a relative ``init_from`` or ``pretrained`` would miss there."""
    t = cfg.train

    def fix(uri: Optional[str]) -> Optional[str]:
        return storage.normalize(uri) if uri else uri

    t = dataclasses.replace(
        t,
        init_from=fix(t.init_from),
        model=dataclasses.replace(t.model, pretrained=fix(t.model.pretrained)),
        export=dataclasses.replace(t.export, output=fix(t.export.output)),
        data=dataclasses.replace(t.data, sources=[dataclasses.replace(s, uri=fix(s.uri)) for s in t.data.sources]),
    )
    return dataclasses.replace(cfg, output=fix(cfg.output), train=t)


@dataclass
class TrainJobConfig(JobConfig):
    job: str = "train"
    output: str = "outputs/train"  # Ray Train storage: <output>/<run_name>/step_XXXXXXXX/, metrics, export
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class ExportJobConfig(JobConfig):
    """``job: train_export``: a training checkpoint's EMA weights -> a diffusers folder."""

    job: str = "train_export"
    output: str = "outputs/export"  # the folder gets transformer/ (SamaTransformer3DModel.from_pretrained)
    checkpoint: str = ""  # a checkpoint folder or a run folder (its newest checkpoint); local or s3://
    weights: str = "ema"  # ema | raw
    dtype: str = "float32"  # of the exported weights
    memory_gb: float = 4.0  # declared by the export task

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint is empty (a training checkpoint or run folder)")
        if self.weights not in ("ema", "raw"):
            raise ValueError(f"weights={self.weights!r}: ema | raw")
