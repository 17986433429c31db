"""Host memory and time of ``sama convert`` on a real-size checkpoint, vs loading it whole.

    python bench/convert_checkpoint.py [--arch wan2.1-1.3b] [--dtype bfloat16] [--shards 2] [--dir /tmp/x]

Writes a random SAMA checkpoint of the named Wan2.1 size in the release's key names (as
``--shards`` safetensors files, streamed, so making it needs no memory either), then in
separate processes: (a) ``sama convert --from release`` (streaming, tensor by tensor),
(b) the naive conversion (``load_file`` every shard, rename, ``save_file`` one dict).
Prints each one's peak RSS and seconds, the checkpoint and largest-shard sizes, and the
ratios: the target is peak RSS well under one input shard plus one output shard.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from sama.models.convert import RELEASE_NUMERICS, ours_to_release
from sama.models.sizing import WAN_ARCHITECTURES
from sama.tensorfiles import write_safetensors

NAIVE = r"""
import sys, torch
from safetensors.torch import load_file, save_file
from sama.models.convert import release_to_ours, TYPE_ROWS
sd = {}
for f in sys.argv[2:]:
    sd.update(load_file(f))
out = {release_to_ours(k): v for k, v in sd.items()}
out["type_embed.weight"] = out["type_embed.weight"][TYPE_ROWS]
save_file(out, sys.argv[1] + "/diffusion_pytorch_model.safetensors")
"""


def make_checkpoint(folder: str, arch: str, dtype: torch.dtype, shards: int) -> tuple[list[str], int]:
    from sama.models.transformer import SamaTransformer3DModel

    cfg = dict(WAN_ARCHITECTURES[arch], semantic_dim=1152, semantic_hidden_dim=1024, **RELEASE_NUMERICS)
    with torch.device("meta"):
        meta = SamaTransformer3DModel(**cfg)
    items = [(ours_to_release(k), tuple(v.shape), dtype) for k, v in meta.state_dict().items() if ours_to_release(k)]
    gen = torch.Generator().manual_seed(0)

    def get(name: str) -> torch.Tensor:
        shape = next(s for n, s, _ in items if n == name)
        return torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype)

    per = -(-len(items) // shards)
    files = []
    for i in range(shards):
        path = os.path.join(folder, f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors")
        write_safetensors(path, items[i * per : (i + 1) * per], get)
        files.append(path)
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    json.dump({"dim": dim, "num_heads": cfg["num_attention_heads"]}, open(os.path.join(folder, "config.json"), "w"))
    return files, sum(os.path.getsize(f) for f in files)


def measured(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS GiB, seconds) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    return usage.ru_maxrss / 2**20, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="wan2.1-1.3b", choices=sorted(WAN_ARCHITECTURES))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed)")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src = os.path.join(tmp, "release")
        os.makedirs(src)
        t0 = time.perf_counter()
        files, total = make_checkpoint(src, args.arch, getattr(torch, args.dtype), args.shards)
        shard = max(os.path.getsize(f) for f in files)
        print(
            f"[bench] {args.arch} {args.dtype}: {total / 2**30:.2f} GiB in {len(files)} shards "
            f"(largest {shard / 2**30:.2f} GiB), written in {time.perf_counter() - t0:.1f} s"
        )
        baseline = measured([sys.executable, "-c", "import sama.models.convert"])
        rows = [("python + imports", *baseline)]
        rows.append(
            (
                "sama convert (streaming)",
                *measured(
                    [
                        sys.executable,
                        "-m",
                        "sama.jobs.cli",
                        "convert",
                        "--from",
                        "release",
                        src,
                        os.path.join(tmp, "out"),
                    ]
                ),
            )
        )
        if not args.skip_naive:
            os.makedirs(os.path.join(tmp, "naive"))
            rows.append(
                (
                    "load whole + save (naive)",
                    *measured([sys.executable, "-c", NAIVE, os.path.join(tmp, "naive"), *files]),
                )
            )
        print(f"{'':28s} {'peak RSS GiB':>12s} {'seconds':>8s} {'RSS - imports':>14s} {'/ one shard':>12s}")
        for name, rss, sec in rows:
            extra = rss - baseline[0]
            print(f"{name:28s} {rss:12.2f} {sec:8.1f} {extra:14.2f} {extra * 2**30 / shard:12.2f}")
        if not args.skip_naive:
            print(
                f"[bench] streaming / naive peak RSS above imports: "
                f"{(rows[1][1] - baseline[0]) / max(rows[2][1] - baseline[0], 1e-9):.3f}x; "
                f"time {rows[1][2] / rows[2][2]:.2f}x"
            )


if __name__ == "__main__":
    main()
