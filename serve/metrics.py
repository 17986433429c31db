"""Prometheus metrics, through Ray's metrics API (exported by every node's metrics agent).

Ray Serve already exports request counts, latencies and queue lengths per deployment;
these add what is specific to edits. Metric objects must be created inside the replica.
"""

from __future__ import annotations

import functools

from ray.serve import metrics

SECONDS = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800]


@functools.cache
def rejected() -> metrics.Counter:
    """One per process, reachable from the FastAPI error handler (which has no replica object)."""
    return metrics.Counter("sama_edit_rejected", "requests refused, by HTTP status", tag_keys=("status",))


class IngressMetrics:
    def __init__(self):
        self.requests = metrics.Counter("sama_edit_requests", "edit requests accepted", tag_keys=("mode",))
        self.finished = metrics.Counter(
            "sama_edit_jobs_finished", "edit jobs finished, by final state", tag_keys=("state",)
        )
        self.queue_seconds = metrics.Histogram(
            "sama_edit_queue_seconds", "time from accepted to started", boundaries=SECONDS
        )
        self.total_seconds = metrics.Histogram(
            "sama_edit_total_seconds", "time from accepted to finished", boundaries=SECONDS
        )
        self.pending = metrics.Gauge("sama_edit_pending", "edits queued or running")


class EditorMetrics:
    def __init__(self):
        self.seconds = metrics.Histogram(
            "sama_edit_compute_seconds", "decode + edit + encode time on a replica", boundaries=SECONDS
        )
        self.frames = metrics.Counter("sama_edit_frames", "frames edited")

    def observe(self, seconds: float, frames: int) -> None:
        self.seconds.observe(seconds)
        self.frames.inc(frames)
