"""EMA of the weights, sharded across data-parallel ranks.

Each rank keeps the EMA only of what it owns, so the EMA costs 1/world of a full fp32
copy per rank (a full copy of the 14B model would be 56 GB):

- a ZeRO-3 partitioned parameter: the rank's own partition (``param.ds_tensor``), i.e. the
  same flat slice DeepSpeed keeps on this rank;
- a replicated parameter (ZeRO 0-2, or one kept outside DeepSpeed): whole, dealt to ranks
  by size (greedy, deterministic), so each rank holds about 1/world of those bytes.

A shard is saved as one safetensors file per rank (``save`` / ``load``: the shard's
tensors plus its layout in the metadata), so :class:`EmaShards` can rebuild any one
parameter of a checkpoint by reading only its slices, by byte range, from every rank's
file (local or s3://): export and stage-1 initialisation never hold the whole EMA.
:func:`assemble` joins in-memory ``state_dict()`` shards (tests, small models).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import torch

from sama.tensorfiles import TensorReader, safetensors_header, write_safetensors


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
    def __init__(
        self, named_params: Iterable[tuple[str, torch.nn.Parameter]], decay: float, rank: int = 0, world: int = 1
    ):
        self.decay, self.rank, self.world = decay, rank, world
        named = [(n, p) for n, p in named_params if p.requires_grad]
        parted = [(n, p) for n, p in named if _partition(p) is not None]
        whole = [(n, p) for n, p in named if _partition(p) is None]
        owner = deal_by_size([p.numel() for _, p in whole], world)
        owned = parted + [np for np, r in zip(whole, owner) if r == rank]
        self.params = dict(owned)
        self.partitioned = {n for n, _ in parted}
        self.shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in owned}
        self.shadow = {n: self._source(n).detach().float().clone() for n in self.params}

    def _source(self, name: str) -> torch.Tensor:
        p = self.params[name]
        return _partition(p) if name in self.partitioned else p

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param, for every owned tensor."""
        if not self.shadow:
            return
        names = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[n] for n in names], [self._source(n).detach().float() for n in names], 1.0 - self.decay
        )

    def layout(self) -> dict:
        return {
            "decay": self.decay,
            "rank": self.rank,
            "world": self.world,
            "partitioned": sorted(self.partitioned),
            "shapes": {n: list(s) for n, s in self.shapes.items()},
        }

    def state_dict(self) -> dict:
        return {**self.layout(), "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if (state["world"], state["rank"]) != (self.world, self.rank) or set(
            _partitioned_names(state)
        ) != self.partitioned:
            raise ValueError(
                f"EMA shard of rank {state['rank']}/{state['world']} does not fit rank "
                f"{self.rank}/{self.world} (or its parameters are partitioned differently)"
            )
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)

    # ------------------------------------------------------------------ files

    def save(self, path: str) -> None:
        """This rank's shard as a safetensors file (its layout in the metadata)."""
        items = [(n, tuple(t.shape), t.dtype) for n, t in self.shadow.items()]
        write_safetensors(path, items, self.shadow.__getitem__, {"format": "pt", "sama_ema": json.dumps(self.layout())})

    def load(self, uri: str) -> None:
        """This rank's shard back from ``save``'s file (local or s3://), tensor by tensor."""
        reader = TensorReader([uri])
        layout = json.loads(safetensors_header(uri)[1]["sama_ema"])
        try:
            self.load_state_dict({**layout, "shadow": _LazyTensors(reader)})
        finally:
            reader.close()

    @torch.no_grad()
    def load_full(self, full) -> None:
        """Start from a full state dict, or anything with ``[name]`` giving a full tensor
        (e.g. :class:`EmaShards`: stage 0's EMA when stage 1 begins; its ``flat_range`` then
        reads only the slice this rank keeps of a partitioned parameter)."""
        for n, t in self.shadow.items():
            if n in self.partitioned:
                size = t.numel()
                lo, hi = self.rank * size, (self.rank + 1) * size
                part = full.flat_range(n, lo, hi) if hasattr(full, "flat_range") else full[n].flatten()[lo:hi]
                t.zero_()[: part.numel()].copy_(part.float())
            else:
                t.copy_(full[n].float().view_as(t))


class _LazyTensors:
    """``{name: tensor}`` over a reader, each tensor read when asked for."""

    def __init__(self, reader: TensorReader):
        self.reader = reader

    def items(self):
        return ((n, self.reader.get(n)) for n in self.reader.entries)


def _partitioned_names(layout: dict) -> list[str]:
    p = layout["partitioned"]
    if isinstance(p, bool):  # shards written before per-parameter partitioning: all or nothing
        return list(layout["shapes"]) if p else []
    return list(p)


def assemble(shards: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Full ``{name: fp32 tensor}`` from the ``state_dict()`` of every rank."""
    shards = sorted(shards, key=lambda s: s["rank"])
    world = shards[0]["world"]
    if [s["rank"] for s in shards] != list(range(world)):
        raise ValueError(f"need the EMA shards of ranks 0..{world - 1}, got {[s['rank'] for s in shards]}")
    out: dict[str, torch.Tensor] = {}
    parted = set(_partitioned_names(shards[0]))
    for n in parted:
        shape = shards[0]["shapes"][n]
        flat = torch.cat([s["shadow"][n].flatten() for s in shards])
        out[n] = flat[: torch.Size(shape).numel()].view(*shape).clone()  # drop ZeRO-3's tail padding
    for s in shards:
        out.update({n: t for n, t in s["shadow"].items() if n not in parted})
    return out


class EmaShards:
    """Every rank's EMA shard file of a checkpoint; ``[name]`` rebuilds one full parameter by
    reading its slices (byte ranges) from the files that hold them."""

    def __init__(self, files: Sequence[str]):
        metas = [json.loads(safetensors_header(f)[1]["sama_ema"]) for f in files]
        order = sorted(range(len(files)), key=lambda i: metas[i]["rank"])
        self.files, self.layouts = [files[i] for i in order], [metas[i] for i in order]
        world = self.layouts[0]["world"]
        if [m["rank"] for m in self.layouts] != list(range(world)):
            raise ValueError(f"need the EMA shards of ranks 0..{world - 1}, got {[m['rank'] for m in self.layouts]}")
        self.partitioned = set(_partitioned_names(self.layouts[0]))
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.owner: dict[str, int] = {}
        for m in self.layouts:
            for n, shape in m["shapes"].items():
                self.shapes[n] = tuple(shape)
                if n not in self.partitioned:
                    self.owner[n] = m["rank"]
        self.readers = [TensorReader([f]) for f in self.files]

    def names(self) -> list[str]:
        return list(self.shapes)

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if name not in self.partitioned:
            return self.readers[self.owner[name]].get(name).view(shape)
        flat = torch.cat([r.get(name).flatten() for r in self.readers])
        return flat[: torch.Size(shape).numel()].view(shape)

    def flat_range(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened parameter (fewer past its end), reading only
        the shard slices they lie in."""
        total = torch.Size(self.shapes[name]).numel()
        stop = min(stop, total)
        if name not in self.partitioned:
            return self.readers[self.owner[name]].get_range(name, start, stop).float()
        size = self.readers[0].entries[name].shape
        size = torch.Size(size).numel()  # every rank's partition of it has this many elements
        pieces = []
        for r in range(start // size, -(-stop // size)):
            lo, hi = max(start, r * size) - r * size, min(stop, (r + 1) * size) - r * size
            pieces.append(self.readers[r].get_range(name, lo, hi))
        return torch.cat(pieces).float() if pieces else torch.empty(0)

    def close(self) -> None:
        for r in self.readers:
            r.close()
