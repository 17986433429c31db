"""``sama run jobs/train_*.yaml --dry-run``: check a recipe's resources and size its model.

Nothing is allocated or downloaded: the transformer is built on the meta device (from
``model.architecture`` when named, else the checkpoint's config.json), memory per GPU
follows ZeRO's partitioning, and local shard folders are counted (remote ones are not
touched, so a dry run works offline).
"""

from __future__ import annotations

from sama import storage
from sama.models.sizing import estimate_memory, meta_transformer

from .config import TrainJobConfig

GPU_MEMORY_GB = 80.0  # H100 / A100-80G: the budget the cluster recipes are written for


def _count_rows(uri: str, tasks: list[str]) -> int | None:
    """Rows of ``tasks`` in a local shard folder; None for remote or missing folders."""
    if storage.is_s3(uri):
        return None
    files = storage.list_files(uri, ".parquet")
    if not files:
        return None
    return sum(sum(t in tasks for t in storage.read_parquet(f, columns=["task"])["task"].to_pylist()) for f in files)


def dry_run(cfg: TrainJobConfig) -> list[str]:
    t, w = cfg.train, cfg.train.workers
    world = w.num_workers
    lines = [f"workers: {world} x ({w.cpus_per_worker} CPU" + (f", {w.gpus_per_worker} GPU" if w.use_gpu else "") + ")"
             + (f" on {w.accelerator_type}" if w.accelerator_type else "")]
    if w.use_gpu and w.gpus_per_worker != 1:
        raise ValueError(f"workers.gpus_per_worker={w.gpus_per_worker}: DeepSpeed runs one rank per GPU; use 1")
    sp, dp, k = t.engine.sequence_parallel, t.data_parallel, t.engine.grad_accum
    accum = f" x {k} micro-batches" if k > 1 else ""
    for family in ("image", "video"):
        batch, micro = t.global_batch(family), t.micro_batch(family)
        lines.append(f"{family} steps: global batch {batch} = {micro} per rank{accum} x {world} ranks" if sp == 1 else
                     f"{family} steps: global batch {batch} = {micro} per group{accum} x {dp} data-parallel "
                     f"group(s) of {sp} sequence-parallel ranks")

    model, source = meta_transformer(t.model, t.model.architecture)
    params = sum(p.numel() for p in model.parameters())
    bf16 = t.engine.precision == "bf16" or (t.engine.precision == "auto" and w.use_gpu)
    mem = estimate_memory(params, world, t.engine.zero_stage, bf16=bf16, ema=True)
    heads = model.config.num_attention_heads
    if heads % sp:
        raise ValueError(f"engine.sequence_parallel={sp} must divide the model's {heads} attention heads")
    lines += [f"model: {source}, {model.config.num_layers} layers, {heads} heads of {model.config.attention_head_dim}",
              *mem.lines()]
    if w.use_gpu and mem.total_gb > GPU_MEMORY_GB:
        raise ValueError(f"model states need {mem.total_gb:.0f} GiB per GPU with ZeRO-{t.engine.zero_stage} over "
                         f"{world} ranks (> {GPU_MEMORY_GB:.0f} GiB): raise engine.zero_stage or the worker count")
    if w.use_gpu and mem.total_gb > 0.5 * GPU_MEMORY_GB:
        lines.append(f"warning: model states take {mem.total_gb:.0f} of {GPU_MEMORY_GB:.0f} GiB; little is left "
                     "for activations (enable engine.activation_checkpointing)")

    for s in t.data.sources:
        n = _count_rows(s.uri, list(s.tasks))
        family = "image" if set(s.tasks) <= {"image_edit"} else "video"
        batch = t.global_batch(family)
        if n is None:
            lines.append(f"source {s.name}: {s.uri} not counted (remote or not written yet)")
        elif n < batch:
            raise ValueError(f"source {s.name}: {n} {family} rows in {s.uri}, fewer than one global batch ({batch})")
        else:
            lines.append(f"source {s.name}: {n} rows, {n // batch} full {family} batches an epoch")
    return lines
