"""``train_loop_per_worker``: one Ray Train worker's life.

    build model (same seed on every rank) -> [init_from: stage-0 weights + EMA]
    -> DeepSpeed engine (ZeRO, our LR schedule) -> sharded EMA
    -> [resume: Ray Train's latest checkpoint: engine, EMA, data positions, RNG]
    -> per step: pick source (seed, step) -> bucket batch -> L_FM + lambda L_SA
       -> all-reduce [non-finite flag, loss terms, counts] -> skip, or backward + step + EMA
       -> rank 0 logs; every N steps (and the last) a checkpoint through ray.train.report
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time

import torch
import torch.distributed as dist

from sama import storage
from sama.latents import collate
from sama.models.losses import sama_loss
from sama.models.sequence_parallel import SequenceParallel
from sama.models.transformer import load_transformer, num_tokens
from sama.training.ema import ShardedEMA
from sama.training.metrics import MetricsLogger
from sama.training.mixing import BucketStream, pick_source, seed_of
from sama.training.schedule import LRLambda

from . import checkpoint as C
from .config import TrainConfig, TrainJobConfig
from .deepspeed_config import deepspeed_config, resolve_precision

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def metrics_dir(output: str, run: str) -> tuple[str, str | None]:
    """(local folder rank 0 writes to, remote prefix it is mirrored to or None)."""
    remote = storage.join(output, run, "metrics")
    if not storage.is_s3(output):
        return storage.filesystem(remote)[1], None
    local = os.path.join(tempfile.gettempdir(), f"sama-metrics-{storage.content_digest(remote)}")
    os.makedirs(local, exist_ok=True)
    for f in storage.list_files(remote):  # a restarted rank 0 may be on another node: continue the files
        storage.write_bytes(os.path.join(local, f[len(remote) + 1:]), storage.read_bytes(f))
    return local, remote


def mirror(local: str, remote: str | None) -> None:
    if remote:
        for d, _, files in os.walk(local):
            for f in files:
                p = os.path.join(d, f)
                storage.write_bytes(storage.join(remote, os.path.relpath(p, local)), open(p, "rb").read())


def batch_tokens(batch, patch_size) -> int:
    per = num_tokens(tuple(batch.target.shape[1:]), patch_size) + num_tokens(tuple(batch.source.shape[1:]), patch_size)
    return batch.target.shape[0] * (per + batch.semantic.shape[1])


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    job: TrainJobConfig = config["cfg"]
    t: TrainConfig = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = t.workers.use_gpu
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator
        torch.set_num_threads(max(1, int(t.workers.cpus_per_worker)))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")  # reuses Ray Train's process group
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    precision = resolve_precision(t.engine.precision, use_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    # 1. Model: identical on every rank (pretrained weights, or the seeded tiny model).
    torch.manual_seed(t.seed)
    model = load_transformer(t.model)
    if t.engine.activation_checkpointing:
        model.enable_gradient_checkpointing()
    init_ema = None
    if t.init_from and ray.train.get_checkpoint() is None:
        ckpt = C.resolve(t.init_from)
        model.load_state_dict(C.raw_weights(ckpt))
        init_ema = C.ema_weights(ckpt)
    model.train()
    # Ulysses: groups of sp consecutive ranks share each sample (same data, same noise) and
    # split its sequence; dp_rank names the group, which is what the data and noise follow.
    sp = t.engine.sequence_parallel
    dp_rank, dp_world = rank // sp, world // sp
    if sp > 1:
        groups = [dist.new_group(list(range(g * sp, (g + 1) * sp))) for g in range(dp_world)]  # every rank makes all
        model.enable_sequence_parallel(SequenceParallel(groups[dp_rank]))

    # 2. DeepSpeed engine; the LR schedule is ours (warmup from 1/warmup, not 0).
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(t, world, use_gpu), dist_init_required=False,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, LRLambda(t.optim.schedule, t.steps)))
    ema = ShardedEMA(engine.module.named_parameters(), t.ema.decay, rank, world)
    if init_ema is not None:
        ema.load_full(init_ema)

    # 3. Resume from Ray Train's latest checkpoint (after a failure, or a rerun of the same run).
    state, resumed = C.TrainState(), ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            engine.load_checkpoint(folder, tag=C.DS_TAG)
            state, rng, ema_state = C.load_rank_state(folder, rank)
            ema.load_state_dict(ema_state)
            C.set_rng_state(rng)

    # 4. One endless bucket stream per source over this rank's shard files.
    streams = {}
    for s in t.data.sources:
        shard, mine = ray.train.get_dataset_shard(s.name), config["plan"][s.name][rank]
        streams[s.name] = BucketStream(
            s.name, lambda shard=shard: (dict(r) for r in shard.iter_rows()), mine.rows,
            t.global_batch(s.family) // dp_world, t.seed, dp_rank, mine.passes, t.data.shuffle_buffer,
            t.data.max_pending_buckets, state.positions.get(s.name, (0, 0)))
    names, weights = [s.name for s in t.data.sources], [s.weight for s in t.data.sources]

    logger = remote = None
    if rank == 0:
        local, remote = metrics_dir(job.output, t.name)
        logger = MetricsLogger(local, t.steps, state.step, t.metrics.tensorboard, t.metrics.progress_bar,
                               prefix=f"stage{t.stage}")
    patch = tuple(engine.module.config.patch_size)
    try:
        while state.step < t.steps:
            step = state.step + 1
            if step == t.debug.fail_at_step and rank == world - 1:
                marker = storage.join(job.output, t.name, f"debug_failed_at_step_{step}")
                if not storage.exists(marker):  # die once (a FailureConfig drill), not again after the restart
                    storage.write_text(marker, "the last rank exited here on purpose (train.debug.fail_at_step)\n")
                    os._exit(1)
            t0 = time.perf_counter()
            # 5. Batch: source by (seed, step), then this rank's next bucket batch of it.
            source = pick_source(names, weights, t.seed, step)
            batch = collate(next(streams[source]), t.data.text_len)
            t_data = time.perf_counter() - t0

            # 6. Loss; noise and sigma drawn from a generator seeded by (seed, step, data-parallel rank).
            gen = torch.Generator().manual_seed(seed_of("noise", t.seed, step, dp_rank))
            out = sama_loss(engine, batch.target.to(device, dtype), batch.text.to(device, dtype),
                            source_latents=batch.source.to(device, dtype),
                            semantic_tokens=batch.semantic.to(device), cfg=t.loss, generator=gen,
                            semantic_prediction=engine.module.config.semantic_prediction)
            loss = out.loss * float("nan") if step in t.debug.nan_at_steps else out.loss
            sa = out.semantic.detach().float() if out.semantic is not None else torch.zeros((), device=device)
            # one collective: [non-finite ranks, loss, fm, sa, samples, tokens, data wait]
            stats = torch.stack([
                (~torch.isfinite(loss.detach())).float(), loss.detach().float(), out.fm.detach().float(), sa,
                torch.tensor(float(batch.target.shape[0]), device=device),
                torch.tensor(float(batch_tokens(batch, patch)), device=device),
                torch.tensor(t_data, device=device)])
            dist.all_reduce(stats)

            lr = scheduler.get_last_lr()[0]  # the LR this step uses (the scheduler moves in engine.step)
            # 7. Skip on every rank together (ZeRO reduces gradients inside backward), or step.
            if stats[0].item() > 0:
                state.skipped += 1
                state.consecutive_skipped += 1
                if state.consecutive_skipped > t.max_nonfinite:
                    raise NonFiniteLossError(f"{state.consecutive_skipped} consecutive non-finite losses "
                                             f"(train.max_nonfinite={t.max_nonfinite}) at step {step}")
                grad_norm = float("nan")
            else:
                # x sp: a rank's gradients are its tokens' share, and DeepSpeed averages over all ranks
                engine.backward(loss * sp if sp > 1 else loss)
                engine.step()
                ema.update()
                state.consecutive_skipped = 0
                gn = engine.get_global_grad_norm()
                grad_norm = float(gn) if gn is not None else float("nan")
            if use_gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            state.step, state.samples = step, state.samples + int(stats[4].item()) // sp
            state.positions = {n: s.position for n, s in streams.items()}

            if logger is not None:
                m = {"loss": stats[1].item() / world, "loss_fm": stats[2].item() / world,
                     "loss_sa": stats[3].item() / world, "lr": lr, "grad_norm": grad_norm,
                     "samples_per_s": stats[4].item() / sp / dt, "tokens_per_s": stats[5].item() / sp / dt,
                     "data_wait_frac": min(1.0, stats[6].item() / world / dt), "step_time_s": dt,
                     "skipped_steps": float(state.skipped), f"source/{source}": 1.0}
                logger.log(step, m)
                if step % t.metrics.log_every == 0 or step == t.steps:
                    logger.line(step, {k: v for k, v in m.items() if not k.startswith("source/")})

            # 8. Checkpoint every N steps, at the end, and where a test interrupts.
            last = step == t.steps or step == t.debug.stop_after_step
            if step % t.checkpoint.every == 0 or last:
                save(engine, ema, state, job, rank, world, {"step": step, "loss": stats[1].item() / world})
                if logger is not None:
                    logger.flush()
                    mirror(logger.log_dir, remote)
            if step == t.debug.stop_after_step:
                break
    finally:
        if logger is not None:
            logger.close()
            mirror(logger.log_dir, remote)


def save(engine, ema: ShardedEMA, state: C.TrainState, job: TrainJobConfig, rank: int, world: int,
         metrics: dict) -> None:
    import ray.train
    from sama.config import dump_yaml

    folder = tempfile.mkdtemp(prefix=f"sama-ckpt-r{rank}-")
    try:
        engine.save_checkpoint(folder, tag=C.DS_TAG)
        C.save_rank_state(folder, rank, state, ema.state_dict())
        if rank == 0:
            t = job.train
            meta = {"step": state.step, "world_size": world, "zero_stage": t.engine.zero_stage, "run": t.name,
                    "stage": t.stage, "samples": state.samples, "skipped": state.skipped}
            with open(os.path.join(folder, "meta.json"), "w") as f:
                json.dump(meta, f, indent=2)
            with open(os.path.join(folder, "model_config.json"), "w") as f:
                json.dump(dict(engine.module.config), f, indent=2, default=list)
            with open(os.path.join(folder, "train_config.yaml"), "w") as f:
                f.write(dump_yaml(job))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=C.step_dir_name(state.step))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
