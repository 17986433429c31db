"""``sama run jobs/train_*.yaml --dry-run [--cluster FILE]``: does the recipe start, fit and place?

Nothing is allocated or downloaded: the transformer is built on the meta device (from
``model.architecture`` when named, else the checkpoint's config.json). The dry run prints
and checks:

- the batch arithmetic (global batch = micro-batch x grad_accum x data-parallel groups);
- tokens per GPU of the largest sample of each family (``data.buckets``: the buckets the
  shards were made with), per sequence-parallel degree;
- GPU memory term by term (ZeRO states, EMA, fp32-kept parameters, ZeRO-3's gathered
  parameters, activations from per-token constants measured on a real-size block, a
  reserve) and a verdict per GPU type (H100 80 GB, H200 141 GB); it refuses a GPU recipe
  that does not fit its ``workers.accelerator_type``;
- host RAM and local disk per worker at start, at a checkpoint and for the export;
- with ``--cluster`` (a KubeRay RayCluster or a cluster launcher file): whether the workers
  can be placed on its GPU nodes (CPUs, Ray's schedulable memory, GPUs, node count).
"""

from __future__ import annotations

from typing import Optional

from sama import storage
from sama.buckets import make_buckets
from sama.clusters import NodeGroup
from sama.models.sizing import (
    GPU_TYPES,
    activation_gib,
    estimate_memory,
    meta_transformer,
    tokens_per_sample,
    training_fit,
)

from .config import TrainJobConfig
from .weights import fp32_kept_names

GIB = 1024**3
HOST_BASELINE_GIB = 3.0  # Python, torch, CUDA context on the host, Ray worker


def _count_rows(uri: str, tasks: list[str]) -> int | None:
    """Rows of ``tasks`` in a local shard folder; None for remote or missing folders."""
    if storage.is_s3(uri):
        return None
    files = storage.list_files(uri, ".parquet")
    if not files:
        return None
    return sum(sum(t in tasks for t in storage.read_parquet(f, columns=["task"])["task"].to_pylist()) for f in files)


def _largest(cfg) -> tuple[tuple[int, int], int]:
    """((height, width), frames) of the largest sample the shards can hold."""
    b = max(make_buckets(cfg), key=lambda b: b.area)
    return (b.height, b.width), cfg.max_frames


def check_placement(cfg: TrainJobConfig, groups: list[NodeGroup]) -> list[str]:
    """Can the workers be placed on the cluster's GPU (or CPU) nodes? Raises ValueError if not."""
    w, t = cfg.train.workers, cfg.train
    pool = [g for g in groups if (g.gpus > 0) == w.use_gpu]
    if not pool:
        raise ValueError(f"the cluster has no {'GPU' if w.use_gpu else 'CPU'} worker group")
    problems, lines = [], []
    for g in pool:
        per_node = g.gpus // int(w.gpus_per_worker) if w.use_gpu else max(1, int(g.cpus // w.cpus_per_worker))
        reads = 0 if t.data.read_in_worker else per_node * len(t.data.sources) * t.data.read_num_cpus  # read tasks
        cpu = per_node * w.cpus_per_worker + reads
        mem = per_node * (w.memory_per_worker_gb or 0)
        fits = [cpu <= g.cpus, mem <= g.schedulable_memory_gib, per_node * g.max_nodes >= w.num_workers]
        lines.append(
            f"cluster group {g.name}: {g.max_nodes} nodes x ({g.cpus:g} CPU, {g.memory_gib:g} GiB, "
            f"{g.gpus} GPU); {per_node} workers a node need {cpu:g} CPU (incl. {reads:g} for data reads) "
            f"and {mem:g} GiB of Ray's {g.schedulable_memory_gib:.0f} schedulable; "
            f"{w.num_workers} workers need {-(-w.num_workers // per_node)} nodes"
        )
        if all(fits):
            return lines
        problems.append(
            g.name
            + ": "
            + ", ".join(
                msg
                for ok, msg in zip(
                    fits,
                    [
                        f"{cpu:g} CPU > {g.cpus:g}",
                        f"{mem:g} GiB > {g.schedulable_memory_gib:.0f}",
                        f"{w.num_workers} workers > {per_node * g.max_nodes}",
                    ],
                )
                if not ok
            )
        )
    raise ValueError(
        "the workers cannot be placed on the cluster: "
        + "; ".join(problems)
        + " (lower workers.cpus_per_worker / memory_per_worker_gb / data.read_num_cpus, or raise "
        "the group's maxReplicas)"
    )


def dry_run(cfg: TrainJobConfig, cluster: Optional[list[NodeGroup]] = None) -> list[str]:
    t, w = cfg.train, cfg.train.workers
    world, sp, dp, k = w.num_workers, t.engine.sequence_parallel, t.data_parallel, t.engine.grad_accum
    mem_gb = f", {w.memory_per_worker_gb:g} GiB" if w.memory_per_worker_gb else ""
    lines = [
        f"workers: {world} x ({w.cpus_per_worker} CPU"
        + (f", {w.gpus_per_worker} GPU" if w.use_gpu else "")
        + mem_gb
        + ")"
        + (f" on {w.accelerator_type}" if w.accelerator_type else "")
    ]
    if w.use_gpu and w.gpus_per_worker != 1:
        raise ValueError(f"workers.gpus_per_worker={w.gpus_per_worker}: DeepSpeed runs one rank per GPU; use 1")
    accum = f" x {k} micro-batches" if k > 1 else ""
    for family in ("image", "video"):
        batch, micro = t.global_batch(family), t.micro_batch(family)
        lines.append(
            f"{family} steps: global batch {batch} = {micro} per rank{accum} x {world} ranks"
            if sp == 1
            else f"{family} steps: global batch {batch} = {micro} per group{accum} x {dp} data-parallel "
            f"group(s) of {sp} sequence-parallel ranks"
        )

    # The model on the meta device: sizes without memory.
    model, source = meta_transformer(t.model, t.model.architecture)
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    heads, dim = c.num_attention_heads, c.num_attention_heads * c.attention_head_dim
    if heads % sp:
        raise ValueError(f"engine.sequence_parallel={sp} must divide the model's {heads} attention heads")
    bf16 = t.engine.precision == "bf16" or (t.engine.precision == "auto" and w.use_gpu)
    states = estimate_memory(params, world, t.engine.zero_stage, bf16=bf16, ema=True)
    lines += [f"model: {source}, {c.num_layers} layers, {heads} heads of {c.attention_head_dim}", *states.lines()]
    kept_names = set(fp32_kept_names(model)) if bf16 else set()
    kept = sum(p.numel() for n, p in model.named_parameters() if n in kept_names)
    block = sum(p.numel() for p in model.blocks[0].parameters())

    # Tokens per GPU: the largest sample of each family, split over the sequence-parallel group.
    (h, wd), frames = _largest(t.data.buckets)
    n_sem = c.num_semantic_tokens
    per_video = tokens_per_sample(h, wd, frames, n_sem)
    per_image = tokens_per_sample(h, wd, 1, n_sem)
    video_gpu = -(-t.micro_batch("video") * per_video // sp)
    image_gpu = -(-t.micro_batch("image") * per_image // sp)
    tokens = max(video_gpu, image_gpu)
    lines.append(
        f"tokens per sample at the largest bucket ({h}x{wd}, {frames} frames): video {per_video:,} "
        f"(target + source + {n_sem} semantic), image {per_image:,}"
    )
    lines.append(
        f"tokens per GPU per micro-batch: video {video_gpu:,} ({t.micro_batch('video')} x {per_video:,} / "
        f"SP {sp}), image {image_gpu:,} ({t.micro_batch('image')} x {per_image:,} / SP {sp})"
    )

    # GPU memory, term by term, and a verdict per GPU type.
    ckpt = t.engine.activation_checkpointing
    itemsize = 2 if bf16 else 4
    fit = training_fit(
        states,
        kept,
        block,
        t.engine.zero_stage,
        t.engine.stage3_prefetch_bucket_size,
        activation_gib(tokens, dim, c.num_layers, ckpt, itemsize),
    )
    other = training_fit(
        states,
        kept,
        block,
        t.engine.zero_stage,
        t.engine.stage3_prefetch_bucket_size,
        activation_gib(tokens, dim, c.num_layers, not ckpt, itemsize),
    )
    verdicts = fit.verdicts()
    terms = " | ".join(f"{k_} {v:.1f}" for k_, v in fit.terms.items())
    lines.append(f"memory per GPU (GiB), activation checkpointing {'on' if ckpt else 'off'}: {terms}")
    lines.append(
        f"  total {fit.total_gib:.1f} (+10% allocator slack) -> "
        + " | ".join(f"{gpu} {cap:g}: {'fits' if verdicts[gpu] else 'does NOT fit'}" for gpu, cap in GPU_TYPES.items())
        + f"; with checkpointing {'off' if ckpt else 'on'}: {other.total_gib:.1f}"
    )
    per_sp = []
    for p in [d for d in (1, 2, 4, 5, 8, 10, 20, 40) if heads % d == 0 and d <= heads][:6]:
        n = -(-t.micro_batch("video") * per_video // p)
        per_sp.append(
            f"SP {p}: {n:,} tokens, {activation_gib(n, dim, c.num_layers, True, itemsize):.1f} | "
            f"{activation_gib(n, dim, c.num_layers, False, itemsize):.0f}"
        )
    lines.append(
        "video activations per GPU by sequence-parallel degree (GiB, checkpointed | plain): " + "; ".join(per_sp)
    )
    if w.use_gpu and w.accelerator_type in GPU_TYPES and not verdicts[w.accelerator_type]:
        raise ValueError(
            f"a step needs {fit.total_gib:.0f} GiB per GPU (activations {fit.terms['activations']:.0f} for "
            f"{tokens:,} tokens), more than a {w.accelerator_type}'s {GPU_TYPES[w.accelerator_type]:g}: enable "
            "engine.activation_checkpointing, raise engine.sequence_parallel or engine.grad_accum "
            "(fewer samples per micro-batch), or raise engine.zero_stage / the worker count"
        )

    # Host RAM and local disk per worker.
    z = t.engine.zero_stage
    largest = max(p.numel() for p in model.parameters())
    start = HOST_BASELINE_GIB + (largest * itemsize if z == 3 else params * itemsize) / GIB
    rank_ckpt = (
        params * (2 / world if z == 3 else 0) + params * 12 / (world if z >= 1 else 1) + params * 4 / world
    ) / GIB
    rank0_module = params * 2 / GIB if z < 3 else 0.0  # ZeRO 0-2: rank 0 also writes the whole module
    start_how = "one tensor at a time on rank 0" if z == 3 else "the model in the training dtype"
    lines.append(
        f"host RAM per worker (GiB): start {start:.1f} ({start_how}), "
        f"checkpoint {HOST_BASELINE_GIB + rank_ckpt + rank0_module:.1f}, export task {t.export.memory_gb:g} "
        f"(declared; streams one parameter: {largest * 4 / GIB:.2f} largest)"
    )
    lines.append(
        f"local disk per worker (GiB): {2 * (rank_ckpt + rank0_module):.1f} (its checkpoint files, two "
        f"while one uploads); checkpoint {(params * 18) / GIB:.0f} GiB a save on storage; "
        f"every {t.checkpoint.every} steps, so a failure loses at most that many"
    )
    if t.export.memory_gb * GIB < 3 * largest * 4:
        raise ValueError(
            f"export.memory_gb={t.export.memory_gb} is under 3x the largest parameter in fp32 "
            f"({3 * largest * 4 / GIB:.1f} GiB)"
        )

    if cluster is not None:
        lines += check_placement(cfg, cluster)

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
