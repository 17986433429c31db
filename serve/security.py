"""What a request may touch: bearer tokens, and source URIs confined to allowed places.

A ``uri`` in a request is never fetched as given. Only two kinds pass:

- a local file (a plain absolute path or ``file:///...``) whose *real* path (symlinks
  resolved) lies under one of ``limits.allowed_roots``;
- ``s3://BUCKET/KEY`` with ``BUCKET`` in ``limits.allowed_buckets``.

Everything else (http(s)://, any other scheme, relative paths, ``..`` segments, tar
members, control characters) is refused before any I/O, so the service cannot be
turned into a proxy to the metadata server or a reader of ``/etc``.
"""

from __future__ import annotations

import hmac
import os
import posixpath

from sama.storage import TAR_SEP

from .settings import LimitsConfig

MAX_URI_CHARS = 2048


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def forbidden(message: str) -> RequestError:
    return RequestError(403, message)


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time; no token configured: open."""
    if not token:
        return True
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[len("Bearer ") :].strip().encode(), token.encode())


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_source_uri(uri: str, limits: LimitsConfig) -> str:
    """The URI to read for a request's ``uri``, or :class:`RequestError` (403/404/400)."""
    uri = (uri or "").strip()
    if not uri:
        raise RequestError(400, "uri is empty")
    if len(uri) > MAX_URI_CHARS or any(ord(c) < 32 or c == "\x7f" for c in uri):
        raise RequestError(400, "uri is too long or has control characters")
    if TAR_SEP in uri:
        raise forbidden("tar-member URIs are not accepted")
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "s3":
        return _s3(uri, limits)
    if scheme == "file":
        rest = uri[len("file://") :]
        if not rest.startswith("/"):  # file://host/path: a remote host
            raise forbidden("file URIs must be file:///absolute/path")
        return _local(rest, limits)
    if scheme or ":" in uri.split("/", 1)[0]:
        raise forbidden(f"scheme {scheme or uri.split(':', 1)[0]!r} is not allowed: use s3:// or a local path")
    return _local(uri, limits)


def _s3(uri: str, limits: LimitsConfig) -> str:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if bucket not in limits.allowed_buckets:
        raise forbidden(f"bucket {bucket!r} is not allowed")
    parts = key.split("/")
    if not key or key.endswith("/") or any(p in ("", ".", "..") for p in parts):
        raise forbidden("the s3 key must name an object, without empty, '.' or '..' segments")
    return f"s3://{bucket}/{key}"


def _local(path: str, limits: LimitsConfig) -> str:
    if not os.path.isabs(path):
        raise forbidden("local paths must be absolute")
    if ".." in path.split("/"):
        raise forbidden("'..' is not allowed in paths")
    roots = [os.path.realpath(r) for r in limits.allowed_roots]
    if not roots:
        raise forbidden("no local roots are allowed on this server")
    # Check the lexical path first (so an outsider learns nothing about files outside the
    # roots), then the real one (a symlink inside a root must not lead out of it).
    lexical = posixpath.normpath(path)
    if not any(_within(lexical, r) for r in {*roots, *(os.path.abspath(r) for r in limits.allowed_roots)}):
        raise forbidden("path is outside the allowed roots")
    real = os.path.realpath(path)
    if not any(_within(real, r) for r in roots):
        raise forbidden("path resolves outside the allowed roots")
    if not os.path.isfile(real):
        raise RequestError(404, "no such file under the allowed roots")
    return real
