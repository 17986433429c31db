"""One editor over several processes (a GPU each): a serving replica or an evaluation actor
that spans N devices.

The process that owns the editor (the Serve replica, the Ray Data actor) is rank 0: it keeps
its own pipeline, progress hooks and cancel flag, and drives N - 1 helper actors, each with
the same model, over one ``torch.distributed`` group (NCCL on GPUs, gloo on CPU). An edit is
the same pipeline call in every process (``sama.models.edit_parallel`` splits the work);
helpers skip the VAE decode and return nothing, rank 0 returns the video.

Helpers go into the caller's placement group when it has one (a Serve replica with
``placement_group_bundles``: bundle 0 is the replica, bundle r the helper of rank r), so a
replica's GPUs sit on one node; they share the owner's fate (Ray kills them with it).
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

import ray
import torch
import torch.distributed as dist

from sama.models.edit_parallel import EditParallel, layout
from sama.models.pipeline import EditModelConfig, EditStopped, PipelineConfig, SamaPipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupConfig:
    processes: int = 1  # per editor; 1: the pipeline in the owner's process, nothing else
    cfg_parallel: bool = True  # an even count: the guidance branches on two halves (else: all split the sequence)
    num_gpus: float = 0.0  # per helper (the owner's own come from its actor options)
    num_cpus: float = 1.0
    timeout_s: float = 600.0  # a helper that does not join, or a collective that waits this long, fails the edit
    failed_grace_s: float = 30.0  # after rank 0 fails alone, how long helpers get to finish before the group is dropped


def _device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def _join(address: str, rank: int, world: int, device: str, timeout_s: float) -> None:
    if dist.is_initialized():
        raise RuntimeError("this process already has a torch.distributed group: an editor group needs its own")
    if device == "cuda":
        torch.cuda.set_device(0)  # Ray shows each process its own GPU as cuda:0
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo",
        init_method=address,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


class EditHelper:
    """Ray actor: rank ``rank`` of an editor group."""

    def __init__(self, model: EditModelConfig, rank: int, world: int, address: str, cfg_degree: int, g: GroupConfig):
        device = _device(g.num_gpus)
        _join(address, rank, world, device, g.timeout_s)
        self.pipe = model.load(device)
        self.pipe.enable_parallel(EditParallel.build(cfg_degree))

    def ready(self) -> bool:
        return True

    def configure(self, config: PipelineConfig) -> None:
        self.pipe.configure(config)

    def run(self, args: tuple, kwargs: dict) -> str:
        try:
            self.pipe(*args, **{**kwargs, "output_type": "latent"})  # rank 0 decodes
        except EditStopped:
            return "stopped"
        return "done"


class EditGroup:
    """A :class:`SamaPipeline` look-alike whose every call runs on ``g.processes`` processes."""

    def __init__(self, model: EditModelConfig, device: str, g: GroupConfig):
        world, cfg_degree = g.processes, layout(g.processes, g.cfg_parallel)
        self._lock = threading.Lock()
        self._broken = ""  # why the group cannot edit any more
        self.grace_s = g.failed_grace_s
        address = _free_address()
        pg = ray.util.get_current_placement_group()
        # Two threads per helper: a health ping answers while an edit runs (edits never overlap:
        # the owner runs one at a time, under its lock).
        actor = ray.remote(max_concurrency=2)(EditHelper)
        self.helpers = []
        for rank in range(1, world):
            opts: dict[str, Any] = {"num_gpus": g.num_gpus, "num_cpus": g.num_cpus}
            if pg is not None and rank < pg.bundle_count:
                opts["scheduling_strategy"] = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=rank
                )
            self.helpers.append(actor.options(**opts).remote(model, rank, world, address, cfg_degree, g))
        try:
            _join(address, 0, world, device, g.timeout_s)
        except Exception as e:
            self.close()
            raise RuntimeError(
                f"editor group: {world - 1} helper process(es) did not join at {address} within {g.timeout_s:.0f} s "
                f"(each needs num_gpus={g.num_gpus}, num_cpus={g.num_cpus}): {e}"
            ) from e
        try:
            self.pipe = model.load(device)
            self.pipe.enable_parallel(EditParallel.build(cfg_degree))
            self.check_health()
        except Exception:
            self.close()  # the helpers and the process group go: a retry starts clean
            raise
        self.layout = {"processes": world, "cfg_groups": cfg_degree, "sequence_parallel": world // cfg_degree}
        log.info("editor group ready: %s", self.layout)

    def __getattr__(self, name: str):  # buckets, config, transformer, device, forwards_per_step, ...
        pipe = self.__dict__.get("pipe")
        if pipe is None:
            raise AttributeError(name)
        return getattr(pipe, name)

    def __call__(self, *args, stop=None, **kwargs):
        # One edit at a time over the group (a replica may run several threads): the collectives
        # of two edits must not interleave, and helpers take calls in the order sent.
        with self._lock:
            if self._broken:
                raise RuntimeError(f"editor group unusable: {self._broken}")
            running = [h.run.remote(args, kwargs) for h in self.helpers]
            try:
                out = self.pipe(*args, stop=stop, **kwargs)
            except EditStopped:
                ray.get(running)  # every rank stopped at the same step
                raise
            except Exception as e:
                # This process failed on its own: helpers may wait in a collective for it until the
                # timeout. Give them a moment, else the group is done (its health check fails and
                # Serve replaces the replica) rather than held for minutes.
                done, _ = ray.wait(running, num_returns=len(running), timeout=self.grace_s)
                if len(done) < len(running):
                    self._broken = f"rank 0 failed mid-edit ({type(e).__name__}: {e})"
                    self.close()
                raise
            ray.get(running)  # a helper's error surfaces here, with its traceback
            return out

    def configure(self, config: PipelineConfig) -> None:
        """New sampling settings (steps, guidance, step cache, ...) on every rank at once."""
        with self._lock:
            ray.get([h.configure.remote(config) for h in self.helpers])
            self.pipe.configure(config)

    def check_health(self, timeout_s: float = 10.0) -> None:
        """Raises when a helper is gone (the group cannot edit any more)."""
        if self._broken:
            raise RuntimeError(f"editor group unusable: {self._broken}")
        ray.get([h.ready.remote() for h in self.helpers], timeout=timeout_s)

    def close(self) -> None:
        for h in self.helpers:
            ray.kill(h)
        self.helpers = []
        if dist.is_initialized():
            dist.destroy_process_group()


def load_editor(model: EditModelConfig, device: str, g: GroupConfig = GroupConfig()) -> SamaPipeline | EditGroup:
    """The pipeline in this process, or a group of ``g.processes`` when that is more than one."""
    return model.load(device) if g.processes <= 1 else EditGroup(model, device, g)


def _free_address() -> str:
    host = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"
