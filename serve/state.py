"""The edit tasks: every accepted edit request, its state and progress.

(The HTTP API calls a task a "job", as in ``X-Job-Id``; in the code a job is a YAML run.)
Task state lives outside the editor replicas, so a replica that dies takes no record
with it: the ingress sees the broken stream and retries or fails the task. The ingress
replica driving a task holds it here, in memory (live progress, the asyncio task); every
state change is also written to the results storage (serve/jobstore.py), so records
outlive the ingress and any ingress replica can answer for any job. The table bounds
the work in flight (``max_pending``: queued + running), which is what turns overload
into a clear 503 instead of an ever-growing queue.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from .security import RequestError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass
class EditTask:
    id: str
    instruction: str
    mode: str  # async | sync
    state: str = QUEUED
    progress: float = 0.0
    error: Optional[str] = None
    error_kind: Optional[str] = None  # timeout | busy | replica_died | edit_error | cancelled
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    replica: Optional[str] = None
    result: Optional[str] = None  # storage URI of the mp4
    video: dict[str, Any] = field(default_factory=dict)  # frames, height, width, fps of the result
    owner: Optional[str] = None  # the ingress replica driving it
    params: dict[str, Any] = field(default_factory=dict)  # the request, without its bytes
    attempts: int = 0  # times handed to the editor (a queued edit whose replica died is handed again)
    task: Any = field(default=None, repr=False)  # the asyncio task driving it

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def public(self) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in ("id", "state", "progress", "error", "created", "started", "finished", "replica")
        }
        out["instruction"] = self.instruction
        out["progress"] = round(self.progress, 4)
        if self.state == SUCCEEDED:
            out["video"] = self.video
        return out

    RECORD = (
        "id", "instruction", "mode", "state", "progress", "error", "error_kind", "created", "started",
        "finished", "replica", "result", "video", "owner", "params", "attempts",
    )  # fmt: skip

    def record(self) -> dict[str, Any]:
        """What is kept on storage (everything but the live asyncio task)."""
        return {k: getattr(self, k) for k in self.RECORD}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> EditTask:
        return cls(**{k: data[k] for k in cls.RECORD if k in data})


class EditTasks:
    def __init__(self, max_pending: int, keep_finished: int):
        self.max_pending = max_pending
        self.keep_finished = keep_finished
        self._jobs: OrderedDict[str, EditTask] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()  # finish order, for eviction

    @property
    def pending(self) -> int:
        return len(self._jobs) - len(self._finished)

    def admit(self, instruction: str, mode: str, retry_after_s: int) -> EditTask:
        """A new queued job, or 503 when ``max_pending`` edits are already in flight."""
        if self.pending >= self.max_pending:
            raise RequestError(
                503,
                f"the server is busy ({self.pending} edits in flight, the limit is {self.max_pending}); retry later",
                {"Retry-After": str(retry_after_s)},
            )
        job = EditTask(id=uuid.uuid4().hex, instruction=instruction, mode=mode)
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Optional[EditTask]:
        """The job if this replica holds it in memory (the storage has all of them)."""
        return self._jobs.get(job_id)

    def finish(self, job: EditTask, state: str, error: str | None = None, kind: str | None = None) -> bool:
        """Mark ``job`` terminal (False if it already was); the oldest finished jobs beyond
        ``keep_finished`` leave memory (their records stay on storage)."""
        if job.done:
            return False
        job.state, job.error, job.error_kind, job.finished = state, error, kind, time.time()
        if state == SUCCEEDED:
            job.progress = 1.0
        self._finished[job.id] = None
        while len(self._finished) > self.keep_finished:
            old, _ = self._finished.popitem(last=False)
            self._jobs.pop(old)
        return True

    def drop(self, job: EditTask) -> None:
        """Forget a job that was never handed to the editor (its record could not be written)."""
        self._jobs.pop(job.id, None)
        self._finished.pop(job.id, None)
