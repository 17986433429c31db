"""EMA of the weights, sharded across data-parallel ranks.

Each rank keeps the EMA only of what it owns, so the EMA costs 1/world of a full fp32
copy per rank (a full copy of the 14B model would be 56 GB):

- ZeRO-3: the rank's own partition of every parameter (``param.ds_tensor``), i.e. the
  same flat slice DeepSpeed keeps on this rank;
- ZeRO 0-2 (parameters replicated): whole parameters, dealt to ranks by size (greedy,
  deterministic), so each rank holds about 1/world of the bytes.

``state_dict()`` is one rank's shard; :func:`assemble` joins the shards of all ranks
into a full ``{name: tensor}`` state dict (for export and for initialising stage 1),
independent of the world size that wrote them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def deal_by_size(sizes: Sequence[int], world: int) -> list[int]:
    """Owner rank of each item: largest first onto the least-loaded rank (ties: lowest rank, then index)."""
    load = [0] * world
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += sizes[i]
    return owner


def _partition(p: torch.nn.Parameter) -> torch.Tensor | None:
    return getattr(p, "ds_tensor", None)  # set by ZeRO-3 on partitioned parameters


class ShardedEMA:
    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], decay: float, rank: int = 0,
                 world: int = 1):
        self.decay, self.rank, self.world = decay, rank, world
        named = [(n, p) for n, p in named_params if p.requires_grad]
        self.partitioned = bool(named) and _partition(named[0][1]) is not None
        if self.partitioned:
            owned = named
        else:
            owner = deal_by_size([p.numel() for _, p in named], world)
            owned = [np for np, r in zip(named, owner) if r == rank]
        self.params = dict(owned)
        self.shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in owned}
        self.shadow = {n: self._source(p).detach().float().clone() for n, p in owned}

    def _source(self, p: torch.nn.Parameter) -> torch.Tensor:
        return _partition(p) if self.partitioned else p

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param, for every owned tensor."""
        if not self.shadow:
            return
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names],
                             [self._source(self.params[n]).detach().float() for n in names], 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "rank": self.rank, "world": self.world, "partitioned": self.partitioned,
                "shapes": self.shapes, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if (state["world"], state["partitioned"]) != (self.world, self.partitioned) or state["rank"] != self.rank:
            raise ValueError(f"EMA shard of rank {state['rank']}/{state['world']} (partitioned={state['partitioned']}) "
                             f"does not fit rank {self.rank}/{self.world} (partitioned={self.partitioned})")
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)

    @torch.no_grad()
    def load_full(self, full: dict[str, torch.Tensor]) -> None:
        """Start from a full state dict (e.g. stage 0's EMA when stage 1 begins)."""
        for n, t in self.shadow.items():
            src = full[n].float().flatten()
            if self.partitioned:
                size = t.numel()
                part = src[self.rank * size: (self.rank + 1) * size]
                t.zero_()[: part.numel()].copy_(part)
            else:
                t.copy_(src.view_as(t))


def assemble(shards: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Full ``{name: fp32 tensor}`` from the ``state_dict()`` of every rank."""
    shards = sorted(shards, key=lambda s: s["rank"])
    world = shards[0]["world"]
    if [s["rank"] for s in shards] != list(range(world)):
        raise ValueError(f"need the EMA shards of ranks 0..{world - 1}, got {[s['rank'] for s in shards]}")
    out: dict[str, torch.Tensor] = {}
    if shards[0]["partitioned"]:
        for n, shape in shards[0]["shapes"].items():
            flat = torch.cat([s["shadow"][n].flatten() for s in shards])
            numel = torch.Size(shape).numel()
            out[n] = flat[:numel].view(shape).clone()  # drop ZeRO-3's tail padding
    else:
        for s in shards:
            out.update(s["shadow"])
    return out
