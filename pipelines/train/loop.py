"""``train_loop_per_worker``: one Ray Train worker's life.

build the model (ZeRO-3: partitioned, streamed in by rank 0; else in the training dtype)
-> DeepSpeed engine (ZeRO, our LR schedule) [+ the fp32-kept parameters' own optimizer]
-> sharded EMA
-> resume (Ray Train's latest checkpoint: this rank's files only), or init_from
   (same layout: this rank's files; else streamed one parameter at a time)
-> per step: pick source (seed, step) -> grad_accum bucket micro-batches -> L_FM + lambda L_SA
   -> all-reduce [non-finite flag, loss terms, counts] per micro-batch -> backward -> step + EMA
   -> rank 0 logs; every N steps (and the last) a checkpoint, uploaded in the background
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sama import storage
from sama.config import to_dict
from sama.latents import collate
from sama.models.losses import sama_loss
from sama.models.sequence_parallel import SequenceParallel
from sama.models.transformer import num_tokens
from sama.training.ema import ShardedEMA
from sama.training.metrics import MetricsLogger, start_mlflow
from sama.training.mixing import BucketStream, pick_source, seed_of
from sama.training.schedule import LRLambda

from . import checkpoint as checkpoints
from . import data as train_data
from . import weights as model_weights
from .config import TrainConfig
from .deepspeed_config import deepspeed_config, fit_buckets, resolve_precision

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class CollectiveTimeoutError(RuntimeError):
    """A collective did not complete in time: another rank died, stalled or ran out of memory."""


def metrics_dir(output: str, run: str) -> tuple[str, str | None]:
    """(local folder rank 0 writes to, remote prefix it is mirrored to or None)."""
    remote = storage.join(output, run, "metrics")
    if not storage.is_s3(output):
        return storage.filesystem(remote)[1], None
    local = os.path.join(tempfile.gettempdir(), f"sama-metrics-{storage.content_digest(remote)}")
    os.makedirs(local, exist_ok=True)
    for f in storage.list_files(remote):  # a restarted rank 0 may be on another node: continue the files
        storage.write_bytes(os.path.join(local, f[len(remote) + 1 :]), storage.read_bytes(f))
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


def micro_loss(engine, batch, t: TrainConfig, device, dtype, gen: torch.Generator):
    return sama_loss(
        engine,
        batch.target.to(device, dtype),
        batch.text.to(device, dtype),
        source_latents=batch.source.to(device, dtype),
        semantic_tokens=batch.semantic.to(device),
        cfg=t.loss,
        generator=gen,
        semantic_prediction=engine.module.config.semantic_prediction,
    )


def zero_gradient_loss(engine, batch, t: TrainConfig, device, dtype, gen: torch.Generator, step: int):
    """A loss whose gradient is exactly zero for every parameter, computed through the whole
    model (so every rank's ZeRO reductions happen) on zeroed inputs of the batch's shapes."""
    zeros = type(batch)(
        **{k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else v for k, v in batch.__dict__.items()}
    )
    out = micro_loss(engine, zeros, t, device, dtype, gen)
    if not torch.isfinite(out.loss.detach()):
        raise NonFiniteLossError(
            f"step {step}: the loss is non-finite on zero inputs, so the weights are; "
            "the run diverged (resume from an earlier checkpoint with a lower LR)"
        )
    return out.loss * 0.0


def step_engine(engine) -> float | None:
    """``engine.step()`` (the optimizer steps at a gradient-accumulation boundary) -> the global
    gradient norm before clipping, measured here where DeepSpeed keeps none. It records the norm for
    ZeRO 1-3 and its mixed-precision optimizers, but its plain fp32 path (ZeRO-0) clips without
    keeping it; there, at the boundary, the gradients are all-reduced and whole on every rank."""
    norm = None
    if engine.zero_optimization_stage() == 0 and engine.is_gradient_accumulation_boundary():
        grads = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else None
    engine.step()
    reported = engine.get_global_grad_norm()
    return float(reported) if reported is not None else norm


@contextlib.contextmanager
def zero_lr(optimizer):
    """Run an optimizer step that leaves the weights as they are (lr 0 removes the update and
    AdamW's decoupled weight decay); the LR schedule is restored after."""
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, saved):
            g["lr"] = lr


# ---------------------------------------------------------------------- the run's pieces


@dataclass
class Layout:
    """What makes a checkpoint's per-rank files this run's: then each rank restores its own."""

    world: int
    zero_stage: int
    precision: str

    @classmethod
    def of(cls, meta: dict) -> "Layout":
        return cls(meta["world_size"], meta["zero_stage"], meta.get("precision", "fp32"))


class Uploads:
    """At most one checkpoint uploading at a time: Ray Train uploads it in the background
    (``CheckpointUploadMode.ASYNC``) and deletes the local copy when done; a new checkpoint
    waits for that before it is written, so a node's disk holds at most two."""

    def __init__(self, timeout_s: float):
        self.pending: str | None = None
        self.timeout_s = timeout_s

    def wait(self) -> None:
        if self.pending is None:
            return
        start = time.monotonic()
        while os.path.exists(self.pending):
            waited = time.monotonic() - start
            if waited > self.timeout_s:
                raise TimeoutError(
                    f"the checkpoint upload from {self.pending} did not finish in {self.timeout_s:.0f} s "
                    "(train.checkpoint.upload_timeout_s); is the storage reachable?"
                )
            time.sleep(0.05 if waited < 5 else 1.0)
        self.pending = None


def fetch_own(ckpt: str, rank: int, zero_stage: int, workdir: str, with_state: bool) -> list[str]:
    """Copy this rank's files of ``ckpt`` into ``workdir``; returns their names."""
    names = checkpoints.own_files(checkpoints.list_relative(ckpt), rank, zero_stage)
    if not with_state:
        names = [n for n in names if not n.startswith("state/")]
    return checkpoints.fetch(ckpt, names, workdir)


def record_fetches(t: TrainConfig, output: str, rank: int, kind: str, ckpt: str, names: list[str]) -> None:
    if t.debug.record_fetches:
        storage.write_text(
            storage.join(output, t.name, "debug", f"{kind}_rank_{rank:05d}.json"),
            json.dumps({"checkpoint": ckpt, "files": names}),
        )


def fresh_optimizer(engine, t: TrainConfig, lr: float) -> None:
    """Forget a loaded optimizer's moments and hyper-parameters (keeping the fp32 weights)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO / bf16 wrap the torch optimizer
    inner.state.clear()
    for g in inner.param_groups:
        g.update(lr=lr, betas=tuple(t.optim.betas), eps=t.optim.eps, weight_decay=t.optim.weight_decay)
    engine.global_steps = engine.global_samples = engine.micro_steps = 0


def init_distributed(use_gpu: bool) -> None:
    """DeepSpeed's communication on Ray Train's process group (nccl on GPUs, gloo on CPUs).

    On CPUs DeepSpeed would first JIT-compile its shared-memory all-reduce kernel (about 100 s of
    C++ build on 2 cores, on every fresh machine); that kernel only serves
    ``inference_all_reduce``, which training never calls, so it is marked unavailable. DeepSpeed
    keeps that table as one module dict for edits like this one.
    """
    import deepspeed

    if not use_gpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    # Workers get the training config and where outputs go, not the job's launcher sections.
    t: TrainConfig = config["train"]
    output: str = config["output"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = t.workers.use_gpu
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator
        torch.set_num_threads(max(1, int(t.workers.cpus_per_worker)))
    import deepspeed

    init_distributed(use_gpu)
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    precision = resolve_precision(t.engine.precision, use_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    ds_config = deepspeed_config(t, world, use_gpu)
    layout = Layout(world, t.engine.zero_stage, precision)
    workdir = tempfile.mkdtemp(prefix=f"sama-train-r{rank}-")  # this rank's fetched checkpoint files

    # 1. Where the weights come from: our own latest checkpoint (resume), a checkpoint of this
    #    layout (restored rank-locally after the engine exists), another one (streamed in
    #    while building), or the pretrained / tiny model.
    resumed = ray.train.get_checkpoint()
    init = checkpoints.resolve(t.init_from) if (t.init_from and resumed is None) else None
    init_same = init is not None and Layout.of(checkpoints.read_meta(init)) == layout
    if resumed is not None or init_same:
        source = None  # the architecture only: the weights are restored below
    elif init is not None:
        source = lambda: model_weights.checkpoint_source(init)  # noqa: E731
    elif t.model.pretrained is not None:
        source = lambda: model_weights.pretrained_source(t.model)  # noqa: E731
    else:
        source = None  # the seeded tiny model

    # 2. The model: identical on every rank, never a full copy per rank under ZeRO-3.
    torch.manual_seed(t.seed)
    keep_fp32 = precision == "bf16"
    if t.engine.zero_stage == 3:
        model, fp32 = model_weights.build_zero3(t.model, ds_config, dtype, rank, source, device, keep_fp32)
    else:
        model, fp32 = model_weights.build_replicated(t.model, dtype, keep_fp32, source)
    if t.engine.activation_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    for p in fp32.params.values():
        p.data = p.data.to(device)
    # Ulysses: groups of sp consecutive ranks share each sample (same data, same noise) and
    # split its sequence; dp_rank names the group, which is what the data and noise follow.
    sp = t.engine.sequence_parallel
    dp_rank, dp_world = rank // sp, world // sp
    if sp > 1:
        groups = [dist.new_group(list(range(g * sp, (g + 1) * sp))) for g in range(dp_world)]  # every rank makes all
        model.enable_sequence_parallel(SequenceParallel(groups[dp_rank]))

    # 3. DeepSpeed engine; the LR schedule is ours (warmup from 1/warmup, not 0).
    lr_lambda = LRLambda(t.optim.schedule, t.steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        config=fit_buckets(ds_config, sum(getattr(p, "ds_numel", p.numel()) for p in trainable)),
        dist_init_required=False,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
    )
    o = t.optim
    fp32.build_optimizer(o.lr, o.betas, o.eps, o.weight_decay, lr_lambda)
    ema = ShardedEMA([*engine.module.named_parameters(), *fp32.named_parameters()], t.ema.decay, rank, world)

    # 4. Resume from Ray Train's latest checkpoint (a failure, or a rerun of the run), or start
    #    from init_from; either way a rank reads its own files when the layout is this run's.
    state = checkpoints.TrainState()
    if resumed is not None:
        ckpt = checkpoints.checkpoint_uri(resumed)
        names = fetch_own(ckpt, rank, t.engine.zero_stage, workdir, with_state=True)
        record_fetches(t, output, rank, "resume", ckpt, names)
        engine.load_checkpoint(workdir, tag=checkpoints.DS_TAG)
        state, rng = checkpoints.load_rank_state(workdir, rank)
        checkpoints.set_rng_state(rng)
        ema.load(os.path.join(workdir, checkpoints.rank_file("ema", rank)))
        if fp32.params:
            fp32.load_state_dict(torch.load(os.path.join(workdir, checkpoints.FP32_FILE), map_location="cpu"))
    elif init_same:
        names = fetch_own(init, rank, t.engine.zero_stage, workdir, with_state=False)
        record_fetches(t, output, rank, "init", init, names)
        # Its own files only: DeepSpeed's weights-only load would consolidate every rank's
        # shards, so load the rank's optimizer shard (the fp32 weights live there) and start
        # the optimizer afresh: no moments, this run's hyper-parameters and LR schedule.
        engine.load_checkpoint(
            workdir, tag=checkpoints.DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        fresh_optimizer(engine, t, scheduler.get_last_lr()[0])
        ema.load(os.path.join(workdir, checkpoints.rank_file("ema", rank)))
        if fp32.params:
            fp32.load_state_dict(
                torch.load(os.path.join(workdir, checkpoints.FP32_FILE), map_location="cpu"), weights_only=True
            )
    elif init is not None:
        shards = checkpoints.ema_shards(init)  # stage 0's EMA, each rank reading only the slices it keeps
        try:
            ema.load_full(shards)
        finally:
            shards.close()
    shutil.rmtree(workdir, ignore_errors=True)

    # 5. One endless bucket stream per source over this rank's shard files, at its position.
    streams = {}
    for s in t.data.sources:
        mine = config["plan"][s.name][rank]
        index, groups = train_data.rank_index(mine, list(s.tasks))
        streams[s.name] = BucketStream(
            s.name,
            index,
            train_data.row_opener(groups, mine.passes, t.data.read_num_cpus, t.data.read_in_worker),
            t.micro_batch(s.family),
            t.seed,
            dp_rank,
            t.data.shuffle_buffer,
            t.data.max_pending_buckets,
            state.positions.get(s.name, (0, 0)),
        )
    names, weights = [s.name for s in t.data.sources], [s.weight for s in t.data.sources]

    logger = remote = None
    if rank == 0:
        local, remote = metrics_dir(output, t.name)
        tracking = start_mlflow(t.tracking, t.name, to_dict(t))
        logger = MetricsLogger(
            local,
            t.steps,
            state.step,
            t.metrics.tensorboard,
            t.metrics.progress_bar,
            prefix=f"stage{t.stage}",
            mlflow=tracking,
        )
    patch = tuple(engine.module.config.patch_size)
    accum = t.engine.grad_accum
    uploads = Uploads(t.checkpoint.upload_timeout_s)
    step = state.step
    try:
        while state.step < t.steps:
            step = state.step + 1
            if step == t.debug.fail_at_step and rank == world - 1:
                marker = storage.join(output, t.name, f"debug_failed_at_step_{step}")
                if not storage.exists(marker):  # die once (a FailureConfig drill), not again after the restart
                    storage.write_text(marker, "the last rank exited here on purpose (train.debug.fail_at_step)\n")
                    os._exit(1)
            if step == t.debug.stall_at_step and rank == world - 1:
                time.sleep(t.engine.collective_timeout_s + 5)  # the others' next collective times out
            t0 = time.perf_counter()
            # 6. The step's source by (seed, step); its k micro-batches from this rank's stream.
            source = pick_source(names, weights, t.seed, step)
            lr = scheduler.get_last_lr()[0]  # the LR this step uses (the scheduler moves at the boundary)
            totals = torch.zeros(7, device=device)  # [non-finite micro-batches, loss, fm, sa, samples, tokens, wait]
            stepped, grad_norm = False, None
            for micro in range(accum):
                tw = time.perf_counter()
                batch = collate(next(streams[source]), t.data.text_len)
                t_data = time.perf_counter() - tw
                # 7. Loss; noise and sigma from a generator seeded by (seed, step, data-parallel rank, micro-batch).
                gen = torch.Generator().manual_seed(seed_of("noise", t.seed, step, dp_rank, micro))
                out = micro_loss(engine, batch, t, device, dtype, gen)
                loss = out.loss * float("nan") if step in t.debug.nan_at_steps else out.loss
                sa = out.semantic.detach().float() if out.semantic is not None else torch.zeros((), device=device)
                stats = torch.stack(
                    [
                        (~torch.isfinite(loss.detach())).float(),
                        loss.detach().float(),
                        out.fm.detach().float(),
                        sa,
                        torch.tensor(float(batch.target.shape[0]), device=device),
                        torch.tensor(float(batch_tokens(batch, patch)), device=device),
                        torch.tensor(t_data, device=device),
                    ]
                )
                dist.all_reduce(stats)  # one collective per micro-batch
                poisoned = stats[0].item() > 0
                if poisoned:
                    stats[1:4] = 0  # its loss terms are left out of the step's means
                totals += torch.cat([(stats[:1] > 0).float(), stats[1:]])
                if accum == 1:
                    if not poisoned:  # x sp: a rank's gradients are its tokens' share; DeepSpeed averages ranks
                        engine.backward(loss * sp if sp > 1 else loss)
                        grad_norm = step_engine(engine)
                        stepped = True
                    break
                if poisoned:
                    # A non-finite micro-batch contributes nothing: a zero-gradient backward through the
                    # same parameters keeps every rank's ZeRO reductions and DeepSpeed's boundary in step.
                    loss = zero_gradient_loss(engine, batch, t, device, dtype, gen, step)
                engine.backward(loss * sp if sp > 1 else loss)  # DeepSpeed divides by accum
                if micro == accum - 1 and totals[0].item() == accum:
                    with zero_lr(engine.optimizer):  # every micro-batch was non-finite: weights stay
                        engine.step()
                else:
                    grad_norm = step_engine(engine)
                stepped = micro == accum - 1
            dropped = int(totals[0].item())
            if stepped:  # the fp32-kept parameters step with DeepSpeed's
                fp32.step(world, t.optim.grad_clip, lr_zero=dropped == accum)
            state.dropped_micro_batches += dropped if accum > 1 else 0
            # 8. A step is skipped when all its micro-batches were non-finite (on any rank).
            if dropped:
                state.consecutive_skipped += 1
                if state.consecutive_skipped > t.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{state.consecutive_skipped} consecutive steps with non-finite losses "
                        f"(train.max_nonfinite={t.max_nonfinite}) at step {step}"
                    )
            else:
                state.consecutive_skipped = 0
            if dropped == accum:
                state.skipped += 1
                grad_norm = float("nan")
            else:
                ema.update()
                grad_norm = float("nan") if grad_norm is None else grad_norm
            counted = accum - dropped  # the step's loss terms: means over the micro-batches that counted
            terms = totals[1:4] / counted if counted else torch.full_like(totals[1:4], float("nan"))
            stats = torch.cat([totals[:1], terms, totals[4:]])
            if use_gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            state.step, state.samples = step, state.samples + int(stats[4].item()) // sp
            state.positions = {n: s.position for n, s in streams.items()}

            if logger is not None:
                m = {
                    "loss": stats[1].item() / world,
                    "loss_fm": stats[2].item() / world,
                    "loss_sa": stats[3].item() / world,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": stats[4].item() / sp / dt,
                    "tokens_per_s": stats[5].item() / sp / dt,
                    "data_wait_frac": min(1.0, stats[6].item() / world / dt),
                    "step_time_s": dt,
                    "skipped_steps": float(state.skipped),
                    f"source/{source}": 1.0,
                }
                m["rows_read"] = float(sum(s.rows_read for s in streams.values()))  # this rank's, since start
                if accum > 1:
                    m["dropped_micro_batches"] = float(state.dropped_micro_batches)
                logger.log(step, m)
                if step % t.metrics.log_every == 0 or step == t.steps:
                    logger.line(step, {k: v for k, v in m.items() if not k.startswith("source/")})

            # 9. Checkpoint every N steps, at the end, and where a test interrupts.
            last = step == t.steps or step == t.debug.stop_after_step
            if step % t.checkpoint.every == 0 or last:
                save(
                    engine, ema, fp32, state, t, layout, rank, {"step": step, "loss": stats[1].item() / world}, uploads
                )
                if logger is not None:
                    logger.flush()
                    mirror(logger.log_dir, remote)
            if step == t.debug.stop_after_step:
                break
        uploads.wait()  # the last checkpoint is on storage before the worker ends
    except RuntimeError as err:
        if "timeout" in str(err).lower() or "timed out" in str(err).lower():
            raise CollectiveTimeoutError(
                f"rank {rank} at step {step}: a collective did not complete within "
                f"{t.engine.collective_timeout_s:.0f} s (train.engine.collective_timeout_s): another rank died, "
                f"stalled or ran out of memory. Ray Train restarts the group from the last checkpoint "
                f"(train.checkpoint.max_failures={t.checkpoint.max_failures}). Cause: {str(err)[:300]}"
            ) from err
        raise
    finally:
        if logger is not None:
            logger.close()
            mirror(logger.log_dir, remote)


def save(
    engine,
    ema: ShardedEMA,
    fp32: model_weights.Fp32Params,
    state: checkpoints.TrainState,
    t: TrainConfig,
    layout: Layout,
    rank: int,
    metrics: dict,
    uploads: Uploads,
) -> None:
    """Write this rank's part of a checkpoint locally and hand it to Ray Train, which uploads
    it in the background while training goes on."""
    import ray.train

    from sama.config import dump_yaml

    uploads.wait()  # the previous upload is done (its local copy gone) before this one is written
    folder = tempfile.mkdtemp(prefix=f"sama-ckpt-r{rank}-")
    engine.save_checkpoint(folder, tag=checkpoints.DS_TAG)
    checkpoints.save_rank_state(folder, rank, state, ema)
    if rank == 0:
        meta = {
            "step": state.step,
            "world_size": layout.world,
            "zero_stage": layout.zero_stage,
            "precision": layout.precision,
            "run": t.name,
            "stage": t.stage,
            "samples": state.samples,
            "skipped": state.skipped,
        }
        with open(os.path.join(folder, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        with open(os.path.join(folder, "model_config.json"), "w") as f:
            json.dump(dict(engine.module.config), f, indent=2, default=list)
        with open(os.path.join(folder, "train_config.yaml"), "w") as f:
            f.write(dump_yaml(t))
        if fp32.params:
            os.makedirs(os.path.join(folder, os.path.dirname(checkpoints.FP32_FILE)), exist_ok=True)
            torch.save(fp32.state_dict(), os.path.join(folder, checkpoints.FP32_FILE))
    mode = ray.train.CheckpointUploadMode.ASYNC if t.checkpoint.async_upload else ray.train.CheckpointUploadMode.SYNC
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(folder),
        checkpoint_dir_name=checkpoints.step_dir_name(state.step),
        checkpoint_upload_mode=mode,
        delete_local_checkpoint_after_upload=True,
    )
    uploads.pending = folder
