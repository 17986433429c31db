"""Training-ready tensors on storage: the precompute job writes them, training streams them.

One row per sample holds its source and target VAE latents, SigLIP anchor tokens and
text embeddings as raw little-endian bytes plus shape and dtype (bf16 kept as its bits),
so a shard is plain Parquet that pyarrow, pandas or DuckDB can open, and a row decodes
with :func:`unpack` without any pickling.

The reader side: :func:`bucket_batches` groups a stream of rows into batches that share
one bucket (so tensors stack without padding), and :func:`collate` stacks them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from sama.schemas import TableSchema, register

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TENSORS = ("src_latent", "tgt_latent", "sem_tokens", "text_emb")


def _tensor_fields(name: str) -> list[pa.Field]:
    return [pa.field(name, pa.large_binary()), pa.field(f"{name}_shape", pa.list_(pa.int32()))]


LATENTS = register(
    TableSchema(
        "latents",
        1,
        pa.schema(
            [
                pa.field("sample_id", pa.string(), nullable=False),
                pa.field("dataset", pa.string(), nullable=False),
                pa.field("category", pa.string()),
                pa.field("task", pa.string(), nullable=False),
                pa.field("bucket", pa.string(), nullable=False),  # "FxHxW" in pixels: batches share one
                pa.field("pretext", pa.string(), nullable=False),  # none | cube | speed | tube
                pa.field("pretext_params", pa.string()),  # JSON: enough to reproduce the source
                pa.field("prompt", pa.string(), nullable=False),  # instruction with its task tag / token
                *_tensor_fields("src_latent"),  # (C, F, h, w) normalised Wan latents of the source side
                *_tensor_fields("tgt_latent"),  # (C, F, h, w) of the target
                *_tensor_fields("sem_tokens"),  # (M*(K+1), D) SigLIP anchor tokens of the target
                *_tensor_fields("text_emb"),  # (L, D) UMT5 embeddings, trimmed to the prompt's length
                pa.field("dtype", pa.string(), nullable=False),  # float32 | bfloat16 | float16
            ]
        ),
    )
)


def pack(t: torch.Tensor, dtype: str) -> tuple[bytes, list[int]]:
    """Tensor -> (raw bytes in ``dtype``, shape)."""
    t = t.detach().to("cpu", _DTYPES[dtype]).contiguous()
    raw = t.view(torch.int16) if dtype in ("bfloat16", "float16") else t
    return raw.numpy().tobytes(), list(t.shape)


def unpack(data: bytes, shape: Iterable[int], dtype: str) -> torch.Tensor:
    """(raw bytes, shape, dtype) -> tensor in ``dtype`` (a copy, safe to modify)."""
    shape = list(shape)
    if dtype in ("bfloat16", "float16"):
        arr = np.frombuffer(data, dtype=np.int16).reshape(shape).copy()
        return torch.from_numpy(arr).view(_DTYPES[dtype])
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())


def row_tensors(row: dict) -> dict[str, torch.Tensor]:
    return {n: unpack(row[n], row[f"{n}_shape"], row["dtype"]) for n in TENSORS}


# --- reading: streaming rows, bucket-aware batches -------------------------------------------


def shard_files(uri: str) -> list[str]:
    from sama import storage

    files = storage.list_files(uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"no latent shards under {uri}")
    return files


def iter_rows(uri: str, rows_per_read: int = 8) -> Iterator[dict]:
    """Stream the rows of every shard under ``uri`` (local or s3://), a few row groups at a
    time: nothing is downloaded whole, so memory stays at a handful of samples."""
    import pyarrow.parquet as pq

    from sama import storage
    from sama.schemas import validate

    for f in shard_files(uri):
        fs, path = storage.filesystem(f)
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            validate(pf.schema_arrow.empty_table(), LATENTS, where=f)
            for batch in pf.iter_batches(batch_size=rows_per_read):
                yield from batch.to_pylist()


def read_dataset(uri: str):
    """The shards as a streaming ``ray.data.Dataset`` (what the training job feeds its workers)."""
    import ray

    from sama import storage

    files = shard_files(uri)
    fs, _ = storage.filesystem(files[0])
    return ray.data.read_parquet([storage.filesystem(f)[1] for f in files], filesystem=fs)


def batch_key(row: dict) -> str:
    """Rows with equal keys stack into one batch: same bucket, same task family."""
    family = "image" if row["task"] == "image_edit" else "video"
    return f"{family}:{row['bucket']}:{tuple(row['src_latent_shape'])}"


def bucket_batches(
    rows: Iterable[dict], batch_size: int, max_pending: int = 64, drop_last: bool = False
) -> Iterator[list[dict]]:
    """Group a row stream into batches of ``batch_size`` rows sharing :func:`batch_key`.

    At most ``max_pending`` partial batches are held; when more buckets are open, the
    oldest is flushed short (so memory stays bounded on a long tail of rare buckets).
    """
    pending: OrderedDict[str, list[dict]] = OrderedDict()
    for row in rows:
        key = batch_key(row)
        group = pending.setdefault(key, [])
        group.append(row)
        if len(group) == batch_size:
            yield pending.pop(key)
        elif len(pending) > max_pending:
            _, oldest = pending.popitem(last=False)
            if not drop_last:
                yield oldest
    if not drop_last:
        yield from pending.values()


@dataclass
class Batch:
    source: torch.Tensor  # (B, C, F_s, h, w)
    target: torch.Tensor  # (B, C, F, h, w)
    semantic: torch.Tensor  # (B, N_m, D_sem)
    text: torch.Tensor  # (B, L_max, D_text), zero-padded (as Wan's encoder pads)
    text_lens: torch.Tensor  # (B,)
    sample_ids: list[str]
    tasks: list[str]
    pretexts: list[str]

    @property
    def is_video(self) -> bool:
        return self.target.shape[2] > 1


def collate(rows: list[dict], text_len: int | None = None) -> Batch:
    """Stack rows of one bucket; text embeddings are zero-padded to ``text_len`` (or the longest)."""
    ts = [row_tensors(r) for r in rows]
    lens = [t["text_emb"].shape[0] for t in ts]
    width = text_len or max(lens)
    dim = ts[0]["text_emb"].shape[1]
    text = torch.zeros(len(rows), width, dim, dtype=ts[0]["text_emb"].dtype)
    for i, t in enumerate(ts):
        n = min(lens[i], width)
        text[i, :n] = t["text_emb"][:n]
    return Batch(
        source=torch.stack([t["src_latent"] for t in ts]),
        target=torch.stack([t["tgt_latent"] for t in ts]),
        semantic=torch.stack([t["sem_tokens"] for t in ts]),
        text=text,
        text_lens=torch.tensor(lens),
        sample_ids=[r["sample_id"] for r in rows],
        tasks=[r["task"] for r in rows],
        pretexts=[r["pretext"] for r in rows],
    )


def params_json(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
