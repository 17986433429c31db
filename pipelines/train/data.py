"""Streaming the latent shards into the Ray Train workers, one fixed file set per rank.

Ray Data's ``streaming_split`` hands blocks to whichever worker asks first, so which rows a
rank sees, and in what order, changes from run to run; exact resume and a deterministic
order need a fixed assignment. The driver therefore deals each source's shard files to
ranks (balanced by matching rows, read from the ``task`` column only), and
:class:`RankShardedDataConfig` gives every rank a Ray Data stream over its own files with
``preserve_order``: nothing is downloaded whole, and no worker reads another's files.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.train import DataConfig

from sama import storage
from sama.latents import shard_files
from sama.training.ema import deal_by_size
from sama.training.mixing import SourceConfig, passes_needed



@dataclass
class RankData:
    """What one rank streams of one source."""

    files: list[str]
    rows: int  # matching rows this rank keeps from those files: one epoch
    passes: int  # epochs streamed per Ray Data execution (the file list repeated)
    offsets: list[int] | None = None  # row-split fallback: matching rows before each file
    world: int = 1  # ... and the split: keep matching rows whose running index % world == rank
    rank: int = 0


Plan = dict[str, list[RankData]]  # source name -> per rank


def plan_files(sources: list[SourceConfig], world: int, steps: int, batch_per_rank: dict[str, int]) -> Plan:
    """Deal each source's files to ranks, balanced by matching rows. A source with fewer files
    than ranks (a tiny demo set) is split by rows instead: every rank reads its files and keeps
    every ``world``-th matching row."""
    plan: Plan = {}
    total_weight = sum(s.weight for s in sources)
    for s in sources:
        files, counts = [], []
        for f in shard_files(s.uri):
            tasks = storage.read_parquet(f, columns=["task"])["task"]
            n = int(pc.sum(pc.is_in(tasks, pa.array(s.tasks))).as_py() or 0)
            if n:
                files.append(f)
                counts.append(n)
        if sum(counts) < world:
            raise ValueError(f"data source {s.name!r}: {sum(counts)} {s.tasks} row(s) under {s.uri} for {world} "
                             "workers; every worker needs at least one")
        share, batch = s.weight / total_weight, batch_per_rank[s.name]
        ranks = []
        if len(files) < world:
            offsets = [sum(counts[:i]) for i in range(len(files))]
            for rank in range(world):
                rows = len(range(rank, sum(counts), world))
                ranks.append(RankData(files, rows, passes_needed(steps, share, batch, rows), offsets, world, rank))
        else:
            owner = deal_by_size(counts, world)
            for rank in range(world):
                mine = [(f, n) for f, n, r in zip(files, counts, owner) if r == rank]
                rows = sum(n for _, n in mine)
                ranks.append(RankData([f for f, _ in mine], rows, passes_needed(steps, share, batch, rows)))
        plan[s.name] = ranks
    return plan


def read_shards(batch: pa.Table, tasks: list[str]) -> pa.Table:
    """Ray Data UDF: shard paths -> their rows of ``tasks`` (a task, not an actor, so no CPU is held
    between reads; one operator, so a stream starts quickly)."""
    tables = []
    for path, offset, world, rank in zip(*(batch[c].to_pylist() for c in ("path", "offset", "world", "rank"))):
        t = storage.read_parquet(path)
        t = t.filter(pc.is_in(t["task"], pa.array(tasks)))
        if world > 1:  # row-split fallback
            t = t.take(pa.array([i for i in range(t.num_rows) if (offset + i) % world == rank], pa.int64()))
        tables.append(t)
    return pa.concat_tables(tables)


def read_rank(data: RankData, tasks: list[str], read_num_cpus: float) -> "ray.data.Dataset":
    """The rank's files, listed ``passes`` times, read one file per block, in order."""
    offsets = data.offsets or [0] * len(data.files)
    one = [{"path": f, "offset": o, "world": data.world if data.offsets else 1, "rank": data.rank}
           for f, o in zip(data.files, offsets)]
    items = one * data.passes
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(read_shards, fn_kwargs={"tasks": tasks}, batch_size=1, batch_format="pyarrow",
                          num_cpus=read_num_cpus)


class RankShardedDataConfig(DataConfig):
    """Rank ``r`` of source ``s`` streams ``plan[s][r]`` (see the module docstring)."""

    def __init__(self, plan: Plan, tasks: dict[str, list[str]], read_num_cpus: float = 0.25):
        super().__init__(datasets_to_split=[])
        self.plan, self.tasks, self.read_num_cpus = plan, tasks, read_num_cpus

    def configure(self, datasets, world_size, worker_handles=None, worker_node_ids=None, **kwargs):
        out: list[dict] = [{} for _ in range(world_size)]
        for name in datasets:
            if len(self.plan[name]) != world_size:
                raise ValueError(f"data plan for {name!r} has {len(self.plan[name])} ranks, the run has {world_size}")
            for rank in range(world_size):
                ds = read_rank(self.plan[name][rank], self.tasks[name], self.read_num_cpus)
                ds.set_name(f"{name}-rank{rank}")
                options = self._resolve_execution_options(name)
                options.preserve_order = True  # the rank's row order is part of the resume position
                ds.context.execution_options = options
                ds.context.enable_progress_bars = False  # one bar per rank and source floods the driver
                out[rank][name] = ds.iterator()
        return out


def build(sources: list[SourceConfig], world: int, steps: int, batch_per_rank: dict[str, int],
          read_num_cpus: float, sequence_parallel: int = 1):
    """``datasets=`` for the trainer, the data config that replaces each with per-rank streams, the plan.

    The datasets handed to the trainer only carry the names: ``RankShardedDataConfig``
    builds the real per-rank streams from the plan. With sequence parallelism the files are
    dealt to the data-parallel groups, and every rank of a group streams its group's files
    (the same rows in the same order, so the group agrees on each batch without talking).
    """
    per_group = plan_files(sources, world // sequence_parallel, steps, batch_per_rank)
    plan = {name: [ranks[r // sequence_parallel] for r in range(world)] for name, ranks in per_group.items()}
    datasets = {s.name: ray.data.from_items([{"source": s.name}]) for s in sources}
    return datasets, RankShardedDataConfig(plan, {s.name: list(s.tasks) for s in sources}, read_num_cpus), plan
