"""The model on every rank, built without a full copy per rank, and the weights it starts from.

Loading (``build_model``):

- ZeRO-3: the transformer is built under ``deepspeed.zero.Init`` (each rank allocates only
  its partition of every parameter) and filled one tensor at a time: rank 0 reads a tensor
  of the checkpoint (safetensors by byte range, local or s3://; an original-format
  checkpoint is converted first, by rank 0 alone) and ``GatheredParameters(modifier_rank=0)``
  sends it into the partitions. No other rank reads the checkpoint, and no process holds
  more than one of its tensors: a node holds its ranks' partitions, not eight copies.
- ZeRO 0-2 (every rank keeps the whole model on its GPU): each rank loads it in the training
  dtype; an s3:// or original-format checkpoint is fetched / converted once per node
  (``storage.materialize`` and ``convert.as_diffusers`` lock across processes).

bf16 runs: DeepSpeed casts every parameter it manages to bf16, but diffusers keeps Wan's
time embedder, modulation tables and cross-attention norms in fp32 (and serving runs them
so). ``Fp32Params`` takes those out of DeepSpeed's hands: they stay fp32 parameters of the
model (the forward is unchanged), replicated on every rank, their gradients all-reduced
and stepped by a plain AdamW with the run's hyper-parameters and LR schedule (clipped by
their own norm, ~0.2% of the 14B model).

Starting weights (``WeightSource``): a pretrained checkpoint, or a training checkpoint of
another world size / ZeRO stage (DeepSpeed's lazy fp32 consolidation, one parameter at a
time). A checkpoint of the same world size and stage is restored rank-locally instead, by
DeepSpeed itself (``loop.start_from``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from sama.models.loading import load_transformer
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel, legacy_numerics, torch_dtype

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- fp32-kept parameters


def fp32_kept_names(model: nn.Module) -> list[str]:
    """Parameter names diffusers keeps in fp32 under a half-precision dtype (its own rule)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    return [n for n, _ in model.named_parameters() if any(k in n.split(".") for k in keep)]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


class Fp32Params:
    """The fp32-kept parameters, outside DeepSpeed (see the module docstring)."""

    def __init__(self, params: dict[str, nn.Parameter]):
        self.params = params
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None

    @classmethod
    def detach_from(cls, model: nn.Module, values: dict[str, torch.Tensor]) -> "Fp32Params":
        """Turn ``values`` (name -> fp32 tensor) into plain fp32 parameters of ``model`` that
        ``model.parameters()`` (hence DeepSpeed) no longer lists; attribute access is unchanged."""
        params = {}
        for name, value in values.items():
            owner, leaf = _owner(model, name)
            owner._parameters.pop(leaf, None)
            p = nn.Parameter(value.float(), requires_grad=True)
            owner.__dict__[leaf] = p  # found by attribute lookup, invisible to named_parameters()
            params[name] = p
        return cls(params)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self.params.items())

    def build_optimizer(
        self, lr: float, betas, eps: float, weight_decay: float, lr_lambda: Callable[[int], float]
    ) -> None:
        if self.params:
            self.optimizer = torch.optim.AdamW(
                list(self.params.values()), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay
            )
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)

    def step(self, world: int, clip: float, lr_zero: bool = False) -> None:
        """All-reduce the gradients (mean over ranks, as DeepSpeed does), clip, step, zero."""
        if not self.params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()]
        flat = torch.cat([g.flatten() for g in grads])
        if world > 1:
            dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in self.params.values():
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), clip)
        saved = [g["lr"] for g in self.optimizer.param_groups]
        if lr_zero:
            for g in self.optimizer.param_groups:
                g["lr"] = 0.0
        self.optimizer.step()
        for g, lr in zip(self.optimizer.param_groups, saved):
            g["lr"] = lr
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        # the schedule's lambda (our LRLambda object) is rebuilt from the config, not pickled
        sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"} if self.scheduler else None
        return {
            "params": {n: p.detach().cpu() for n, p in self.params.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": sched,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        for n, p in self.params.items():
            p.copy_(state["params"][n])
        if not weights_only and self.optimizer and state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})


# ---------------------------------------------------------------------- weight sources


@dataclass
class WeightSource:
    """Full tensors by name (read on demand, one at a time), and the model config they fit."""

    config: dict[str, Any]
    names: set[str]
    get: Callable[[str], torch.Tensor]
    close: Callable[[], None] = lambda: None


def pretrained_source(cfg: SamaModelConfig) -> WeightSource:
    """A pretrained SAMA / Wan checkpoint (diffusers or original format, local or s3://)."""
    import json

    from sama import storage
    from sama.models import convert
    from sama.tensorfiles import TensorReader, weight_files

    path, subfolder = convert.as_diffusers(cfg.pretrained, cfg.subfolder)
    folder = storage.join(path, subfolder) if subfolder else path
    raw = json.loads(storage.read_text(storage.join(folder, "config.json")))
    config = {k: v for k, v in raw.items() if not k.startswith("_")}
    config.update(legacy_numerics(raw))
    config.update(cfg.sama_kwargs())
    reader = TensorReader(weight_files(folder))
    return WeightSource(config, set(reader.entries), reader.get, reader.close)


def checkpoint_source(ckpt: str) -> WeightSource:
    """A training checkpoint's raw fp32 weights (DeepSpeed's lazy consolidation, one parameter
    at a time over memory-mapped shards fetched once per node)."""
    import json

    from sama import storage

    from . import checkpoint as checkpoints

    config = {
        k: v
        for k, v in json.loads(storage.read_text(storage.join(ckpt, "model_config.json"))).items()
        if not k.startswith("_")
    }
    raw = checkpoints.raw_weights(ckpt, lazy=True)
    return WeightSource(config, set(raw), lambda n: raw[n] if isinstance(raw[n], torch.Tensor) else raw[n].contiguous())


# ---------------------------------------------------------------------- building


def _broadcast_object(obj: Any, src: int = 0) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def architecture(model_cfg: SamaModelConfig) -> dict[str, Any]:
    """The model config without its weights: the tiny model's, or the pretrained checkpoint's."""
    if model_cfg.pretrained is None:
        from sama.models.tiny import tiny_transformer_config

        tiny = {k: v for k, v in model_cfg.sama_kwargs().items() if k not in ("semantic_dim", "semantic_hidden_dim")}
        return {**tiny_transformer_config(), **tiny}
    src = pretrained_source(model_cfg)
    src.close()
    return src.config


def build_zero3(
    model_cfg: SamaModelConfig,
    ds_config: dict,
    dtype: torch.dtype,
    rank: int,
    source: Callable[[], WeightSource] | None,
    device: torch.device,
    keep_fp32: bool,
) -> tuple[SamaTransformer3DModel, Fp32Params]:
    """ZeRO-3: built partitioned (``zero.Init``), filled by rank 0 one tensor at a time.

    ``source`` is opened on rank 0 only; None keeps the built (seeded) weights: the tiny
    model, or a run whose weights come next from a checkpoint of its own layout.
    """
    import deepspeed

    # 1. Rank 0 opens the weights and decides the config; every rank builds from it.
    src = source() if (source is not None and rank == 0) else None
    config = _broadcast_object((src.config if src is not None else architecture(model_cfg)) if rank == 0 else None)
    # dtype from the DeepSpeed config (bf16 / fp32): an explicit dtype is overridden by
    # zero.Init's accelerator default on CPU.
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = SamaTransformer3DModel(**config)
    params = dict(model.named_parameters())
    kept = set(fp32_kept_names(model)) if keep_fp32 else set()
    # 2. Every tensor of the checkpoint into the partitions (SAMA's new parameters keep their
    #    seeded init when a plain Wan checkpoint lacks them).
    names = _broadcast_object(sorted(src.names) if src is not None else None)
    if names is not None:
        unknown = sorted(set(names) - set(params))
        missing = sorted(set(params) - set(names) - set(model.sama_parameter_names()))
        if unknown or missing:
            raise ValueError(
                f"checkpoint weights do not fit the model: missing {missing[:5]}, unexpected {unknown[:5]}"
            )
        for name in names:
            if name in kept:
                continue
            with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=0):
                if rank == 0:
                    params[name].data.copy_(src.get(name).to(params[name].dtype))
    # 3. fp32-kept parameters: full fp32 values from the checkpoint (or as built), on every rank.
    values = {}
    for name in sorted(kept):
        with deepspeed.zero.GatheredParameters([params[name]]):  # a collective: every rank joins
            value = params[name].data.float().clone()
        if rank == 0 and src is not None and name in src.names:
            value = src.get(name).float().to(value.device)
        dist.broadcast(value, 0)
        values[name] = value.to(device)
    if src is not None:
        src.close()
    return model, Fp32Params.detach_from(model, values)


def build_replicated(
    model_cfg: SamaModelConfig, dtype: torch.dtype, keep_fp32: bool, source: Callable[[], WeightSource] | None = None
) -> tuple[SamaTransformer3DModel, Fp32Params]:
    """ZeRO 0-2: the whole model on every rank, in the training dtype (diffusers keeps its
    fp32 modules fp32); weights from ``source`` instead of the pretrained ones when given."""
    import dataclasses

    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")
    model = load_transformer(dataclasses.replace(model_cfg, dtype=name, gradient_checkpointing=False))
    if source is not None:
        src = source()
        try:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in src.names:
                        p.copy_(src.get(n).to(p.dtype))
        finally:
            src.close()
    kept = fp32_kept_names(model) if keep_fp32 else []
    params = dict(model.named_parameters())
    return model, Fp32Params.detach_from(model, {n: params[n].detach().float() for n in kept})


def bf16_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch_dtype("float32")
