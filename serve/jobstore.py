"""Job records on the results storage: one JSON file per edit, beside its result mp4.

Why there: a record must outlive the ingress replica that accepted the edit, be readable
by every ingress replica, and go away together with the result it describes. The results
storage (a local folder, or ``s3://`` on a cluster) is already shared by whoever serves the
results, survives restarts of any process, and needs no extra service to run; one small
object per state change (accepted, started, finished) is cheap next to a minutes-long edit.

Layout under ``results``::

    jobs/<id>.json        the record (EditTask.record())
    jobs/<id>.cancel      a cancel asked of a replica that does not own the job
    ingress/<owner>.json  each ingress replica's heartbeat (its lease)
    <id>.mp4              the result

An unfinished record whose owner's heartbeat is older than ``lease_s`` belongs to an
ingress that died: its edit stream died with it, so the record reads as failed (and is
rewritten so), never as forever "running".
"""

from __future__ import annotations

import json
import logging
import re
import time

from sama import storage

from .state import FAILED, EditTask

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex: nothing else may reach a storage path
OWNER_LOST = "ingress_lost"


class JobStore:
    def __init__(self, root: str, owner: str, lease_s: float):
        self.root = root
        self.owner = owner
        self.lease_s = lease_s

    def _record(self, job_id: str) -> str:
        return storage.join(self.root, "jobs", f"{job_id}.json")

    def _lease(self, owner: str) -> str:
        return storage.join(self.root, "ingress", f"{owner}.json")

    def save(self, job: EditTask) -> None:
        storage.write_text(self._record(job.id), json.dumps(job.record()))

    def load(self, job_id: str) -> EditTask | None:
        """The record of ``job_id``, or None (unknown id, malformed id, or deleted by retention)."""
        if not JOB_ID.match(job_id):
            return None
        try:
            data = json.loads(storage.read_text(self._record(job_id)))
        except FileNotFoundError:
            return None
        job = EditTask.from_record(data)
        if not job.done and job.owner != self.owner and not self.alive(job.owner):
            job.state, job.error_kind, job.finished = FAILED, OWNER_LOST, time.time()
            job.error = "the ingress replica that accepted this edit stopped while it was in flight; resubmit it"
            self.save(job)
        return job

    # ---------------------------------------------------------------- leases and cancels

    def heartbeat(self) -> None:
        storage.write_text(self._lease(self.owner), json.dumps({"owner": self.owner, "time": time.time()}))

    def alive(self, owner: str | None) -> bool:
        if not owner:
            return False
        try:
            beat = json.loads(storage.read_text(self._lease(owner)))["time"]
        except (FileNotFoundError, ValueError, KeyError):
            return False
        return time.time() - float(beat) < self.lease_s

    def request_cancel(self, job_id: str) -> None:
        storage.write_text(storage.join(self.root, "jobs", f"{job_id}.cancel"), str(time.time()))

    def cancel_requested(self, job_id: str) -> bool:
        return storage.exists(storage.join(self.root, "jobs", f"{job_id}.cancel"))

    # ---------------------------------------------------------------- retention

    def sweep(self, retention_s: float, now: float | None = None) -> int:
        """Delete finished records older than ``retention_s`` with their results and cancel
        markers, and leases of replicas long gone; returns how many jobs went."""
        now = time.time() if now is None else now
        gone = 0
        for uri in storage.list_files(storage.join(self.root, "jobs"), ".json", recursive=False):
            try:
                job = EditTask.from_record(json.loads(storage.read_text(uri)))
            except FileNotFoundError:  # another replica swept it first
                continue
            except ValueError:
                log.warning("job record %s is not valid JSON; left in place", uri)
                continue
            if not job.done or job.finished is None or now - job.finished < retention_s:
                continue
            for path in (job.result, storage.join(self.root, "jobs", f"{job.id}.cancel"), uri):
                if path:
                    storage.delete(path)
            gone += 1
        for uri in storage.list_files(storage.join(self.root, "ingress"), ".json", recursive=False):
            try:
                beat = float(json.loads(storage.read_text(uri))["time"])
            except (FileNotFoundError, ValueError, KeyError):
                continue
            if now - beat > max(retention_s, 10 * self.lease_s):
                storage.delete(uri)
        return gone
