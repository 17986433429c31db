"""Host memory of a ZeRO-3 run at start-up, at stage-1 init_from and at export: before vs after.

    python bench/train_host_memory.py [--layers 12] [--world 2] [--dir /tmp/x]

A Wan2.1-1.3B-wide SAMA model (dim 1536, 12 heads, ffn 8960; ``--layers`` of its 30, so the
optimizer states of a real ZeRO-3 checkpoint fit a 24 GiB machine) on ``--world`` CPU ranks
(gloo, bf16, DeepSpeed ZeRO-3). Each phase is measured as the peak RSS of every rank
(``/proc/self/clear_refs`` resets the high-water mark between phases) and their sum (a node):

- start     before: every rank ``from_pretrained`` in fp32 (the old loader);
            after:  ``build_zero3`` (partitioned as built, rank 0 streams one tensor at a time, bf16)
- init_from before: every rank consolidates the whole fp32 weights + EMA (``raw_weights``, ``ema_weights``)
            after:  every rank loads its own ZeRO shard and EMA file (``engine.load_checkpoint``)
- export    before: gather the whole EMA in one process and ``save_pretrained``
            after:  ``export_checkpoint`` (one parameter at a time)

On CPU the partitions, optimizer states and activations are host memory too (they would be on
the GPU in a real run), so the bench reads each phase's growth, not the process's total.
Workers run with ``MALLOC_MMAP_THRESHOLD_=65536``: every tensor is then its own mapping, so RSS
follows live memory instead of glibc's heap keeping freed transient tensors resident.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import torch
import torch.multiprocessing as mp

ARCH = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096, freq_dim=256)
GIB = 2**30


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20


class Peak:
    """Peak RSS during a block (sampled every 10 ms; the kernel's high-water mark reset first)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.base, self.peak, self.stop = rss_gib(), rss_gib(), False

        def sample():
            while not self.stop:
                self.peak = max(self.peak, rss_gib())
                time.sleep(0.01)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
        self.peak = max(self.peak, hwm)
        self.growth = self.peak - self.base


def ds_config(zero3: bool = True) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True}},
        "bf16": {"enabled": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False},
    }


def worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    from sama.models.loading import load_transformer
    from sama.models.transformer import SamaModelConfig
    from sama.pipelines.train import checkpoint as checkpoints
    from sama.pipelines.train.loop import init_distributed
    from sama.pipelines.train.weights import build_zero3, pretrained_source
    from sama.training.ema import ShardedEMA

    init_distributed(use_gpu=False)
    res: dict[str, dict[str, float]] = {}
    cfg = ds_config()
    cfg["train_batch_size"] = world
    mcfg = SamaModelConfig(pretrained=os.path.join(root, "pretrained"), subfolder=None)

    def phase(name, fn):
        dist.barrier()
        with Peak() as p:
            value = fn()
        dist.barrier()
        res[name] = {"growth": p.growth, "peak": p.peak}
        return value

    # start
    phase(
        "start before",
        lambda: load_transformer(SamaModelConfig(pretrained=mcfg.pretrained, subfolder=None, dtype="float32")),
    )
    model, fp32 = phase(
        "start after",
        lambda: build_zero3(
            mcfg, cfg, torch.bfloat16, rank, lambda: pretrained_source(mcfg), torch.device("cpu"), True
        ),
    )
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()], config=cfg)
    ema = ShardedEMA([*engine.module.named_parameters(), *fp32.named_parameters()], 0.9998, rank, world)
    ckpt = os.path.join(root, "ckpt")
    engine.save_checkpoint(ckpt, tag=checkpoints.DS_TAG)
    checkpoints.save_rank_state(ckpt, rank, checkpoints.TrainState(), ema)
    if rank == 0:
        json.dump(
            {"step": 1, "world_size": world, "zero_stage": 3, "precision": "bf16"},
            open(os.path.join(ckpt, "meta.json"), "w"),
        )
        json.dump(dict(engine.module.config), open(os.path.join(ckpt, "model_config.json"), "w"), default=list)
        os.makedirs(os.path.join(ckpt, "fp32"), exist_ok=True)
        torch.save(fp32.state_dict(), os.path.join(ckpt, checkpoints.FP32_FILE))
    dist.barrier()
    del ema

    # init_from
    phase("init_from before", lambda: (checkpoints.raw_weights(ckpt), checkpoints.ema_weights(ckpt)))
    work = tempfile.mkdtemp()

    def rank_local():
        names = checkpoints.own_files(checkpoints.list_relative(ckpt), rank, 3)
        checkpoints.fetch(ckpt, [n for n in names if not n.startswith("state/")], work)
        engine.load_checkpoint(work, tag=checkpoints.DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
        again = ShardedEMA([*engine.module.named_parameters(), *fp32.named_parameters()], 0.9998, rank, world)
        again.load(os.path.join(work, checkpoints.rank_file("ema", rank)))

    phase("init_from after", rank_local)

    # export (rank 0 only, as the export task)
    if rank == 0:
        from sama.pipelines.train.export import export_checkpoint

        def gathered():
            from accelerate import init_empty_weights

            from sama.models.transformer import SamaTransformer3DModel

            state = checkpoints.ema_weights(ckpt)
            with init_empty_weights():
                m = SamaTransformer3DModel.from_config(
                    {
                        k: v
                        for k, v in json.load(open(os.path.join(ckpt, "model_config.json"))).items()
                        if not k.startswith("_")
                    }
                )
            m.load_state_dict(state, strict=False, assign=True)
            m.save_pretrained(os.path.join(root, "export-before"))

        with Peak() as p:
            gathered()
        res["export before"] = {"growth": p.growth, "peak": p.peak}
        with Peak() as p:
            export_checkpoint(ckpt, os.path.join(root, "export-after"))
        res["export after"] = {"growth": p.growth, "peak": p.peak}
    dist.barrier()
    json.dump(res, open(f"{out}.{rank}", "w"))


def write_pretrained(folder: str, layers: int) -> tuple[int, int]:
    """A random SAMA checkpoint (bf16 shards, streamed), its parameter count and largest shard."""
    from sama.models.transformer import SamaTransformer3DModel
    from sama.tensorfiles import write_sharded

    cfg = dict(ARCH, num_layers=layers, semantic_dim=1152, semantic_hidden_dim=1024)
    with torch.device("meta"):
        meta = SamaTransformer3DModel(**cfg)
    shapes = {n: tuple(p.shape) for n, p in meta.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    os.makedirs(folder, exist_ok=True)
    names = write_sharded(
        folder,
        [(n, s, torch.bfloat16) for n, s in shapes.items()],
        lambda n: (torch.randn(shapes[n], generator=gen) * 0.02).bfloat16(),
        2 * GIB // 4,
    )
    meta.save_config(folder)
    return sum(p.numel() for p in meta.parameters()), max(os.path.getsize(os.path.join(folder, n)) for n in names)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        t0 = time.perf_counter()
        params, shard = write_pretrained(os.path.join(root, "pretrained"), args.layers)
        bf16, fp32 = params * 2 / GIB, params * 4 / GIB
        print(
            f"[bench] {args.layers}-layer 1.3B-wide model: {params / 1e9:.2f} B params (bf16 {bf16:.2f} GiB, "
            f"fp32 {fp32:.2f} GiB), largest shard {shard / GIB:.2f} GiB, written in {time.perf_counter() - t0:.0f} s"
        )
        out = os.path.join(root, "result")
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the spawned workers
        mp.spawn(worker, args=(args.world, free_port(), root, out), nprocs=args.world)
        res = [json.load(open(f"{out}.{r}")) for r in range(args.world)]
    target = bf16 + shard / GIB
    print(
        f"growth of peak RSS in GiB per phase (rank 0 | rank 1 ... | node = sum); target per node: one bf16 copy "
        f"+ one shard = {target:.2f}"
    )
    for name in res[0]:
        per = [r[name]["growth"] for r in res if name in r]
        node = sum(per)
        print(
            f"{name:18s} " + " | ".join(f"{g:6.2f}" for g in per) + f" | node {node:6.2f}  "
            f"({node / target:.2f}x the target)"
        )


if __name__ == "__main__":
    main()
