"""One URI layer for local paths and ``s3://`` (any S3-compatible endpoint).

Every job reads and writes through these functions, so a path in a job YAML can be
``/data/x``, ``./x`` or ``s3://bucket/x`` and nothing else in the code cares.

S3 settings come from the usual AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``) plus ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for MinIO, Ceph, moto or another S3-compatible server.

A member of an uncompressed tar archive is addressed as ``ARCHIVE.tar::MEMBER``
(``s3://b/shards/00000.tar::abc.1.jpg``) and read in place, without unpacking.

Writes are atomic: a local file is written beside its target and renamed into
place; an S3 object only becomes visible when its upload completes. A reader
therefore never sees half a shard.

Transient is not permanent: throttling, 5xx, resets, timeouts and short responses are
retried with exponential backoff and jitter (honouring ``Retry-After``) up to
``SAMA_STORAGE_RETRIES`` attempts (else ``AWS_MAX_ATTEMPTS``, default 10), each request
bounded by ``SAMA_STORAGE_TIMEOUT`` seconds (default 60); when the budget runs out a
:class:`StorageError` names the URI, the cause and the attempts. S3 objects are read
through a buffer in block-aligned ranged GETs (``SAMA_STORAGE_BLOCK``, default 256 KiB),
each checked against the object's size from a validated HEAD, so a probe costs a few
requests and a response cut short is an error to retry, never a short file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import posixpath
import random
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import IO
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TAR_SEP = "::"


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


def storage_cause(e: BaseException) -> StorageError | None:
    """The StorageError behind ``e``, however Ray wrapped it (a task's ``RayTaskError`` keeps the
    original as ``.cause``; Ray Data chains its own exception to that), or None."""
    seen: set[int] = set()
    stack, found = [e], None
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if type(x) is StorageError:
            return x  # the original, not Ray's dual-class copy whose text is a traceback
        if isinstance(x, StorageError) and found is None:
            found = x
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
        stack = [y for y in stack if y is None or isinstance(y, BaseException)]
    return found


# --- retries ---------------------------------------------------------------------------------------

TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
    "ServiceUnavailable", "500", "502", "503", "504",
}  # fmt: skip


def retry_budget() -> tuple[int, float]:
    """(attempts, seconds per request) from the environment."""
    attempts = int(os.environ.get("SAMA_STORAGE_RETRIES") or os.environ.get("AWS_MAX_ATTEMPTS") or 10)
    return max(1, attempts), float(os.environ.get("SAMA_STORAGE_TIMEOUT") or 60)


def _code(e: BaseException) -> str | None:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        return str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
    return None


def transient(e: BaseException) -> bool:
    """Worth another attempt: the network or the server, not the request or the object."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    code = _code(e)
    if code is not None:
        return code in TRANSIENT_CODES
    name = type(e).__name__
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                "IncompleteReadError", "ResponseStreamingError", "ProtocolError", "ShortRead"):  # fmt: skip
        return True
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    # pyarrow's S3 client raises plain OSErrors: retry the network's and the server's, not e.g. a
    # missing bucket or a full local disk.
    text = str(e).upper()
    return isinstance(e, OSError) and any(m in text for m in TRANSIENT_MARKERS)


TRANSIENT_MARKERS = (
    "NETWORK_CONNECTION", "SLOW_DOWN", "SLOWDOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "REQUEST_TIMEOUT",
    "THROTTLING", "CURL", "CONNECTION RESET", "TIMED OUT", "BROKEN PIPE", "FAILED TO FLUSH",
    "HTTP RESPONSE CODE: 5", "UNEXPECTED EOF",
)  # fmt: skip


def _retry_after(e: BaseException) -> float | None:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after")
        try:
            return min(30.0, float(value)) if value is not None else None
        except ValueError:
            return None
    return None


def with_retries(fn, what: str):
    """``fn()`` with exponential backoff and jitter on transient errors; a StorageError naming
    ``what``, the cause and the attempts when they run out."""
    attempts, _ = retry_budget()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not transient(e):
                raise
            if attempt == attempts:
                cause = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
                raise StorageError(
                    f"{what}: {cause} (gave up after {attempts} attempts; raise SAMA_STORAGE_RETRIES or check "
                    "the storage endpoint)"
                ) from e
            delay = _retry_after(e)
            if delay is None:
                delay = min(10.0, 0.1 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            time.sleep(delay)
    raise AssertionError("unreachable")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None, attempts: int, timeout: float) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
        # Self-hosted S3 servers rarely support virtual-host addressing.
        kwargs["force_virtual_addressing"] = False
    kwargs.update(
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        connect_timeout=min(timeout, 10.0),
        request_timeout=timeout,
    )
    return pafs.S3FileSystem(**kwargs)


def _s3_client(endpoint: str | None):
    return _s3_client_with(endpoint, *retry_budget())


@functools.lru_cache(maxsize=8)
def _s3_client_with(endpoint: str | None, attempts: int, timeout: float):
    import boto3
    from botocore.config import Config

    config = Config(  # one attempt per call: with_retries is the one retry policy (and honours Retry-After)
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=min(timeout, 10.0),
        read_timeout=timeout,
        max_pool_connections=32,
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path inside it."""
    if is_s3(uri):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return _s3_filesystem(endpoint_url(), region, *retry_budget()), uri[len("s3://") :].rstrip("/")
    if "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r} (use a local path or s3://)")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def normalize(uri: str) -> str:
    """Absolute local paths (so tables stay valid from any working directory); s3:// as is."""
    if is_s3(uri):
        return uri.rstrip("/")
    archive, member = split_member(uri)
    path = os.path.abspath(os.path.expanduser(archive))
    return f"{path}{TAR_SEP}{member}" if member is not None else path


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def parent(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/")) if is_s3(uri) else os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return posixpath.basename(split_member(uri)[1] or uri.rstrip("/"))


def split_member(uri: str) -> tuple[str, str | None]:
    """``a.tar::m`` -> (``a.tar``, ``m``); any other URI -> (uri, None)."""
    if TAR_SEP in uri:
        archive, member = uri.split(TAR_SEP, 1)
        return archive, member
    return uri, None


def info(uri: str) -> pafs.FileInfo:
    """File, folder or not found (with size and mtime for a file); on S3 from validated calls."""
    return _info(uri)


def _info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    if not is_s3(uri):
        return fs.get_file_info(path)
    return _s3_info(uri)


def _s3_info(uri: str) -> pafs.FileInfo:
    """A validated HEAD, else "is anything under ``key/``" (one key listed). Through boto3, which
    fails on an answer cut short: pyarrow read a cut HEAD as size 0 and a cut listing as "not found",
    so a transient fault could make a job see an empty folder."""
    path = uri[len("s3://") :].rstrip("/")
    bucket, key = _bucket_key(uri.rstrip("/"))
    if key:
        try:
            size, mtime_ns = _s3_head_info(uri.rstrip("/"))
            return pafs.FileInfo(path, pafs.FileType.File, size=size, mtime_ns=mtime_ns)
        except FileNotFoundError:
            pass
    page = _s3_list_page(bucket, f"{key}/" if key else "", None, max_keys=1, delimiter=None)
    found = page.get("KeyCount", 0) > 0
    return pafs.FileInfo(path, pafs.FileType.Directory if found or not key else pafs.FileType.NotFound)


def _s3_list_page(bucket: str, prefix: str, token: str | None, max_keys: int = 1000, delimiter: str | None = None):
    """One ListObjectsV2 page, retried; an answer without its ``KeyCount`` (cut short) is an error."""
    args = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
    if token:
        args["ContinuationToken"] = token
    if delimiter:
        args["Delimiter"] = delimiter

    def page() -> dict:
        resp = _s3_client(endpoint_url()).list_objects_v2(**args)
        if "KeyCount" not in resp:
            raise ConnectionError(f"LIST s3://{bucket}/{prefix}: answer without KeyCount")
        return resp

    return with_retries(page, f"cannot list s3://{bucket}/{prefix}")


def exists(uri: str) -> bool:
    archive, member = split_member(uri)
    info = _info(archive)
    if info.type == pafs.FileType.NotFound:
        return False
    if member is None:
        return True
    return member in tar_members(archive)


def stamp(uri: str) -> str:
    """``<size>-<mtime ns>`` of a file (a tar member: of its archive), or "missing": what changes
    when the file is replaced, for names of outputs that must follow it."""
    target = split_member(uri)[0]
    info = _info(target)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    return f"{info.size}-{info.mtime_ns}"  # on S3 from a validated HEAD: a cut answer never renames outputs


# Files whose replacement changes what a model folder computes.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def tree_stamp(uri: str, suffix: str | tuple[str, ...] = WEIGHT_SUFFIXES) -> str:
    """A digest of every file under ``uri`` ending in ``suffix`` (of ``uri`` itself when it is a
    file), or "missing": what changes when any of them is rewritten, as retraining into the same
    folder does. Local files: size and mtime (ns). S3 objects: size and ETag, one listing (their
    Last-Modified has whole seconds, too coarse for a file rewritten at once with the same size).
    Not contents: a 14B folder is 28 GB."""
    if is_s3(uri):
        stamps = _s3_tree_stamps(uri, suffix)
    else:
        info = _info(split_member(uri)[0])
        if info.type == pafs.FileType.NotFound:
            return "missing"
        if info.type == pafs.FileType.File:
            return stamp(uri)
        root = normalize(uri).rstrip("/")
        stamps = [f"{f[len(root) :]}={stamp(f)}" for f in list_files(uri, suffix)]
    if stamps is None:
        return "missing"
    return content_digest(*stamps, n=16) if stamps else "empty"


def _s3_tree_stamps(uri: str, suffix: str | tuple[str, ...]) -> list[str] | None:
    """``<name>=<size>-<etag>`` of the object ``uri`` or of the objects under it ending in
    ``suffix``; None when there is neither."""
    bucket, key = _bucket_key(uri.rstrip("/"))
    out, token, found = [], None, False
    while True:
        page = _s3_list_page(bucket, key, token)
        for obj in page.get("Contents", []):
            name = obj["Key"]
            inside = name.startswith(f"{key}/") if key else True
            if name != key and not inside:
                continue  # a sibling sharing the prefix ("model.bin" beside "model")
            found = True
            if name == key or (name.endswith(suffix) and not _is_temp(name)):
                out.append(f"{name[len(key) :]}={obj['Size']}-{obj.get('ETag', '')}")
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return sorted(out) if found else None


def size(uri: str) -> int:
    archive, member = split_member(uri)
    if member is not None:
        return tar_members(archive)[member][1]
    if is_s3(uri):
        return _s3_head(uri)
    info = _info(uri)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    return int(info.size or 0)


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _s3_head(uri: str) -> int:
    return _s3_head_info(uri)[0]


def _s3_head_info(uri: str) -> tuple[int, int]:
    """(size, mtime in ns at the SDKs' millisecond resolution) from a HEAD botocore validates (a
    response cut inside its headers is an error, retried, never a size of 0); FileNotFoundError for
    a missing object."""
    bucket, key = _bucket_key(uri)

    def head() -> tuple[int, int]:
        try:
            resp = _s3_client(endpoint_url()).head_object(Bucket=bucket, Key=key)
            headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            if "content-length" not in headers:  # headers cut short: the connection's fault, not a size
                raise ConnectionError(f"HEAD {uri}: answer without Content-Length")
            return int(resp["ContentLength"]), round(resp["LastModified"].timestamp() * 1000) * 1_000_000
        except Exception as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise

    return with_retries(head, f"cannot read the size of {uri}")


def _s3_range(uri: str, start: int, length: int) -> bytes:
    """``length`` bytes at ``start``: one ranged GET, retried until it returns them all."""
    bucket, key = _bucket_key(uri)

    def get() -> bytes:
        resp = _s3_client(endpoint_url()).get_object(
            Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
        )
        data = resp["Body"].read()
        if len(data) != length:  # a body cut short: the connection's fault, not the object's
            raise ConnectionError(f"short read: {len(data)} of {length} bytes at {start}")
        return data

    return with_retries(get, f"cannot read {uri} (bytes {start}-{start + length - 1})")


def _s3_fetch(uri: str, byte_range: str | None) -> tuple[int, int, bytes]:
    """One GET (``byte_range`` e.g. ``bytes=0-1023`` or ``bytes=-1024``; None: the whole object)
    -> (object size, offset of the data, data). The size comes from Content-Range, so opening a
    file needs no HEAD; a body shorter than the headers promise is retried, never returned."""
    bucket, key = _bucket_key(uri)

    def get() -> tuple[int, int, bytes]:
        args = {"Bucket": bucket, "Key": key, **({"Range": byte_range} if byte_range else {})}
        try:
            resp = _s3_client(endpoint_url()).get_object(**args)
        except Exception as e:
            code = _code(e)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            if code in ("416", "InvalidRange"):  # a range of an empty object
                return 0, 0, b""
            raise
        span = resp.get("ContentRange")  # "bytes START-END/SIZE"; absent when the whole object came
        if span:
            first_last, _, total = span.removeprefix("bytes ").partition("/")
            first, _, last = first_last.partition("-")
            size, start, want = int(total), int(first), int(last) - int(first) + 1
        else:
            size = want = int(resp["ContentLength"])
            start = 0
        data = resp["Body"].read()
        if len(data) != want:  # a body cut short: the connection's fault, not the object's
            raise ConnectionError(f"short read: {len(data)} of {want} bytes at {start}")
        return size, start, data

    return with_retries(get, f"cannot read {uri}" + (f" ({byte_range})" if byte_range else ""))


class S3Reader(io.RawIOBase):
    """A seekable S3 object read in ranged GETs (wrap it in a BufferedReader). Opening it fetches
    the first block, or the last for formats read from their footer (Parquet): that answer also
    gives the size, so a small file is one request and a missing one fails at open."""

    def __init__(self, uri: str, from_end: bool = False):
        n = read_block()
        self.uri, self.pos = uri, 0
        self.size, self.cached_at, self.cached = _s3_fetch(uri, f"bytes=-{n}" if from_end else f"bytes=0-{n - 1}")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        lo = self.pos - self.cached_at
        if 0 <= lo and lo + n <= len(self.cached):
            data = self.cached[lo : lo + n]
        else:
            data = _s3_range(self.uri, self.pos, n)
        b[:n] = data
        self.pos += n
        return n


def read_block() -> int:
    return int(os.environ.get("SAMA_STORAGE_BLOCK") or 256 * 1024)


def list_files(uri: str, suffix: str | tuple[str, ...] = "", recursive: bool = True) -> list[str]:
    """Files under ``uri`` (sorted URIs), optionally only those ending in ``suffix``."""
    if is_s3(uri):
        return _s3_list_files(uri, suffix, recursive)
    fs, path = filesystem(uri)
    info = _info(uri)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    prefix = "s3://" if is_s3(uri) else ""
    out = [
        prefix + i.path
        for i in with_retries(lambda: fs.get_file_info(selector), f"cannot list {uri}")
        if i.type == pafs.FileType.File and i.path.endswith(suffix) and not _is_temp(i.path)
    ]
    return sorted(out)


def _s3_list_files(uri: str, suffix: str | tuple[str, ...], recursive: bool) -> list[str]:
    bucket, key = _bucket_key(uri.rstrip("/"))
    prefix = f"{key}/" if key else ""
    out, token = [], None
    while True:
        page = _s3_list_page(bucket, prefix, token, delimiter=None if recursive else "/")
        for obj in page.get("Contents", []):
            name = obj["Key"]
            if not name.endswith("/") and name.endswith(suffix) and not _is_temp(name):
                out.append(f"s3://{bucket}/{name}")
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return sorted(out)


def _is_temp(path: str) -> bool:
    return posixpath.basename(path).startswith(".tmp-")


def open_input(uri: str) -> IO[bytes]:
    """A seekable binary file for ``uri`` (tar members included)."""
    archive, member = split_member(uri)
    if member is not None and is_s3(archive):  # one ranged GET at the member's offset (headers read once)
        offset, n = tar_members(archive).get(member, (None, 0))
        if offset is None:
            raise FileNotFoundError(uri)
        return io.BytesIO(_s3_range(archive, offset, n) if n else b"")
    if member is not None:
        tf = _open_tar(archive)
        try:
            f = tf.extractfile(member)
        except KeyError:
            raise FileNotFoundError(uri) from None
        if f is None:
            raise StorageError(f"{uri}: tar member is not a regular file")
        return f
    if is_s3(uri):
        return io.BufferedReader(S3Reader(uri), buffer_size=read_block())
    fs, path = filesystem(uri)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(uri) from None
    except OSError as e:
        if "not found" in str(e).lower() or "does not exist" in str(e).lower():
            raise FileNotFoundError(uri) from None
        raise StorageError(f"cannot open {uri}: {e}") from e


def read_bytes(uri: str) -> bytes:
    if is_s3(uri) and TAR_SEP not in uri:
        return _s3_fetch(uri, None)[2]  # one GET, checked against its Content-Length
    with open_input(uri) as f:
        return f.read()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def _temp_name(path: str) -> str:
    d, b = posixpath.split(path)
    return posixpath.join(d, f".tmp-{uuid.uuid4().hex[:12]}-{b}")


def write_bytes(uri: str, data: bytes) -> None:
    """Atomically write ``data`` to ``uri``."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        # boto3 sends one PUT (or a multipart upload above 8 MiB): the object appears only
        # when complete. (pyarrow's S3 output stream misreads some servers' completion replies.)
        bucket, key = path.split("/", 1)
        client = _s3_client(endpoint_url())
        with_retries(lambda: client.upload_fileobj(io.BytesIO(data), bucket, key), f"cannot write {uri}")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to ``uri`` streaming (multi-GB weight shards never sit in memory)."""
    if not is_s3(uri):
        import shutil

        dest = filesystem(uri)[1]
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(dest))
        os.close(fd)
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, dest)
        return
    bucket, key = filesystem(uri)[1].split("/", 1)
    client = _s3_client(endpoint_url())  # multipart: visible when complete
    with_retries(lambda: client.upload_file(local_path, bucket, key), f"cannot upload {local_path} to {uri}")


def download_file(uri: str, local_path: str) -> None:
    """Copy ``uri`` to a local file, streaming (an S3 object: a ranged multipart download;
    a local file: a hard link when the filesystem allows, else a copy). Atomic."""
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(local_path)))
    os.close(fd)
    try:
        if is_s3(uri):
            bucket, key = filesystem(uri)[1].split("/", 1)
            client = _s3_client(endpoint_url())
            with_retries(lambda: client.download_file(bucket, key, tmp), f"cannot download {uri}")
        else:
            import shutil

            src = filesystem(uri)[1]
            if not os.path.exists(src):
                raise FileNotFoundError(uri)
            try:
                os.unlink(tmp)
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        os.replace(tmp, local_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_parquet(uri: str, table: pa.Table | Sequence[pa.Table], **kwargs) -> None:
    """Atomically write one Parquet file (visible only once complete). A list of tables
    (one schema) becomes one row group each, so readers can take them one by one."""
    buf = io.BytesIO()
    compression = kwargs.pop("compression", "zstd")
    if isinstance(table, pa.Table):
        pq.write_table(table, buf, compression=compression, **kwargs)
    else:
        with pq.ParquetWriter(buf, table[0].schema, compression=compression, **kwargs) as writer:
            for group in table:
                writer.write_table(group, row_group_size=max(group.num_rows, 1))
    write_bytes(uri, buf.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, or every ``*.parquet`` under a folder, as one table."""
    info = _info(uri)
    if info.type == pafs.FileType.File:
        return _read_parquet_file(uri, columns)
    files = list_files(uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"no Parquet files under {uri}")
    tables = [_read_parquet_file(f, columns) for f in files]
    return pa.concat_tables(tables, promote_options="default")


def _read_parquet_file(uri: str, columns: list[str] | None) -> pa.Table:
    if is_s3(uri):  # validated ranged reads, retried one by one
        with _s3_footer_first(uri) as f:
            return pq.read_table(f, columns=columns)
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def _s3_footer_first(uri: str) -> IO[bytes]:
    return io.BufferedReader(S3Reader(uri, from_end=True), buffer_size=read_block())


def read_row_group(uri: str, index: int, columns: list[str] | None = None) -> pa.Table:
    """Row group ``index`` of one Parquet file (reads only that group's byte ranges)."""
    with _s3_footer_first(uri) if is_s3(uri) else open_input(uri) as f:
        return pq.ParquetFile(f).read_row_group(index, columns=columns)


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    info = _info(uri)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def content_digest(*parts: str | bytes, n: int = 12) -> str:
    """A short stable hex digest (used to name shards by their content)."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:n]


# --- tar archives -------------------------------------------------------------------


def _open_tar(archive: str) -> tarfile.TarFile:
    if archive.endswith((".tar.gz", ".tgz")):
        raise StorageError(
            f"{archive}: compressed tar archives have no random access; extract them first "
            "or repack as plain .tar shards"
        )
    return tarfile.open(fileobj=open_input(archive), mode="r:")


@functools.lru_cache(maxsize=64)
def tar_members(archive: str) -> dict[str, tuple[int, int]]:
    """Regular members of an uncompressed tar: name -> (data offset, size). Reads headers only."""
    with _open_tar(archive) as tf:
        return {m.name: (m.offset_data, m.size) for m in tf.getmembers() if m.isfile()}


def iter_tar_members(archive: str) -> Iterator[str]:
    for name in tar_members(archive):
        yield f"{archive}{TAR_SEP}{name}"


def materialize(uri: str, cache_dir: str | None = None) -> str:
    """A local path holding ``uri``'s contents (a file or a whole folder).

    Local paths are returned as they are. ``s3://`` objects and prefixes are downloaded
    once into ``cache_dir`` (default ``$SAMA_CACHE`` or ``~/.cache/sama``), keyed by URI,
    so model weights in Hugging Face / diffusers layout can be loaded with
    ``from_pretrained(local_path)``.
    """
    if not is_s3(uri):
        return filesystem(uri)[1]
    import fcntl

    root = cache_dir or os.environ.get("SAMA_CACHE") or os.path.expanduser("~/.cache/sama")
    dest = os.path.join(root, content_digest(uri), basename(uri))
    done = dest + ".complete"
    if os.path.exists(done):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process per node downloads; the others wait, then reuse it
        if os.path.exists(done):
            return dest
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri)
        files = [uri] if info.type == pafs.FileType.File else list_files(uri)
        for f in files:
            rel = f[len(uri.rstrip("/")) + 1 :] if f != uri else ""
            download_file(f, os.path.join(dest, rel) if rel else dest)  # streamed to disk, not memory
        open(done, "w").close()
    return dest
