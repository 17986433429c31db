"""Weight files read one tensor at a time and written one tensor at a time.

safetensors files are read by byte range (local or ``s3://``: never downloaded whole), torch
pickles (``.pt/.pth/.bin``) are memory-mapped; outputs are written after a header planned
from the tensors' shapes and dtypes, each tensor fetched, cast and appended in turn. Host
memory stays at about one tensor whatever the file's size. Used by checkpoint conversion
(``sama.models.convert``), the EMA shards and the training export.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from sama import storage

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
WEIGHTS_PREFIX = "diffusion_pytorch_model"
DEFAULT_SHARD_BYTES = 5 * 2**30
Item = tuple[str, tuple[int, ...], torch.dtype]  # (name, shape, dtype) of a tensor to write
# Prefixes training frameworks wrap state-dict names in (DiffSynth, DDP, Lightning, ...).
_WRAPPER_PREFIXES = ("pipe.dit.", "dit.", "module.", "model.diffusion_model.", "model.")


class TensorFileError(ValueError):
    """A weight file cannot be read as expected; the message names the file (and tensor)."""


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_ST_CODES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    file: str  # the URI it is read from
    key: str  # its name in that file
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int = -1  # safetensors: absolute byte offset of the data; -1: a torch pickle


def safetensors_header(uri: str) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """(tensor entries, ``__metadata__``) of a safetensors file, from its header alone."""
    with storage.open_input(uri) as f:
        head = f.read(8)
        if len(head) != 8:
            raise TensorFileError(f"{uri}: not a safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise TensorFileError(f"{uri}: not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TensorFileError(f"{uri}: unreadable safetensors header ({e})") from None
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] not in _ST_DTYPES:
            raise TensorFileError(f"{uri}: tensor {name} has unsupported dtype {spec['dtype']}")
        out[name] = TensorEntry(
            uri, name, tuple(spec["shape"]), _ST_DTYPES[spec["dtype"]], base + spec["data_offsets"][0]
        )
    return out, header.get("__metadata__") or {}


def _unwrap_state_dict(obj: Any, uri: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module", "ema", "dit"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise TensorFileError(
        f"{uri}: no state dict of tensors found (keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj)})"
    )


class TensorReader:
    """Every tensor of a set of weight files, read one at a time.

    Later files never override earlier ones: pass the checkpoint's files first and a base
    model's after them to fill in what the checkpoint lacks.
    """

    def __init__(self, files: Iterable[str]):
        self.files = list(files)
        self.entries: dict[str, TensorEntry] = {}
        self._pickles: dict[str, dict[str, torch.Tensor]] = {}
        self._handle: tuple[str, Any] | None = None  # the file being read (reads go file by file)
        for uri in self.files:
            for name, entry in self._index(uri).items():
                self.entries.setdefault(name, entry)

    def _index(self, uri: str) -> dict[str, TensorEntry]:
        if uri.endswith(".safetensors"):
            return safetensors_header(uri)[0]
        local = storage.materialize(uri)
        try:
            obj = torch.load(local, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise TensorFileError(f"{uri}: cannot read ({e})") from None
            obj = torch.load(local, map_location="cpu", weights_only=True)  # legacy format: loaded whole
        except Exception as e:
            raise TensorFileError(f"{uri}: cannot read ({type(e).__name__}: {e})") from None
        sd = _unwrap_state_dict(obj, uri)
        self._pickles[uri] = sd
        return {k: TensorEntry(uri, k, tuple(v.shape), v.dtype) for k, v in sd.items()}

    def close(self) -> None:
        if self._handle is not None:
            self._handle[1].close()
            self._handle = None

    def strip_prefix(self) -> str:
        """Drop a wrapper prefix every name shares (``model.``, ``dit.``, ...); returns it."""
        for prefix in _WRAPPER_PREFIXES:
            if self.entries and all(k.startswith(prefix) for k in self.entries):
                self.entries = {k[len(prefix) :]: v for k, v in self.entries.items()}
                return prefix
        return ""

    def merge(self, other: "TensorReader") -> None:
        """Add ``other``'s tensors that this reader lacks."""
        for name, entry in other.entries.items():
            self.entries.setdefault(name, entry)
        self._pickles.update(other._pickles)

    def get_range(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, reading only their bytes."""
        entry = self.entries[name]
        if entry.offset < 0:
            return self._pickles[entry.file][entry.key].flatten()[start:stop]
        size = itemsize(entry.dtype)
        stop = min(stop, numel(entry.shape))
        if stop <= start:
            return torch.empty(0, dtype=entry.dtype)
        f = self._open(entry.file)
        f.seek(entry.offset + start * size)
        data = bytearray(f.read((stop - start) * size))
        if len(data) != (stop - start) * size:
            raise TensorFileError(f"{entry.file}: tensor {name} is truncated")
        return torch.frombuffer(data, dtype=entry.dtype)

    def _open(self, uri: str):
        if self._handle is None or self._handle[0] != uri:
            self.close()
            self._handle = (uri, storage.open_input(uri))
        return self._handle[1]

    def get(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        if entry.offset < 0:
            return self._pickles[entry.file][entry.key]
        nbytes = numel(entry.shape) * itemsize(entry.dtype)
        f = self._open(entry.file)
        f.seek(entry.offset)
        data = bytearray(f.read(nbytes))
        if len(data) != nbytes:
            raise TensorFileError(f"{entry.file}: tensor {name} is truncated ({len(data)} of {nbytes} bytes)")
        return (
            torch.frombuffer(data, dtype=entry.dtype).reshape(entry.shape)
            if nbytes
            else torch.empty(entry.shape, dtype=entry.dtype)
        )


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def weight_files(uri: str) -> list[str]:
    """The weight files of a checkpoint: the file itself, or those in a folder (an index's
    shards when it has one)."""
    if uri.endswith(WEIGHT_SUFFIXES) and is_file(uri):
        return [uri]
    files = storage.list_files(uri, WEIGHT_SUFFIXES, recursive=False)
    indexes = storage.list_files(uri, ".index.json", recursive=False)
    if indexes:
        index = json.loads(storage.read_text(indexes[0]))
        shards = sorted(set(index.get("weight_map", {}).values()))
        files = [storage.join(uri, s) for s in shards]
    if not files:
        raise TensorFileError(f"{uri}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    # A single file is the checkpoint; several are shards of one (safetensors preferred).
    st = [f for f in files if f.endswith(".safetensors")]
    return st or files


def is_file(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


# ---------------------------------------------------------------------- writing tensors


def write_safetensors(
    path: str, items: list[Item], get: Callable[[str], torch.Tensor], metadata: Optional[dict[str, str]] = None
) -> int:
    """Write a safetensors file one tensor at a time: the header is planned from
    ``items`` (name, shape, dtype) first, then each tensor is fetched, cast and appended.
    Atomic (written beside ``path``, renamed into place). Returns the bytes written."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in items:
        nbytes = numel(shape) * itemsize(dtype)
        header[name] = {"dtype": _ST_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as the safetensors writer does
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype in items:
                t = get(name).to(dtype).contiguous()
                if tuple(t.shape) != tuple(shape):
                    raise TensorFileError(f"tensor {name}: planned shape {shape}, got {tuple(t.shape)}")
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy().data)
                del t
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 8 + len(blob) + offset


def write_sharded(
    folder: str,
    items: list[Item],
    get: Callable[[str], torch.Tensor],
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    prefix: str = WEIGHTS_PREFIX,
) -> list[str]:
    """diffusers' sharded layout: ``{prefix}.safetensors``, or numbered shards + an index."""
    shards: list[list] = [[]]
    size = 0
    for item in items:
        nbytes = numel(item[1]) * itemsize(item[2])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    if len(shards) == 1:
        names = [f"{prefix}.safetensors"]
    else:
        names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    total = 0
    for name, shard in zip(names, shards):
        total += write_safetensors(os.path.join(folder, name), shard, get)
        log.info("wrote %s (%d tensors)", name, len(shard))
    if len(shards) > 1:
        weight_map = {item[0]: name for name, shard in zip(names, shards) for item in shard}
        with open(os.path.join(folder, f"{prefix}.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    return names
