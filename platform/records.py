"""Reading metadata records: CSV and JSONL streamed from local disk or S3, fields looked up
among accepted spellings, and errors that name the file (and line)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sama import storage


class DatasetError(RuntimeError):
    """Metadata that cannot be read at all; the message names the file."""


def manifest_files(dataset: str, root: str, names: Sequence[str]) -> list[str]:
    """The dataset's manifest files under ``root``; all of them must exist."""
    files = [storage.join(root, m) for m in names]
    missing = [f for f in files if not storage.exists(f)]
    if missing:
        raise DatasetError(f"{dataset}: missing manifest(s) {missing}")
    return files


def pick(record: Mapping[str, Any], names: Sequence[str]) -> Any:
    """The first present, non-empty value among ``names`` (None if none)."""
    for n in names:
        v = record.get(n)
        if v not in (None, ""):
            return v
    return None


def has_any(keys: Sequence[str], names: Sequence[str]) -> bool:
    return any(n in keys for n in names)


def require_columns(columns: Sequence[str], wanted: Mapping[str, Sequence[str]], where: str) -> None:
    """Fail clearly when a file has none of the accepted names for a needed field."""
    for what, names in wanted.items():
        if not has_any(columns, names):
            raise DatasetError(f"{where}: no {what} field; looked for {list(names)}, found {sorted(columns)}")


def read_csv(uri: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream a CSV (local or S3) as (line number, row) without loading it whole."""
    with storage.open_input(uri) as f:
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
        for i, row in enumerate(reader, start=2):
            yield i, {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}


def read_jsonl(uri: str) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, record or None if malformed, raw line) for each non-blank line."""
    with storage.open_input(uri) as f:
        for i, line in enumerate(io.TextIOWrapper(f, encoding="utf-8"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                yield i, None, line[:200]
                continue
            yield i, rec if isinstance(rec, dict) else None, line[:200]


def json_records(uri: str) -> list[dict]:
    """Records of a JSON file that is a list, a dict of records, or ``{"data": [...]}``."""
    try:
        data = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{uri}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        for k in ("data", "items", "samples", "annotations"):
            if isinstance(data.get(k), list):
                data = data[k]
                break
        else:
            if all(isinstance(v, dict) for v in data.values()):
                data = [{"_id": k, **v} for k, v in data.items()]
            else:
                data = [data]
    if not isinstance(data, list):
        raise DatasetError(f"{uri}: expected a list of records")
    return data
