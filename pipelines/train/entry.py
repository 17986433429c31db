"""What Ray Train's controller holds: the worker function and its config, import-light on purpose.

The controller unpickles ``train_loop_per_worker`` and its config when it starts. By reference to
``loop`` (and config dataclasses that pull in the model) that imported torch, DeepSpeed and
diffusers in a process that never trains: ~10 s of every run's start-up on 2 cores. Here the
config travels as pickled bytes and the heavy import happens in the workers, which need it anyway.
"""

from __future__ import annotations

from typing import Any

from ray import cloudpickle


def pack(config: dict[str, Any]) -> dict[str, bytes]:
    return {"packed": cloudpickle.dumps(config)}


def train_fn(config: dict[str, bytes]) -> None:
    from .loop import train_loop_per_worker

    train_loop_per_worker(cloudpickle.loads(config["packed"]))
