"""Per-host politeness across the whole job: at most N downloads in flight and R starts/second.

:class:`HostGate` holds the counts. The job runs one as a Ray actor shared by every
task (so the limit is per host for the job, not per worker); tests and the benchmark
use it in-process. Its calls never block: ``try_acquire`` answers "go" (a token) or
"ask again in s seconds", so a full host can never tie up the actor and deadlock a
release. A token not released within ``lease_s`` (a killed worker) is reclaimed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class HostLimit:
    concurrency: int = 4  # downloads in flight to one host, across the whole job
    rate: float = 2.0  # request starts per second to one host (0: no rate limit)


@dataclass
class HostLimitsConfig:
    default: HostLimit = field(default_factory=HostLimit)
    hosts: dict[str, HostLimit] = field(default_factory=dict)  # e.g. {"127.0.0.1": {concurrency: 16, rate: 0}}
    lease_s: float = 3600.0  # a slot held longer than this is presumed lost and reclaimed

    def validate(self) -> None:
        for name, lim in {"default": self.default, **self.hosts}.items():
            if lim.concurrency < 1 or lim.rate < 0:
                raise ValueError(f"hosts.{name}: concurrency must be >= 1 and rate >= 0")

    def limit(self, host: str) -> HostLimit:
        # exact host, then its parent domains (www.youtube.com -> youtube.com)
        parts = host.split(".")
        for i in range(len(parts)):
            lim = self.hosts.get(".".join(parts[i:]))
            if lim is not None:
                return lim
        return self.default


class HostGate:
    def __init__(self, cfg: HostLimitsConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, float]] = {}
        self._next_start: dict[str, float] = {}
        self._peak: dict[str, int] = {}

    def try_acquire(self, host: str) -> tuple[str | None, float]:
        """(token, 0) when a download may start now, else (None, seconds to wait)."""
        lim = self.cfg.limit(host)
        with self._lock:
            now = time.monotonic()
            held = self._held.setdefault(host, {})
            for tok, t0 in list(held.items()):
                if now - t0 > self.cfg.lease_s:
                    del held[tok]
            if len(held) >= lim.concurrency:
                return None, 0.02
            nxt = self._next_start.get(host, 0.0)
            if lim.rate > 0 and now < nxt:
                return None, nxt - now
            tok = uuid.uuid4().hex
            held[tok] = now
            if lim.rate > 0:
                self._next_start[host] = max(now, nxt) + 1.0 / lim.rate
            self._peak[host] = max(self._peak.get(host, 0), len(held))
            return tok, 0.0

    def release(self, host: str, token: str) -> None:
        with self._lock:
            self._held.get(host, {}).pop(token, None)

    def peak(self) -> dict[str, int]:
        """Most downloads ever in flight per host (for tests and logs)."""
        with self._lock:
            return dict(self._peak)


class Gate:
    """The client side: a context manager per download, over a local gate or its Ray actor."""

    def __init__(self, backend):
        self.backend = backend
        self.remote = hasattr(backend.try_acquire, "remote")

    def _call(self, name: str, *args):
        fn = getattr(self.backend, name)
        if self.remote:
            import ray

            return ray.get(fn.remote(*args))
        return fn(*args)

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        while True:
            token, wait = self._call("try_acquire", host)
            if token is not None:
                break
            time.sleep(min(max(wait, 0.005), 1.0))
        try:
            yield
        finally:
            self._call("release", host, token)


def start_gate_actor(cfg: HostLimitsConfig):
    """The job-wide gate as a Ray actor (no CPU reserved: it only counts)."""
    import ray

    return ray.remote(num_cpus=0)(HostGate).remote(cfg)
