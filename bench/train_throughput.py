"""Training throughput on the tiny model: Ray Train + DeepSpeed (2 CPU workers) vs a plain
single-process torch loop on the same data and loss -- the platform's overhead -- and the
data-wait fraction.

    python bench/train_throughput.py --latents sama-demo/outputs/precompute/latents --steps 30

Reports the median over steps after the first few (warm-up, stream start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def plain_loop(latents: str, steps: int, batch: int) -> float:
    """samples/s of one process: same model, loss and bucket batches, torch AdamW, no Ray/DeepSpeed."""
    from sama.latents import bucket_batches, collate, iter_rows
    from sama.models.loading import load_transformer
    from sama.models.losses import LossConfig, sama_loss
    from sama.models.transformer import SamaModelConfig

    rows = [r for r in iter_rows(latents) if r["task"] == "image_edit"]
    model = load_transformer(SamaModelConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rates = []
    i = 0
    while len(rates) < steps:
        for group in bucket_batches(rows, batch):
            t0 = time.perf_counter()
            b = collate(group)
            out = sama_loss(
                model, b.target, b.text, b.source, b.semantic, LossConfig(), torch.Generator().manual_seed(i)
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            rates.append(len(group) / (time.perf_counter() - t0))
            i += 1
    return statistics.median(rates[3:])


def ray_train(latents: str, steps: int) -> dict:
    import ray

    from sama import storage
    from sama.jobs import launcher
    from sama.jobs.demo import job_yaml

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = tempfile.mkdtemp(prefix="sama-bench-")
    launcher.run(
        job_yaml("train_stage0"),
        [
            f"output={out}",
            f"train.steps={steps}",
            f"train.checkpoint.every={steps}",
            "train.export.enabled=false",
            f"train.data.sources=[{{name: image_edit, uri: {latents}, tasks: [image_edit]}}]",
        ],
    )
    lines = [json.loads(x) for x in storage.read_text(f"{out}/stage0/metrics/metrics.jsonl").splitlines()][3:]
    return {
        k: statistics.median(m[k] for m in lines)
        for k in ("samples_per_s", "tokens_per_s", "data_wait_frac", "step_time_s")
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--latents", required=True)
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()
    plain = plain_loop(a.latents, a.steps, batch=4)  # the recipe's global image batch (2 per worker x 2)
    dist = ray_train(a.latents, a.steps)
    print(
        json.dumps(
            {
                "plain_torch_samples_per_s": round(plain, 1),
                "ray_train_deepspeed_2w": {k: round(v, 3) for k, v in dist.items()},
                "overhead_ratio": round(plain / dist["samples_per_s"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
