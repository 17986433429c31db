"""Uploaded bytes as a file for the readers (decoding and mp4 encoding live in ``sama.media``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def local_file(data: bytes, suffix: str = ".mp4") -> Iterator[str]:
    """Uploaded bytes as a temporary file (PyAV and the probes read paths), removed after."""
    fd, path = tempfile.mkstemp(prefix="sama-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
