"""Model size and memory, without weights: what dry runs print before a cluster is booked.

The SAMA transformer is built on the meta device (no memory, no checkpoint download) from
the checkpoint's ``config.json`` when it is readable, else from a named Wan2.1
architecture; memory per GPU follows the ZeRO partitioning of mixed-precision AdamW.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel

# diffusers' Wan2.1 T2V transformer configs (text_dim 4096, freq_dim 256, patch (1, 2, 2)).
WAN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "wan2.1-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
}


def architecture_config(cfg: SamaModelConfig, architecture: str | None) -> tuple[dict[str, Any], str]:
    """(transformer kwargs, where they came from): a named architecture when given (no
    storage access: dry runs work offline), else the checkpoint's ``config.json``."""
    if architecture:
        if architecture not in WAN_ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(WAN_ARCHITECTURES)}")
        return dict(WAN_ARCHITECTURES[architecture]), f"architecture {architecture}"
    if not cfg.pretrained:
        raise ValueError("no checkpoint and no architecture to size")
    from sama import storage

    uri = storage.join(cfg.pretrained, *([cfg.subfolder] if cfg.subfolder else []), "config.json")
    try:
        data = json.loads(storage.read_text(uri))
    except (OSError, RuntimeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {uri} ({e}); name the architecture to size the model offline") from None
    keys = set(SamaTransformer3DModel.__init__.__code__.co_varnames)
    return {k: v for k, v in data.items() if k in keys}, uri


def meta_transformer(cfg: SamaModelConfig, architecture: str | None = None) -> tuple[SamaTransformer3DModel, str]:
    """The SAMA transformer on the meta device (allocates nothing)."""
    if cfg.pretrained is None and architecture is None:
        from sama.models.tiny import tiny_transformer_config

        kwargs, source = tiny_transformer_config(), "tiny config"
    else:
        kwargs, source = architecture_config(cfg, architecture)
        kwargs = {**kwargs, **cfg.sama_kwargs()}
    with torch.device("meta"):
        return SamaTransformer3DModel(**kwargs), source


@dataclass
class MemoryEstimate:
    params: int
    per_gpu_gb: dict[str, float]  # weights, grads, optimizer, ema
    zero_stage: int
    world: int

    @property
    def total_gb(self) -> float:
        return sum(self.per_gpu_gb.values())

    def lines(self) -> list[str]:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.per_gpu_gb.items())
        return [f"parameters: {self.params / 1e9:.2f} B",
                f"per GPU with ZeRO-{self.zero_stage} over {self.world}: {self.total_gb:.1f} GiB "
                f"({parts}), before activations"]


def estimate_memory(params: int, world: int, zero_stage: int, bf16: bool = True, ema: bool = True) -> MemoryEstimate:
    """Mixed-precision AdamW (ZeRO paper): weights 2, grads 2, fp32 master + m + v 12 bytes a
    parameter (4 + 4 + 4 in fp32 training, without the extra master copy); stage 1 shards the
    optimizer, 2 also the grads, 3 also the weights. The EMA copy (fp32) is sharded under ZeRO-3."""
    gib = 1024**3
    w_bytes, g_bytes, o_bytes = (2, 2, 12) if bf16 else (4, 4, 8)
    shard = lambda on: world if on else 1  # noqa: E731
    per = {
        "weights": params * w_bytes / shard(zero_stage >= 3) / gib,
        "grads": params * g_bytes / shard(zero_stage >= 2) / gib,
        "optimizer": params * o_bytes / shard(zero_stage >= 1) / gib,
    }
    if ema:
        per["ema"] = params * 4 / shard(zero_stage >= 3) / gib
    return MemoryEstimate(params, per, zero_stage, world)
