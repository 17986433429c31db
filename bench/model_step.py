"""Training-step cost of SAMA's in-context sequence vs plain Wan on the target alone.

    python bench/model_step.py [--layers 4 --heads 4 --head-dim 32] [--frames 9 --height 96 --width 160]

Same backbone weights' shapes, same target latents; SAMA adds the source tokens and 65-ish
semantic tokens ([source][semantic][target]), so its sequence is about twice as long.
Prints forward+backward time per step and tokens/s for both, and the ratio (the
price of in-context conditioning). On a GPU (if present) the same runs in bf16.
"""

from __future__ import annotations

import argparse
import time

import torch

from sama.models.losses import LossConfig, sama_loss
from sama.models.tiny import tiny_transformer


def step_time(model, kwargs: dict, device: str, dtype: torch.dtype, steps: int) -> float:
    model.to(device, dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = sama_loss(model, **kwargs, cfg=LossConfig(), generator=torch.Generator().manual_seed(i))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[2:])[len(times[2:]) // 2]  # median after warm-up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    import warnings

    warnings.filterwarnings("ignore", message="There are modules")
    shape = dict(
        num_layers=args.layers,
        num_attention_heads=args.heads,
        attention_head_dim=args.head_dim,
        ffn_dim=4 * args.heads * args.head_dim,
    )
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    g = torch.Generator().manual_seed(0)
    lat = lambda: torch.randn(args.batch, 16, f, h, w, generator=g).to(device, dtype)  # noqa: E731
    text = torch.randn(args.batch, 32, 32, generator=g).to(device, dtype)
    sem = torch.randn(args.batch, 10, 32, generator=g).to(device, dtype)
    target, source = lat(), lat()

    n_tgt = f * (h // 2) * (w // 2)
    # Without source and semantic tokens the SAMA model computes exactly plain Wan (tested).
    plain = step_time(
        tiny_transformer(**shape), dict(target_latents=target, text_embeds=text), device, dtype, args.steps
    )
    sama = step_time(
        tiny_transformer(**shape),
        dict(target_latents=target, text_embeds=text, source_latents=source, semantic_tokens=sem),
        device,
        dtype,
        args.steps,
    )
    print(
        f"device {device}, {args.layers} layers x {args.heads} heads x {args.head_dim}, batch {args.batch}, "
        f"{n_tgt} target tokens"
    )
    print(f"{'model':<26} {'s/step':>8} {'target tok/s':>13} {'vs plain':>9}")
    print(f"{'plain Wan (target only)':<26} {plain:>8.3f} {args.batch * n_tgt / plain:>13.0f} {1.0:>8.2f}x")
    print(f"{'SAMA [src][sem][tgt]':<26} {sama:>8.3f} {args.batch * n_tgt / sama:>13.0f} {plain / sama:>8.2f}x")
    print(
        f"sequence: {n_tgt} -> {2 * n_tgt + 10} tokens ({(2 * n_tgt + 10) / n_tgt:.2f}x); step time {sama / plain:.2f}x"
    )


if __name__ == "__main__":
    main()
