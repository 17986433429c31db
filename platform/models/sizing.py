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


def forward_flops(config, tokens: int, text_tokens: int) -> float:
    """FLOPs (2 per multiply-add) of one transformer forward over ``tokens`` in-context tokens: per
    block the linear layers (self-attention q/k/v/o, cross-attention q/o, the FFN on every token;
    cross-attention k/v on the text), self-attention (QK^T and AV: 4 S^2 d) and cross-attention
    (4 S L d). Embeddings and the read-out are left out (well under 1%). The 14B at 40,625 tokens:
    ~0.97 PFLOP linear + ~1.35 PFLOP attention."""
    d = config.num_attention_heads * config.attention_head_dim
    per_token = 4 * d * d + 2 * d * d + 2 * d * config.ffn_dim
    linear = 2 * tokens * per_token + 2 * text_tokens * 2 * d * d
    attention = 4 * tokens * tokens * d + 4 * tokens * text_tokens * d
    return float(config.num_layers * (linear + attention))


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
        return [
            f"parameters: {self.params / 1e9:.2f} B",
            f"per GPU with ZeRO-{self.zero_stage} over {self.world}: {self.total_gb:.1f} GiB "
            f"({parts}), before activations",
        ]


def estimate_memory(params: int, world: int, zero_stage: int, bf16: bool = True, ema: bool = True) -> MemoryEstimate:
    """Mixed-precision AdamW (ZeRO paper): weights 2, grads 2, fp32 master + m + v 12 bytes a
    parameter (4 + 4 + 4 in fp32 training, without the extra master copy); stage 1 shards the
    optimizer, 2 also the grads, 3 also the weights. The EMA copy (fp32) is sharded over every rank
    at any stage (sama.training.ema.ShardedEMA: ZeRO-3 partitions, else whole tensors dealt by size)."""
    gib = 1024**3
    w_bytes, g_bytes, o_bytes = (2, 2, 12) if bf16 else (4, 4, 8)
    shard = lambda on: world if on else 1  # noqa: E731
    per = {
        "weights": params * w_bytes / shard(zero_stage >= 3) / gib,
        "grads": params * g_bytes / shard(zero_stage >= 2) / gib,
        "optimizer": params * o_bytes / shard(zero_stage >= 1) / gib,
    }
    if ema:  # ShardedEMA: ZeRO-3 partitions, else whole parameters dealt to ranks by size
        per["ema"] = params * 4 / world / gib
    return MemoryEstimate(params, per, zero_stage, world)


# ---------------------------------------------------------------------- does a training step fit?

# Bytes autograd keeps per token per transformer block, in rows of ``dim`` values of the compute
# dtype, measured on a real-size Wan2.1-14B block (bench/activation_memory.py: 39.68 plain and
# 1.03 checkpointed at 2,377 tokens, 40.30 / 1.13 at 577; SDPA's flash kernel: O(tokens)).
ACTIVATION_ROWS_PLAIN = 39.7  # every intermediate of the block, kept for backward
ACTIVATION_ROWS_CHECKPOINTED = 1.03  # the block's input (+ RoPE tables), recomputed in backward
GPU_TYPES = {"H100": 79.6, "H200": 140.4}  # GiB usable (nvidia-smi), 80 GB and 141 GB parts
CUDA_RESERVE_GIB = 2.0  # CUDA context, NCCL buffers, kernels' workspaces
FRAGMENTATION = 0.10  # the caching allocator's slack on top of what is live


def tokens_per_sample(
    height: int,
    width: int,
    frames: int,
    semantic: int,
    source: bool = True,
    vae_spatial: int = 8,
    vae_temporal: int = 4,
    patch: tuple[int, int, int] = (1, 2, 2),
) -> int:
    """In-context tokens of one sample: target (+ source of the same shape) + semantic tokens."""
    latent_frames = (frames - 1) // vae_temporal + 1
    per = (latent_frames // patch[0]) * (height // vae_spatial // patch[1]) * (width // vae_spatial // patch[2])
    return per * (2 if source else 1) + semantic


def activation_gib(tokens: int, dim: int, layers: int, checkpointing: bool, itemsize: int = 2) -> float:
    """Activation memory of a forward+backward over ``tokens`` tokens on one GPU: with
    checkpointing, every block's input plus one block recomputed at a time in backward."""
    rows = (
        layers * ACTIVATION_ROWS_CHECKPOINTED + ACTIVATION_ROWS_PLAIN
        if checkpointing
        else layers * ACTIVATION_ROWS_PLAIN
    )
    return tokens * dim * itemsize * rows / 1024**3


@dataclass
class Fit:
    """One GPU's memory for a training step, term by term, against each GPU type."""

    terms: dict[str, float]  # GiB

    @property
    def total_gib(self) -> float:
        live = sum(v for k, v in self.terms.items() if k != "reserve")
        return live * (1 + FRAGMENTATION) + self.terms.get("reserve", 0.0)

    def verdicts(self) -> dict[str, bool]:
        return {gpu: self.total_gib <= cap for gpu, cap in GPU_TYPES.items()}


def training_fit(
    states: MemoryEstimate, fp32_kept: int, block_params: int, zero_stage: int, prefetch: int, activations: float
) -> Fit:
    """Per-GPU memory: ZeRO states + EMA (``states``), the fp32-kept parameters replicated outside
    DeepSpeed (param, grad, AdamW m and v, EMA: 20 bytes each), ZeRO-3's gathered parameters
    (the block being computed and the next, prefetched, in bf16), activations, a fixed reserve."""
    terms = dict(states.per_gpu_gb)
    terms["fp32_kept"] = fp32_kept * 20 / 1024**3
    if zero_stage == 3:
        terms["gathered"] = (2 * block_params + prefetch) * 2 / 1024**3
    terms["activations"] = activations
    terms["reserve"] = CUDA_RESERVE_GIB
    return Fit(terms)
