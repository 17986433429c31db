"""Edit latency: seconds per edit and per step for editors over 1, 2, 4, 8 processes (GPUs),
with and without CFG parallelism and the step cache, and the achieved TFLOP/s; on the tiny
model also branches batched vs one by one, and the step cache's PSNR against the uncached edit.

    python bench/edit_latency.py                                   # CPU: tiny model, 1 and 2 processes
    python bench/edit_latency.py --model wan2.1-14b --gpus 1 2 4 8 --steps 5 --cache 0 0.1   # a GPU node

Real sizes (``wan2.1-1.3b``, ``wan2.1-14b``) use random weights in bf16 built on each GPU and
precomputed inputs (text embeddings, source latents, noise) at the release's default edit, 480x832
x 49 frames (``--size``), text CFG 5: the transformer is the whole cost (VAE and text encoder are
seconds once per edit). ``s/edit@50`` projects the timed steps to the release's 50. TFLOP/s per GPU
come from ``sama.models.sizing.forward_flops`` (2.34 PFLOP per 14B forward at 40,625 tokens). The
1-process row is the baseline, measured in the same run. A random model's velocities are not a
trained model's: the step cache skips more (or fewer) steps with real weights; measure its quality
with ``sama evaluate`` on a benchmark.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace


def _driver_cls():
    """The rank-0 process of one editor, as Serve and evaluation run it (a Ray actor)."""
    import ray

    @ray.remote
    class Driver:
        def __init__(self, model, group, size: tuple[int, int, int]):
            import torch

            from sama.models.edit_group import load_editor

            torch.set_num_threads(1 if group.num_gpus == 0 else torch.get_num_threads())
            device = "cuda" if group.num_gpus > 0 else "cpu"
            self.pipe = load_editor(model, device, group)
            t = self.pipe.transformer.config
            frames, height, width = size
            vae = self.pipe.vae
            f, h, w = (frames - 1) // vae.temporal_factor + 1, height // vae.spatial_factor, width // vae.spatial_factor
            g = torch.Generator().manual_seed(0)
            text_len = 512 if model.transformer.architecture else model.text.max_length
            self.inputs = dict(
                prompt_embeds=torch.randn(1, text_len, t.text_dim, generator=g),
                negative_prompt_embeds=torch.randn(1, text_len, t.text_dim, generator=g),
                source_latents=torch.randn(1, t.in_channels, f, h, w, generator=g),
                latents=torch.randn(1, t.in_channels, f, h, w, generator=g),
                output_type="latent",
            )
            self.tokens = 2 * f * (h // t.patch_size[1]) * (w // t.patch_size[2]) + t.num_semantic_tokens
            self.text_len = text_len

        def facts(self) -> dict:
            t = self.pipe.transformer
            return {
                "params": sum(p.numel() for p in t.parameters()),
                "tokens": self.tokens,
                "text": self.text_len,
                "config": dict(t.config),
            }

        def edit(self, steps: int, step_cache: float) -> tuple[float, int]:
            self.pipe.configure(replace(self.pipe.config, step_cache=step_cache))
            t0 = time.perf_counter()
            out = self.pipe(num_inference_steps=steps, **self.inputs)
            out.latents.cpu()  # waits for the device
            return time.perf_counter() - t0, out.computed_steps

    return Driver


def layouts(gpus: list[int]) -> list[tuple[int, bool]]:
    return [(n, cfg) for n in gpus for cfg in ((False, True) if n > 1 and n % 2 == 0 else (False,))]


def scaling_table(args) -> None:
    from types import SimpleNamespace

    import ray

    from sama.buckets import BucketConfig
    from sama.models.edit_group import GroupConfig
    from sama.models.edit_parallel import layout
    from sama.models.encoders import TextEncoderConfig
    from sama.models.pipeline import EditModelConfig, PipelineConfig
    from sama.models.sizing import WAN_ARCHITECTURES, forward_flops
    from sama.models.tiny import tiny_transformer_config
    from sama.models.transformer import SamaModelConfig

    real = args.model != "tiny"
    frames, height, width = args.size or ((49, 480, 832) if real else (9, 64, 96))
    model = EditModelConfig(
        transformer=SamaModelConfig(architecture=args.model if real else None, dtype="bfloat16" if real else "float32"),
        text=TextEncoderConfig(max_length=16),
        pipeline=PipelineConfig(buckets=BucketConfig(area=height * width, max_frames=frames), compile=args.compile),
    )
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    unit, unit_name = (1e12, "TFLOP/s") if real else (1e9, "GFLOP/s")  # per process
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    Driver = _driver_cls()
    heads = (WAN_ARCHITECTURES[args.model] if real else tiny_transformer_config())["num_attention_heads"]
    rows, base = [], None
    for n, cfg_parallel in layouts(args.gpus):
        if heads % (n // layout(n, cfg_parallel)):
            sp = n // layout(n, cfg_parallel)
            print(f"skipped: {n} processes with sequence parallelism over {sp}: {heads} heads do not split {sp} ways")
            continue
        group = GroupConfig(n, cfg_parallel, num_gpus=1.0 if gpu else 0.0, num_cpus=0.5)
        d = Driver.options(num_gpus=group.num_gpus, num_cpus=0.5).remote(model, group, (frames, height, width))
        facts = ray.get(d.facts.remote())
        ray.get(d.edit.remote(2, 0.0))  # warm-up: kernels, allocator, the group's first collectives
        for th in args.cache:
            sec, computed = ray.get(d.edit.remote(args.steps, th))
            per_forward = forward_flops(SimpleNamespace(**facts["config"]), facts["tokens"], facts["text"])
            flop = per_forward * computed * 2  # text CFG: two branches per computed step
            cfg_groups = layout(n, cfg_parallel)
            base = base or sec
            rows.append((n, f"{cfg_groups} x {n // cfg_groups}", th, sec, computed, flop / sec / n / unit, base / sec))
        ray.kill(d)
    print(
        f"{args.model} ({facts['params']:,} parameters, {'bf16' if real else 'fp32'}), {height}x{width} x "
        f"{frames} frames: {facts['tokens']:,} tokens, {per_forward / 1e15:.3g} PFLOP per forward; "
        f"text CFG, {args.steps} steps timed, {'GPU' if gpu else 'CPU'}, compile: {args.compile or 'off'}"
    )
    print(f"{'procs':>5} {'CFG x SP':>8} {'cache':>6} {'s/step':>8} {'s/edit@50':>10} {'computed':>8} "
          f"{unit_name + '/proc':>12} {'speed-up':>8}")  # fmt: skip
    for n, lay, th, sec, computed, tflops, speed in rows:
        print(
            f"{n:>5} {lay:>8} {th:>6g} {sec / args.steps:>8.3f} {sec / args.steps * 50:>10.1f} "
            f"{computed:>4}/{args.steps:<3} {tflops:>12.2f} {speed:>7.2f}x"
        )


def quality_rows(args) -> None:
    """One process, the tiny model: branches batched vs one by one, step cache vs uncached video."""
    import numpy as np
    import torch

    from sama.buckets import BucketConfig
    from sama.models.encoders import TextEncoderConfig, VaeConfig, load_text_encoder, load_vae
    from sama.models.pipeline import PipelineConfig, SamaPipeline
    from sama.models.tiny import tiny_transformer

    torch.set_num_threads(1)
    config = PipelineConfig(num_inference_steps=args.steps, buckets=BucketConfig(area=64 * 96, max_frames=9))
    parts = (tiny_transformer(seed=0), load_vae(VaeConfig()), load_text_encoder(TextEncoderConfig(max_length=16)))
    clip = (np.random.default_rng(0).random((9, 64, 96, 3)) * 255).astype(np.uint8)

    def edit(threshold: float, batched: bool = False):
        pipe = SamaPipeline(*parts, replace(config, step_cache=threshold, cfg_batch=batched))
        t0 = time.perf_counter()
        out = pipe("make the square red", clip, seed=1)
        return out, time.perf_counter() - t0

    edit(0.0)  # warm-up
    base, base_s = edit(0.0)
    print(f"\ntiny SAMA model, one process, CPU, {args.steps} steps, text CFG, 9 x 64x96 clip decoded and encoded")
    print(f"  branches one by one (baseline): {base_s:.2f} s/edit, {base_s / args.steps * 1000:.1f} ms/step")
    bat, bat_s = edit(0.0, batched=True)
    diff = (bat.latents - base.latents).abs().max().item()
    print(f"  branches batched (cfg_batch)  : {bat_s:.2f} s/edit ({base_s / bat_s:.2f}x), max |latent diff| {diff:.1e}")
    for th in args.thresholds:
        out, sec = edit(th)
        mse = ((out.video.float() - base.video.float()) ** 2).mean().item()
        psnr = 10 * np.log10(255**2 / max(mse, 1e-10))
        print(
            f"  step_cache {th:<5}: {out.computed_steps:3d} of {args.steps} steps computed, {sec:.2f} s "
            f"({base_s / sec:.2f}x), PSNR vs uncached {psnr:.1f} dB"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "wan2.1-1.3b", "wan2.1-14b"])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="processes per editor (GPUs on a GPU node)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when there is one")
    ap.add_argument("--size", type=int, nargs=3, metavar=("FRAMES", "HEIGHT", "WIDTH"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cache", type=float, nargs="+", default=[0.0], help="step_cache thresholds per layout")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--compile", help="torch.compile backend for the blocks (e.g. inductor); the warm-up compiles")
    args = ap.parse_args()
    scaling_table(args)
    if args.model == "tiny":
        quality_rows(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
