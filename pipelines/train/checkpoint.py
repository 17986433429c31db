"""What a training checkpoint holds, and reading one back.

One Ray Train checkpoint per save, ``<output>/<run>/step_XXXXXXXX/``, merged by Ray Train
from every rank's files::

    ds/...                 DeepSpeed: module, optimizer (ZeRO shards), LR scheduler  (tag "ds")
    ema/rank_XXXXX.pt      this rank's EMA shard (sama.training.ema)
    state/rank_XXXXX.pt    step, stream positions, skip counters, RNG states
    meta.json              step, world size, ZeRO stage, run name           (rank 0)
    model_config.json      the transformer's diffusers config (to rebuild it for export)
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from sama import storage
from sama.training.ema import assemble

DS_TAG = "ds"
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(kind: str, rank: int) -> str:
    return f"{kind}/rank_{rank:05d}.pt"


@dataclass
class TrainState:
    step: int = 0
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (epoch, batches)
    skipped: int = 0  # non-finite steps skipped so far
    consecutive_skipped: int = 0
    samples: int = 0  # global samples seen (completed steps)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_rank_state(folder: str, rank: int, state: TrainState, ema_state: dict) -> None:
    for kind, obj in (("state", {"train": state.__dict__, "rng": rng_state()}), ("ema", ema_state)):
        path = os.path.join(folder, rank_file(kind, rank))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(obj, path)


def load_rank_state(folder: str, rank: int) -> tuple[TrainState, dict, dict]:
    """(train state, rng state, ema shard) of ``rank`` from a local checkpoint folder."""
    saved = torch.load(os.path.join(folder, rank_file("state", rank)), weights_only=False)
    ema_state = torch.load(os.path.join(folder, rank_file("ema", rank)), weights_only=False)
    train = TrainState(**saved["train"])
    train.positions = {k: tuple(v) for k, v in train.positions.items()}
    return train, saved["rng"], ema_state


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


def ema_weights(ckpt: str) -> dict[str, torch.Tensor]:
    """The full EMA state dict of a checkpoint (any world size that wrote it)."""
    world = read_meta(ckpt)["world_size"]
    return assemble([_load(storage.join(ckpt, rank_file("ema", r))) for r in range(world)])


def raw_weights(ckpt: str) -> dict[str, torch.Tensor]:
    """The trained (non-EMA) fp32 weights, consolidated from DeepSpeed's ZeRO shards."""
    meta = read_meta(ckpt)
    with tempfile.TemporaryDirectory(prefix="sama-ckpt-") as tmp:
        local = storage.materialize(storage.join(ckpt, DS_TAG), cache_dir=tmp) if storage.is_s3(ckpt) \
            else storage.join(ckpt, DS_TAG)
        if meta["zero_stage"] == 0:
            return torch.load(os.path.join(local, "mp_rank_00_model_states.pt"), map_location="cpu",
                              weights_only=False)["module"]
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # materialize() puts the folder at <tmp>/<digest>/ds; the DeepSpeed tag is that last part
        return get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(local), tag=DS_TAG)
