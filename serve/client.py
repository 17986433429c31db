"""A small client of the edit API (behind ``sama edit``, the demo and the tests)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

TOKEN_ENV = "SAMA_SERVE_TOKEN"


class EditError(RuntimeError):
    """The service refused a request or the edit failed; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None, job: dict | None = None):
        super().__init__(message)
        self.status = status
        self.job = job


@dataclass
class EditOptions:
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    source_guidance_scale: float | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None

    def fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}


class EditClient:
    def __init__(self, endpoint: str, token: str | None = None, timeout: float = 60.0):
        self.base = endpoint.rstrip("/") + "/"
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "EditClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _check(resp: httpx.Response) -> httpx.Response:
        if resp.is_success:
            return resp
        try:
            message = resp.json().get("error") or resp.text
        except ValueError:
            message = resp.text
        raise EditError(f"HTTP {resp.status_code}: {message}", resp.status_code)

    def _send(self, path: str, source: str, instruction: str, options: EditOptions, remote: bool) -> httpx.Response:
        data = {"instruction": instruction, **options.fields()}
        if remote:  # a path or s3:// URI the server reads itself (only under its allowed roots/buckets)
            return self.http.post(path, data={**data, "uri": source})
        with open(source, "rb") as f:
            return self.http.post(path, data=data, files={"video": (os.path.basename(source), f, "video/mp4")})

    def submit(
        self, source: str, instruction: str, options: EditOptions = EditOptions(), remote: bool = False
    ) -> dict[str, Any]:
        """Upload (or name, with ``remote``) a source; returns the new job (its ``id``)."""
        return self._check(self._send("v1/edits", source, instruction, options, remote)).json()

    def status(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"v1/edits/{job_id}")).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.delete(f"v1/edits/{job_id}")).json()

    def result(self, job_id: str) -> bytes:
        return self._check(self.http.get(f"v1/edits/{job_id}/result")).content

    def wait(
        self,
        job_id: str,
        poll_s: float = 0.5,
        timeout_s: float = 3600.0,
        on_progress: Callable[[dict], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; raises :class:`EditError` unless it succeeded."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.status(job_id)
            if on_progress:
                on_progress(job)
            if job["state"] == "succeeded":
                return job
            if job["state"] in ("failed", "cancelled"):
                raise EditError(f"edit {job_id} {job['state']}: {job.get('error')}", job=job)
            if time.monotonic() > deadline:
                raise EditError(f"edit {job_id} still {job['state']} after {timeout_s:g}s", job=job)
            time.sleep(poll_s)

    def edit(
        self,
        source: str,
        instruction: str,
        output: str,
        options: EditOptions = EditOptions(),
        remote: bool = False,
        on_progress: Callable[[dict], None] | None = None,
    ) -> dict[str, Any]:
        """Submit, wait, download to ``output``; returns the finished job."""
        job = self.submit(source, instruction, options, remote)
        job = self.wait(job["id"], on_progress=on_progress)
        with open(output, "wb") as f:
            f.write(self.result(job["id"]))
        return job

    def edit_sync(
        self, source: str, instruction: str, options: EditOptions = EditOptions(), remote: bool = False
    ) -> bytes:
        """The synchronous endpoint (short clips): the mp4 bytes."""
        return self._check(self._send("v1/edit", source, instruction, options, remote)).content
