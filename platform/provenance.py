"""Where data came from and under which terms: licenses, code version, input digests.

The license of each dataset is a fact with a source (its card), overridable in config
(``ingest.licenses.overrides``); ``allow`` / ``deny`` glob patterns over license ids decide
which datasets a run may use (e.g. ``deny: ["*-ND*"]`` keeps no-derivatives data out of
training), applied at ingest where every excluded sample is counted, never dropped silently.

Every job output records in its ``summary.json`` a ``provenance`` block (:func:`record`): the
job, its config digest, the code version, and each input URI with a digest of what was read
there (file names, sizes and modification times), so ``sama lineage`` can walk an output back
to the raw datasets and a changed input or setting shows up as a changed digest.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from sama import storage


@dataclass(frozen=True)
class License:
    id: str  # SPDX where one exists
    source: str  # where the fact comes from


CARD = "{} dataset card, as recorded in DATASETS.md (late 2026)"
LICENSES: dict[str, License] = {
    "koala36m": License("HD-VILA-terms", CARD.format("Koala-36M")),
    "motionbench": License("CC-BY-NC-SA-4.0", CARD.format("MotionBench")),
    "ditto1m": License("CC-BY-NC-SA-4.0", CARD.format("Ditto-1M")),
    "openve3m": License("CC-BY-NC-4.0", CARD.format("OpenVE-3M")),
    "reco": License("CC-BY-NC-SA-4.0", CARD.format("ReCo-Data")),
    "nhr_edit": License("Apache-2.0", CARD.format("NHR-Edit")),
    "gpt_image_edit": License("CC-BY-4.0", CARD.format("GPT-Image-Edit-1.5M")),
    "x2edit": License("Apache-2.0", CARD.format("X2Edit")),
    "pico_banana": License("CC-BY-NC-ND-4.0", CARD.format("Pico-Banana-400K")),
}
UNKNOWN = "unknown"


@dataclass
class LicenseConfig:
    overrides: dict[str, str] = field(default_factory=dict)  # dataset -> license id (e.g. a negotiated one)
    allow: list[str] = field(default_factory=list)  # glob patterns over license ids; empty: any
    deny: list[str] = field(default_factory=list)  # glob patterns, e.g. ["*-ND*"] for training sets

    def license_of(self, dataset: str) -> License:
        if dataset in self.overrides:
            return License(self.overrides[dataset], "config: ingest.licenses.overrides")
        return LICENSES.get(dataset, License(UNKNOWN, "not in sama.provenance.LICENSES"))

    def excluded(self, license_id: str) -> Optional[str]:
        """Why a license is not allowed (naming the rule), or None."""
        for pattern in self.deny:
            if fnmatch.fnmatch(license_id, pattern):
                return f"license {license_id} matches ingest.licenses.deny {pattern!r}"
        if self.allow and not any(fnmatch.fnmatch(license_id, p) for p in self.allow):
            return f"license {license_id} matches none of ingest.licenses.allow {self.allow}"
        return None


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit (``+dirty`` with uncommitted changes) when run
    from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("sama-platform")
    except PackageNotFoundError:
        v = "0"
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if sha:
            dirty = subprocess.run(
                ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            v += f"+g{sha}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def input_digest(uri: str) -> str:
    """A digest of what is at ``uri``: a file's size and mtime, or every file under a folder
    (relative name, size, mtime); "missing" when nothing is there."""
    if not uri:
        return "missing"
    try:
        info = storage.info(storage.split_member(uri)[0])
    except Exception:  # noqa: BLE001 - e.g. no credentials for that bucket here: the digest says so
        return "unreadable"
    if info.type.name == "NotFound":
        return "missing"
    if info.type.name == "File":
        return storage.content_digest(storage.stamp(uri), n=16)
    files = [f for f in storage.list_files(uri) if "/_work/" not in f and "/_cache/" not in f]
    return storage.content_digest(*(f"{f[len(uri) :]}={storage.stamp(f)}" for f in files), n=16)


def record(job: str, config_digest: str, inputs: Iterable[str | tuple[str, str]], **extra: Any) -> dict[str, Any]:
    """The ``provenance`` block of a summary (or a model card). ``inputs``: URIs (digested
    here) or (URI, digest) pairs from a stage that knows better what it read."""
    pairs = dict(i if isinstance(i, tuple) else (i, None) for i in inputs if i)
    return {
        "job": job,
        "config_digest": config_digest,
        "code_version": code_version(),
        "inputs": [{"uri": u, "digest": d or input_digest(u)} for u, d in pairs.items()],
        **extra,
    }
