"""Activation memory of one real-size SAMA/Wan block, per token: the constants the dry run uses.

    python bench/activation_memory.py [--arch wan2.1-14b] [--tokens 512 1024] [--dtype bfloat16]

Builds one transformer block at the named Wan2.1 size (random weights, CPU), runs
forward on an in-context sequence of N tokens (source + 65 semantic + target), and counts
the bytes autograd saves for backward (distinct storages, parameters excluded), with and
without activation checkpointing. Prints them as "rows": multiples of one hidden-size
vector in the compute dtype per token (bytes / (N * dim * itemsize)), at two lengths to
show they are linear in N (attention through SDPA's flash kernel saves O(N), as flash
attention does on GPU). ``sama.models.sizing.ACTIVATION_ROWS`` holds the measured values.
"""

from __future__ import annotations

import argparse
import time

import torch

from sama.models.sizing import WAN_ARCHITECTURES
from sama.models.transformer import SamaTransformer3DModel


def saved_bytes(fn, params: set[int]) -> int:
    """Bytes of the distinct tensors autograd saves while ``fn`` runs (parameters excluded)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def measure(model: SamaTransformer3DModel, tokens: int, dtype: torch.dtype, checkpoint: bool) -> float:
    """Saved bytes of one block per token, in rows of ``dim`` values of ``dtype``."""
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    block = model.blocks[0]
    # a (1, F, H, W) grid of N/2 tokens each for source and target (patch 1x2x2 on latents)
    side = max(1, int(((tokens - 65) // 2) ** 0.5))
    lat = torch.randn(1, 16, 1, 2 * side, 2 * side, dtype=dtype)
    n = 2 * side * side + 65
    hidden = torch.randn(1, n, dim, dtype=dtype, requires_grad=True)
    text = torch.randn(1, 64, dim, dtype=dtype)
    temb = torch.randn(1, 6, dim, dtype=torch.float32)
    cos, sin = model.build_rotary(lat, lat, 65)
    from sama.models.transformer import SamaRotary

    rotary = SamaRotary(cos, sin)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def run():
        if checkpoint:
            return torch.utils.checkpoint.checkpoint(block, hidden, text, temb, rotary, use_reentrant=False)
        return block(hidden, text, temb, rotary)

    return saved_bytes(run, params) / (n * dim * torch.empty((), dtype=dtype).element_size()), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="wan2.1-14b", choices=sorted(WAN_ARCHITECTURES))
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = SamaTransformer3DModel(**{**WAN_ARCHITECTURES[args.arch], "num_layers": 1}).to(dtype)
    model.requires_grad_(True)
    print(
        f"[bench] one {args.arch} block ({sum(p.numel() for p in model.blocks[0].parameters()) / 1e6:.0f} M "
        f"parameters), {args.dtype}, built in {time.perf_counter() - t0:.0f} s"
    )
    print(f"{'tokens':>8s} {'rows/token (plain)':>20s} {'rows/token (checkpointed)':>26s}")
    for tokens in args.tokens:
        plain, n = measure(model, tokens, dtype, checkpoint=False)
        ckpt, _ = measure(model, tokens, dtype, checkpoint=True)
        print(f"{n:8d} {plain:20.2f} {ckpt:26.2f}")


if __name__ == "__main__":
    main()
