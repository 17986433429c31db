"""What a training checkpoint holds, and reading back only what a rank needs.

One Ray Train checkpoint per save, ``<output>/<run>/step_XXXXXXXX/``, merged by Ray Train
from every rank's files::

    ds/...                         DeepSpeed: module, optimizer (ZeRO shards), LR scheduler  (tag "ds")
    ema/rank_XXXXX.safetensors     this rank's EMA shard (sama.training.ema), readable by byte range
    state/rank_XXXXX.pt            step, stream positions, skip counters, RNG states
    fp32/params.pt                 parameters kept in fp32 outside DeepSpeed + their optimizer (rank 0)
    meta.json                      step, world size, ZeRO stage, run name           (rank 0)
    model_config.json              the transformer's diffusers config (to rebuild it for export)

A rank resuming (or starting stage 1 from a checkpoint of the same world size and ZeRO
stage) fetches only its own files (:func:`own_files`): its ZeRO partition of the module and
optimizer, its EMA shard and state, and the small shared files. Anything else (another
world size, the export) reads parameters one at a time (:class:`sama.training.ema.EmaShards`,
DeepSpeed's lazy fp32 consolidation).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from sama import storage
from sama.training.ema import EmaShards, assemble

DS_TAG = "ds"
STEP_DIR = re.compile(r"^step_(\d+)$")
FP32_FILE = "fp32/params.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(kind: str, rank: int) -> str:
    return f"{kind}/rank_{rank:05d}." + ("safetensors" if kind == "ema" else "pt")


@dataclass
class TrainState:
    step: int = 0
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (epoch, batches)
    skipped: int = 0  # steps skipped so far (all their micro-batches non-finite)
    consecutive_skipped: int = 0  # steps in a row with a non-finite micro-batch
    dropped_micro_batches: int = 0  # non-finite micro-batches left out of their step
    samples: int = 0  # global samples seen (completed steps)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_rank_state(folder: str, rank: int, state: TrainState, ema) -> None:
    path = os.path.join(folder, rank_file("state", rank))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"train": state.__dict__, "rng": rng_state()}, path)
    ema.save(os.path.join(folder, rank_file("ema", rank)))


def load_rank_state(folder: str, rank: int) -> tuple[TrainState, dict]:
    """(train state, rng state) of ``rank`` from a local checkpoint folder."""
    saved = torch.load(os.path.join(folder, rank_file("state", rank)), map_location="cpu", weights_only=False)
    train = TrainState(**saved["train"])
    train.positions = {k: tuple(v) for k, v in train.positions.items()}
    return train, saved["rng"]


# --- which files a rank needs, and fetching just those ----------------------------------------------


def own_files(names: list[str], rank: int, zero_stage: int) -> list[str]:
    """The files of a checkpoint (relative names) that ``rank`` reads to resume: its ZeRO
    partition (stage 3: module and optimizer; 1-2: optimizer, plus the replicated module
    file every rank loads), its EMA shard and state, and the small shared files."""
    mine = {rank_file("state", rank), rank_file("ema", rank), "meta.json", "model_config.json", FP32_FILE}
    pattern = re.compile(rf"^{DS_TAG}/(bf16_)?zero_pp_rank_{rank}_mp_rank_\d+_(optim|model)_states\.pt$")
    shared = re.compile(rf"^{DS_TAG}/mp_rank_\d+_model_states\.pt$")  # ZeRO 0-2: the whole module
    return sorted(n for n in names if n in mine or pattern.match(n) or (zero_stage < 3 and shared.match(n)))


def list_relative(ckpt: str) -> list[str]:
    root = ckpt.rstrip("/")
    return [f[len(root) + 1 :] for f in storage.list_files(root)]


def fetch(ckpt: str, names: list[str], dest: str) -> list[str]:
    """Copy ``names`` (relative) of checkpoint ``ckpt`` into ``dest``, streaming; returns them."""
    for name in names:
        storage.download_file(storage.join(ckpt, name), os.path.join(dest, name))
    return names


def checkpoint_uri(checkpoint) -> str:
    """The storage URI of a Ray Train ``Checkpoint`` (local path, or s3:// for our S3 filesystem)."""
    import pyarrow.fs as pafs

    fs = checkpoint.filesystem
    return checkpoint.path if isinstance(fs, pafs.LocalFileSystem) else "s3://" + checkpoint.path.lstrip("/")


# --- locating and reading checkpoints on storage (local or s3://) ----------------------------------


def resolve(uri: str) -> str:
    """``uri`` itself if it is a checkpoint, else the newest ``step_*`` checkpoint under it."""
    if storage.exists(storage.join(uri, "meta.json")):
        return uri
    found: dict[int, str] = {}
    for f in storage.list_files(uri, "meta.json"):
        folder = storage.parent(f)
        m = STEP_DIR.match(storage.basename(folder))
        if m:
            found[int(m.group(1))] = folder
    if not found:
        raise FileNotFoundError(f"no training checkpoint (step_*/meta.json) under {uri}")
    return found[max(found)]


def read_meta(ckpt: str) -> dict:
    return json.loads(storage.read_text(storage.join(ckpt, "meta.json")))


def _load(uri: str):
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=False)


def ema_shards(ckpt: str) -> EmaShards:
    """The checkpoint's EMA, one parameter at a time (``shards[name]``)."""
    world = read_meta(ckpt)["world_size"]
    return EmaShards([storage.join(ckpt, rank_file("ema", r)) for r in range(world)])


def ema_weights(ckpt: str) -> dict[str, torch.Tensor]:
    """The full EMA state dict of a checkpoint, in memory (small models; export streams)."""
    world = read_meta(ckpt)["world_size"]
    if storage.exists(storage.join(ckpt, "ema", "rank_00000.pt")):  # written before the safetensors shards
        return assemble([_load(storage.join(ckpt, f"ema/rank_{r:05d}.pt")) for r in range(world)])
    shards = ema_shards(ckpt)
    try:
        return {n: shards[n].clone() for n in shards.names()}
    finally:
        shards.close()


def fp32_params(ckpt: str) -> dict:
    """Parameters kept in fp32 outside DeepSpeed (bf16 runs), and their optimizer state; {} if none."""
    uri = storage.join(ckpt, FP32_FILE)
    return _load(uri) if storage.exists(uri) else {}


def raw_weights(ckpt: str, lazy: bool = False) -> dict:
    """The trained (non-EMA) fp32 weights, consolidated from DeepSpeed's ZeRO shards (plus the
    fp32-kept parameters). The DeepSpeed files are read in place when local, or fetched once
    per node into the cache (a file lock) from s3://. ``lazy``: the values are DeepSpeed's lazy
    tensors over memory-mapped shards (``.contiguous()`` materialises one), so no full copy
    is held; else a full dict."""
    import tempfile

    meta = read_meta(ckpt)
    ds = storage.materialize(storage.join(ckpt, DS_TAG))  # a local path as it is; s3: the node's cache
    extra = dict(fp32_params(ckpt).get("params", {}))
    if meta["zero_stage"] == 0:
        module = torch.load(
            os.path.join(ds, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False, mmap=True
        )["module"]
        return {**module, **extra}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # DeepSpeed wants <dir>/<tag>/...: a folder holding a link to the DeepSpeed files
    parent = tempfile.mkdtemp(prefix="sama-ckpt-")
    os.symlink(ds, os.path.join(parent, DS_TAG))
    weights = get_fp32_state_dict_from_zero_checkpoint(parent, tag=DS_TAG, lazy_mode=lazy)
    return {**weights, **extra}
