"""Edit latency on one device: seconds per edit and per step, the guidance branches one by one
(the release; the baseline, in the same run) or batched, and the step cache's evaluations and
PSNR against the uncached edit.

    python bench/edit_latency.py --steps 50 --thresholds 0.05 0.1 0.2 0.4

One edit (a 9-frame 64x96 clip, text CFG, the release's 50-step flow schedule) with the tiny
random SAMA model on this machine's CPU, same seed everywhere. A tiny random model's velocities are not a
trained model's, so the PSNR column says how the rule behaves, not the quality of a real edit:
measure that with the real weights (``sama evaluate`` on a benchmark, step_cache set).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    args = ap.parse_args()

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
    print(f"tiny SAMA model, CPU, {args.steps} steps, text CFG")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
