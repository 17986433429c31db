"""The training job (``job: train``): SAMA stage 0 or stage 1 on Ray Train + DeepSpeed.

    sama run jobs/train_stage0.yaml                    # tiny, CPU, 2 workers (the demo)
    sama run jobs/train_stage1.yaml train.init_from=<stage 0 output>/stage0
    sama submit jobs/train_stage0_wan14b.yaml          # a GPU cluster

Parse -> plan data (per-rank shard files) -> TorchTrainer -> fit -> export the EMA weights.
Outputs under ``output``: ``<run>/step_XXXXXXXX/`` checkpoints (Ray Train storage),
``<run>/metrics/`` (TensorBoard events + metrics.jsonl), ``export/transformer/``,
``summary.json``. Rerunning the same run continues from its newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os

from sama import storage
from sama.config import JobEntry, to_dict
from sama.lineage import data_mix, write_card
from sama.provenance import record

from . import data
from .config import TrainJobConfig, absolute_paths
from .dryrun import dry_run
from .entry import pack, train_fn
from .export import export_as_task

log = logging.getLogger(__name__)


def storage_target(output: str):
    """(storage_path, storage_filesystem) for RunConfig. s3://: a bucket-relative path and our
    filesystem (Ray fails when given both an s3:// URI and a filesystem), whose writes go
    through boto3 (``sama.training.s3_filesystem``)."""
    if storage.is_s3(output):
        from sama.training.s3_filesystem import s3_filesystem

        return storage.filesystem(output)[1], s3_filesystem()
    return os.path.abspath(storage.filesystem(output)[1]), None


def build_trainer(cfg: TrainJobConfig):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t, w = cfg.train, cfg.train.workers
    batch = {s.name: t.micro_batch(s.family) for s in t.data.sources}
    plan = data.build(t.data.sources, w.num_workers, t.steps, batch, t.engine.sequence_parallel)
    path, fs = storage_target(cfg.output)
    # NCCL: a failed or timed-out collective aborts the rank (an error, not a hang)
    env = {"DS_ACCELERATOR": "cpu"} if not w.use_gpu else {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    return TorchTrainer(
        train_fn,
        train_loop_config=pack({"train": t, "output": cfg.output, "plan": plan}),
        torch_config=TorchConfig(backend="nccl" if w.use_gpu else "gloo", timeout_s=int(t.engine.collective_timeout_s)),
        scaling_config=ScalingConfig(
            num_workers=w.num_workers,
            use_gpu=w.use_gpu,
            resources_per_worker=w.resources(),
            accelerator_type=w.accelerator_type,
            placement_strategy=w.placement_strategy,
        ),
        run_config=RunConfig(
            name=t.name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=t.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.keep),
            worker_runtime_env={"env_vars": env},
        ),
    )


def provenance(cfg: TrainJobConfig) -> dict:
    t = cfg.train
    digest = storage.content_digest(json.dumps(to_dict(t), sort_keys=True, default=str), n=12)
    inputs = [s.uri for s in t.data.sources] + [t.init_from or "", t.model.pretrained or ""]
    return record("train", digest, inputs, stage=t.stage, steps=t.steps)


def model_card(cfg: TrainJobConfig, ckpt: str, summary: dict) -> dict:
    """What went into the exported weights (``sama.lineage`` renders it as README.md)."""
    t = cfg.train
    base = t.model.pretrained or "tiny random SAMA transformer (sama.models.tiny)"
    return {
        "title": f"SAMA stage {t.stage} ({t.name})",
        "summary": f"SAMA stage {t.stage} ({'factorized pre-training' if t.stage == 0 else 'SFT'}), "
        f"{t.steps} steps from {t.init_from or base}.",
        "base_model": base,
        "init_from": t.init_from,
        "stage": t.stage,
        "steps": t.steps,
        "seed": t.seed,
        "checkpoint": ckpt,
        "code_version": summary["provenance"]["code_version"],
        "loss": {"semantic_weight": t.loss.semantic_weight, "timestep_shift": t.loss.timestep_shift},
        "data": data_mix(t.data.sources),
        "final_metrics": {k: v for k, v in (summary.get("metrics") or {}).items() if isinstance(v, (int, float))},
        "provenance": summary["provenance"],
        "evaluations": [],
    }


def run(cfg: TrainJobConfig) -> dict:
    cfg = absolute_paths(cfg)
    t = cfg.train
    result = build_trainer(cfg).fit()
    ckpt = storage.join(cfg.output, t.name, os.path.basename(result.checkpoint.path.rstrip("/")))
    summary = {
        "run": t.name,
        "checkpoint": ckpt,
        "metrics": result.metrics,
        "metrics_dir": storage.join(cfg.output, t.name, "metrics"),
    }
    summary["provenance"] = provenance(cfg)
    if t.export.enabled:
        summary["export"] = export_as_task(
            ckpt, t.export.output or storage.join(cfg.output, "export"), "ema", t.export.dtype, t.export.memory_gb
        )
        write_card(summary["export"], model_card(cfg, ckpt, summary))
    storage.write_text(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2, default=str))
    print(f"[train] stage {t.stage}: checkpoint {ckpt}" + (f", export {summary['export']}" if t.export.enabled else ""))
    return summary


JOB = JobEntry(TrainJobConfig, run, dry_run)
