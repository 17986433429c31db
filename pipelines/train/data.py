"""Streaming the latent shards into the Ray Train workers, one fixed file set per rank.

Ray Data's ``streaming_split`` hands blocks to whichever worker asks first, so which rows a
rank sees, and in what order, changes from run to run; exact resume and a deterministic
order need a fixed assignment. The driver therefore deals each source's shard files to
ranks (balanced by matching rows, read from the ``task`` column only). Each worker indexes
its own files (:func:`rank_index`: three small columns) and streams their row groups through
Ray Data in order (:func:`row_opener`), from any position: nothing is downloaded whole, no
worker reads another's files, and a resume starts reading where its position is.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

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
            raise ValueError(
                f"data source {s.name!r}: {sum(counts)} {s.tasks} row(s) under {s.uri} for {world} "
                "workers; every worker needs at least one"
            )
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


def rank_index(data: RankData, tasks: list[str]) -> tuple[list[dict], list[tuple[str, int, list[int], int]]]:
    """This rank's rows of one epoch, in stream order, as light records (task, bucket, source
    shape: what bucket batches group by; no tensors), and the row groups holding them:
    ``[(path, row group, rows within it, stream index of the first)]``. Reads three small
    columns and the Parquet footers, never a tensor."""
    import pyarrow.parquet as pq

    records: list[dict] = []
    groups: list[tuple[str, int, list[int], int]] = []
    offsets = data.offsets or [0] * len(data.files)
    for path, offset in zip(data.files, offsets):
        fs, local = storage.filesystem(path)
        with fs.open_input_file(local) as fh:
            pf = pq.ParquetFile(fh)
            table = pf.read(columns=["task", "bucket", "src_latent_shape"])
            starts = [0]
            for i in range(pf.metadata.num_row_groups):
                starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
        task, bucket, shape = (table[c].to_pylist() for c in ("task", "bucket", "src_latent_shape"))
        matching = 0
        rg = 0
        for row in range(table.num_rows):
            if task[row] not in tasks:
                continue
            keep = data.offsets is None or (offset + matching) % data.world == data.rank  # row-split fallback
            matching += 1
            if not keep:
                continue
            while row >= starts[rg + 1]:
                rg += 1
            if not groups or groups[-1][0] != path or groups[-1][1] != rg:
                groups.append((path, rg, [], len(records)))
            groups[-1][2].append(row - starts[rg])
            records.append({"task": task[row], "bucket": bucket[row], "src_latent_shape": shape[row]})
    return records, groups


def row_opener(
    groups: list[tuple[str, int, list[int], int]], passes: int, read_num_cpus: float, in_worker: bool = False
):
    """``open_rows(epoch, start)`` for :class:`sama.training.mixing.BucketStream`: a Ray Data
    stream, in order, of this rank's rows from index ``start`` of ``epoch`` through ``passes``
    epochs (one pipeline start serves several epochs of a small set). Only row groups at or
    after ``start`` are read: a resume seeks to its position. ``in_worker``: the same rows read
    one row group at a time in the calling process, with no Ray Data pipeline."""
    import ray

    from .reading import read_row_groups

    def open_rows(epoch: int, start: int):
        items = []
        for e in range(epoch, epoch + max(1, passes)):
            for path, rg, rows, first in groups:
                skip = max(0, start - first) if e == epoch else 0
                if skip < len(rows):
                    items.append(
                        {"path": path, "row_group": rg, "rows": rows[skip:], "first": first + skip, "epoch": e}
                    )
        if in_worker:
            return (row for item in items for row in read_row_groups(pa.Table.from_pylist([item])).to_pylist())
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(read_row_groups, batch_size=1, batch_format="pyarrow", num_cpus=read_num_cpus)
        ds.context.execution_options.preserve_order = True  # the row order is part of the position
        ds.context.enable_progress_bars = False  # one bar per rank and source floods the driver
        return (dict(r) for r in ds.iter_rows())

    return open_rows


def build(
    sources: list[SourceConfig], world: int, steps: int, batch_per_rank: dict[str, int], sequence_parallel: int = 1
) -> Plan:
    """The per-rank plan: each source's files dealt to the data-parallel groups, and every
    rank of a group streaming its group's files (the same rows in the same order, so the group
    agrees on each batch without talking). Workers build their streams from it."""
    per_group = plan_files(sources, world // sequence_parallel, steps, batch_per_rank)
    return {name: [ranks[r // sequence_parallel] for r in range(world)] for name, ranks in per_group.items()}
