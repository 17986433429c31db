"""The Ray Data UDF that streams latent rows into the training workers, import-light on purpose:
Ray Data runs it in fresh worker processes, which would otherwise import torch (``sama.latents``)
before reading a single row group."""

from __future__ import annotations

import pyarrow as pa

from sama import storage


def read_row_groups(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: (path, row group, rows, first index, epoch) -> those rows, numbered ``_i``
    within the epoch ``_e`` (a task, not an actor, so no CPU is held between reads)."""
    tables = []
    for path, rg, rows, first, epoch in zip(
        *(batch[c].to_pylist() for c in ("path", "row_group", "rows", "first", "epoch"))
    ):
        t = storage.read_row_group(path, rg).take(pa.array(rows, pa.int64()))
        t = t.append_column("_e", pa.array([epoch] * len(rows), pa.int64()))
        tables.append(t.append_column("_i", pa.array(range(first, first + len(rows)), pa.int64())))
    return pa.concat_tables(tables)
