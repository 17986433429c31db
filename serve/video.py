"""Video in and out of the service: source frames through ``sama.media``, results as H.264 mp4 bytes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

# The clip reader and the one mp4 writer live in the core (the evaluation job uses them too).
from sama.media import encode_mp4  # noqa: F401
from sama.media import read_clip as read_source  # noqa: F401


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
