"""The tiny model's loss curve on fixed data: the training math's regression guard.

The training step as the train job builds it (the tiny transformer, ``sama_loss`` through
the loop's ``micro_loss`` with its noise-level sampling, DeepSpeed's AdamW from our
``deepspeed_config`` with grad clipping, our LR schedule), one process, world size 1 over
gloo, on a fixed batch of latents, text and semantic anchors drawn from a seeded
generator. ``tests/goldens/loss_tiny.json`` holds the curve (L_FM and L_SA per step); a
fresh run must stay within tolerance of it, so a flipped flow-matching target, a changed
timestep convention or a semantic loss that stops learning shows up as a failed test.

    python -m sama.pipelines.train.golden --write tests/goldens/loss_tiny.json   # after an intended change
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from types import SimpleNamespace

STEPS = 40
SEED = 0
TRAIN = {  # a TrainConfig: the debug recipe's optimizer and schedule, world size 1
    "data": {"image_batch": 2, "video_batch": 2, "sources": [{"name": "v", "uri": "unused", "tasks": ["video_edit"]}]},
    "workers": {"num_workers": 1},
    "engine": {"zero_stage": 2},
    "optim": {"lr": 2e-3, "grad_clip": 1.0, "schedule": {"warmup_steps": 5}},
    "steps": STEPS,
}


def curve(steps: int = STEPS) -> list[dict[str, float]]:
    """L_FM and L_SA of each step of a fresh run (call in a fresh process: it initialises gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    import deepspeed
    import torch

    from sama.config import from_dict
    from sama.models.tiny import tiny_transformer
    from sama.training.schedule import LRLambda

    from .config import TrainConfig
    from .deepspeed_config import deepspeed_config, fit_buckets
    from .loop import init_distributed, micro_loss

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    init_distributed(use_gpu=False)
    t = from_dict(TrainConfig, TRAIN)
    data_gen = torch.Generator().manual_seed(SEED)
    batches = [
        SimpleNamespace(
            target=torch.randn(2, 16, 2, 4, 6, generator=data_gen),
            source=torch.randn(2, 16, 2, 4, 6, generator=data_gen),
            text=torch.randn(2, 5, 32, generator=data_gen),
            semantic=torch.randn(2, 10, 32, generator=data_gen),
        )
        for _ in range(2)
    ]
    model = tiny_transformer(seed=SEED).train()
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=list(model.parameters()),
        config=fit_buckets(deepspeed_config(t, 1, use_gpu=False), sum(p.numel() for p in model.parameters())),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, LRLambda(t.optim.schedule, t.steps)),
        dist_init_required=False,
    )
    gen = torch.Generator().manual_seed(SEED)
    out = []
    for step in range(steps):
        loss = micro_loss(engine, batches[step % len(batches)], t, torch.device("cpu"), torch.float32, gen)
        engine.backward(loss.loss)
        engine.step()
        out.append({"fm": round(float(loss.fm), 6), "sa": round(float(loss.semantic), 6)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", help="write the curve to this JSON file (else print it)")
    args = ap.parse_args(argv)
    steps = curve()
    text = json.dumps({"steps": STEPS, "seed": SEED, "train": TRAIN, "curve": steps}, indent=1)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
