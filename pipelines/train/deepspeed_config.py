"""The DeepSpeed config, derived from the typed training config (never hand-written).

Batch sizes: a step draws ``grad_accum`` bucket batches per rank from one source, so the
per-rank micro-batch is ``global_batch(family) / (data-parallel groups x grad_accum)`` and
differs between image and video steps. DeepSpeed uses ``train_micro_batch_size_per_gpu``
only for its own bookkeeping (it never slices our inputs), so we give it the image value;
it divides each micro-batch's loss by ``gradient_accumulation_steps`` and steps the
optimizer (and our LR schedule) at the boundary; gradients are averaged over ranks.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import TrainConfig


def resolve_precision(precision: str, use_gpu: bool) -> str:
    if precision == "auto":
        return "bf16" if use_gpu else "fp32"
    return precision


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def deepspeed_config(cfg: TrainConfig, world_size: int, use_gpu: bool | None = None) -> dict[str, Any]:
    use_gpu = cfg.workers.use_gpu if use_gpu is None else use_gpu
    e, o = cfg.engine, cfg.optim
    # a sequence-parallel group shares its samples
    micro = cfg.data.image_batch // (world_size // e.sequence_parallel * e.grad_accum)
    zero: dict[str, Any] = {
        "stage": e.zero_stage,
        "overlap_comm": e.overlap_comm and use_gpu,  # needs CUDA streams; plain on CPU
        "contiguous_gradients": True,
        "reduce_bucket_size": e.reduce_bucket_size,
        "allgather_bucket_size": e.reduce_bucket_size,
    }
    if e.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": e.stage3_prefetch_bucket_size,
                "stage3_param_persistence_threshold": e.stage3_param_persistence_threshold,
                # export reads our EMA, and stage 1 reads the fp32 shards: no 16-bit gather at save
                "stage3_gather_16bit_weights_on_model_save": False,
            }
        )
        zero.pop("allgather_bucket_size")
    if e.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if e.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    torch_adam = (not use_gpu) if e.torch_adam is None else e.torch_adam
    adam_params: dict[str, Any] = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    if torch_adam:
        adam_params["torch_adam"] = True  # plain torch AdamW: no compiled ops (CPU)
    precision = resolve_precision(e.precision, use_gpu)
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": e.grad_accum,
        "train_batch_size": micro * world_size * e.grad_accum,
        "optimizer": {"type": "AdamW", "params": adam_params},
        # the LR schedule is ours (sama.training.schedule), handed to deepspeed.initialize
        "gradient_clipping": o.grad_clip,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    return _merge(ds, e.extra)


def fit_buckets(ds: dict[str, Any], num_params: int) -> dict[str, Any]:
    """``ds`` with its gradient buckets no larger than the model (``num_params`` trainable
    elements). DeepSpeed allocates a bucket whole every micro step, 2 GB of fp32 at the default
    5e8 elements: on CPU that allocation was most of a small model's step (the loss golden's 40
    steps 47 -> 14 s). A bucket the model's size still reduces every gradient at once, as the
    larger one did, so the numerics are the same."""
    out = copy.deepcopy(ds)
    zero = out.get("zero_optimization", {})
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if key in zero:
            zero[key] = int(min(zero[key], max(1, num_params)))
    return out
