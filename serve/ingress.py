"""The HTTP front (a CPU deployment): auth, input checks, the job table, the web page.

Endpoints (all under the application's route prefix; ``/v1/*`` need the bearer token)::

    GET    /                      the web page
    GET    /healthz               liveness + queue depth (no auth: for probes)
    POST   /v1/edits              multipart: video (file) or uri, instruction, options -> 202 {id, ...}
    GET    /v1/edits/{id}         state, progress, error
    GET    /v1/edits/{id}/result  the edited mp4 (409 until it succeeded)
    DELETE /v1/edits/{id}         cancel
    POST   /v1/edit               synchronous, short clips: the mp4 in the response

An accepted edit is handed to the editor deployment at once; the handle queues it
until a replica is free (which is also what the autoscaler counts). A driver task
per job follows the editor's event stream and applies timeouts and cancellation.
"""

# No `from __future__ import annotations`: FastAPI must see real types (Request) on the routes.
import asyncio
import logging
import os
import tempfile
import time
from importlib import resources
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile

from sama import media, storage

from .inputs import FIELDS, EditRequest, check_media, parse_params, upload_suffix
from .metrics import IngressMetrics, rejected
from .security import RequestError, bearer_ok, resolve_source_uri
from .settings import IngressSettings
from .state import CANCELLED, FAILED, RUNNING, SUCCEEDED, EditTask, EditTasks
from .video import local_file

log = logging.getLogger(__name__)

api = FastAPI(title="SAMA video edit", docs_url=None, redoc_url=None, openapi_url=None)

# HTTP status of a failed synchronous edit, by what went wrong.
SYNC_STATUS = {"timeout": 504, "busy": 503, "replica_died": 502, "edit_error": 422, "cancelled": 499}


@api.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    rejected().inc(tags={"status": str(exc.status)})
    return JSONResponse({"error": exc.message, "status": exc.status}, exc.status, headers=exc.headers)


def _page() -> str:
    return resources.files("sama.serve").joinpath("static/index.html").read_text(encoding="utf-8")


@serve.deployment(name="Ingress", num_replicas=1)
@serve.ingress(api)
class Ingress:
    def __init__(self, editor: DeploymentHandle, cfg: IngressSettings, token: str | None):
        self.editor = editor.options(stream=True)
        self.cfg = cfg
        self.token = token
        self.table = EditTasks(cfg.queue.max_pending, cfg.queue.keep_finished)
        self.results = cfg.results or os.path.join(tempfile.gettempdir(), f"sama-serve-{cfg.name}")
        self.page = _page()
        self.metrics = IngressMetrics()

    # ------------------------------------------------------------------ plumbing

    def _auth(self, request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), self.token):
            raise RequestError(
                401, "missing or wrong bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"}
            )

    async def _read_body(self, request: Request) -> None:
        """Read the body with a hard size cap (a lying or absent Content-Length cannot get past it)."""
        cap = self.cfg.limits.max_upload_bytes + 64 * 1024  # room for the other form fields
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            raise RequestError(413, f"the upload is larger than {self.cfg.limits.max_upload_mb:g} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise RequestError(413, f"the upload is larger than {self.cfg.limits.max_upload_mb:g} MB")
        request._body = bytes(body)  # Starlette's form parser reads this instead of the spent stream

    async def _parse(self, request: Request, sync: bool) -> EditRequest:
        """Auth -> size cap -> form -> parameters -> the source vetted and probed."""
        self._auth(request)
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise RequestError(415, "send the edit as multipart/form-data (fields: video or uri, instruction, ...)")
        await self._read_body(request)
        try:
            form = await request.form(max_files=1, max_fields=len(FIELDS))
        except Exception as e:  # Starlette raises its own (multipart) errors for malformed bodies
            raise RequestError(400, f"malformed form body: {e}") from None
        try:
            req = parse_params(form, self.cfg, sync)
            upload, uri = form.get("video"), form.get("uri")
            if (upload is None) == (uri is None):
                raise RequestError(400, "give exactly one source: a 'video' file or a 'uri'")
            if upload is not None:
                if not isinstance(upload, UploadFile):
                    raise RequestError(400, "'video' must be a file part")
                req.source_bytes = await upload.read()
                if not req.source_bytes:
                    raise RequestError(400, "the uploaded file is empty")
                if len(req.source_bytes) > self.cfg.limits.max_upload_bytes:
                    raise RequestError(413, f"the upload is larger than {self.cfg.limits.max_upload_mb:g} MB")
                req.source_suffix = upload_suffix(upload.filename)
                info = await asyncio.to_thread(self._probe_bytes, req.source_bytes, req.source_suffix)
            else:
                if not isinstance(uri, str):
                    raise RequestError(400, "'uri' must be a plain form field")
                req.source_uri = resolve_source_uri(uri, self.cfg.limits)
                info = await asyncio.to_thread(self._probe_uri, req.source_uri)
        finally:
            await form.close()  # spooled upload parts
        check_media(info, self.cfg)
        req.fps = info.fps if info.fps > 0 else 16.0
        return req

    @staticmethod
    def _probe_bytes(data: bytes, suffix: str) -> media.MediaInfo:
        with local_file(data, suffix) as path:
            try:
                return media.probe(path)
            except media.MediaError as e:
                raise RequestError(422, f"not a readable video or image ({e.reason})") from None

    def _probe_uri(self, uri: str) -> media.MediaInfo:
        try:
            if storage.size(uri) > self.cfg.limits.max_upload_bytes:
                raise RequestError(413, f"the source is larger than {self.cfg.limits.max_upload_mb:g} MB")
            return media.probe(uri)
        except FileNotFoundError:
            raise RequestError(404, "no such source object") from None
        except media.MediaError as e:
            status = 404 if e.reason == "missing_file" else 422
            raise RequestError(status, f"not a readable video or image ({e.reason})") from None

    def _finish(self, job: EditTask, state: str, error: str | None = None, kind: str | None = None) -> None:
        for old in self.table.finish(job, state, error, kind):
            if old.result:
                try:
                    storage.delete(old.result)
                except Exception:  # a result already gone is fine
                    log.warning("could not delete %s", old.result)
        self.metrics.finished.inc(tags={"state": state})
        self.metrics.total_seconds.observe(job.finished - job.created)
        self.metrics.pending.set(self.table.pending)
        if error:
            log.info("job %s %s: %s", job.id, state, error)

    async def _drive(self, job: EditTask, req: EditRequest) -> dict[str, Any] | None:
        """Follow one edit on the editor to its end; the job always ends terminal (never lost)."""
        q = self.cfg.queue
        stream = self.editor.edit.remote(req)
        deadline, phase = time.monotonic() + q.queue_timeout_s, "waiting for a free replica"
        try:
            while True:
                try:
                    event = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    stream.cancel()
                    self._finish(job, FAILED, f"timed out {phase}", "timeout")
                    return None
                except StopAsyncIteration:
                    self._finish(job, FAILED, "the editor ended the stream without a result", "edit_error")
                    return None
                kind = event["event"]
                if kind == "started":
                    job.state, job.started, job.replica = RUNNING, time.time(), event["replica"]
                    self.metrics.queue_seconds.observe(job.started - job.created)
                    deadline, phase = time.monotonic() + q.run_timeout_s, f"running (limit {q.run_timeout_s:g}s)"
                elif kind == "progress":
                    job.progress = max(job.progress, float(event["progress"]))
                elif kind == "error":
                    self._finish(job, FAILED, event["message"], event.get("kind", "edit_error"))
                    return None
                elif kind == "done":
                    job.video = {k: event[k] for k in ("frames", "height", "width", "fps", "seconds")}
                    if job.mode == "async":
                        job.result = storage.join(self.results, f"{job.id}.mp4")
                        await asyncio.to_thread(storage.write_bytes, job.result, event["video"])
                    self._finish(job, SUCCEEDED)
                    return event
        except asyncio.CancelledError:  # DELETE, or the client of a synchronous call went away
            stream.cancel()
            self._finish(job, CANCELLED, "cancelled", "cancelled")
            return None
        except BackPressureError:
            self._finish(job, FAILED, "the editor queue is full; retry later", "busy")
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, RequestCancelledError) as e:
            # The replica died mid-edit (Serve starts a new one); say so instead of losing the job.
            self._finish(
                job,
                FAILED,
                f"the editor replica running this edit died ({type(e).__name__}); resubmit it",
                "replica_died",
            )
        except Exception as e:
            log.exception("job %s", job.id)
            self._finish(job, FAILED, f"{type(e).__name__}: {e}", "edit_error")
        return None

    def _admit(self, req: EditRequest, mode: str) -> EditTask:
        job = self.table.admit(req.instruction, mode, self.cfg.queue.retry_after_s)
        self.metrics.requests.inc(tags={"mode": mode})
        self.metrics.pending.set(self.table.pending)
        log.info("job %s accepted (%s): %s", job.id, mode, req.describe())
        return job

    # ------------------------------------------------------------------ endpoints

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "pending": self.table.pending, "max_pending": self.table.max_pending}

    @api.post("/v1/edits", status_code=202)
    async def submit(self, request: Request) -> JSONResponse:
        req = await self._parse(request, sync=False)
        job = self._admit(req, "async")
        job.task = asyncio.create_task(self._drive(job, req))
        return JSONResponse(job.public(), 202, headers={"Location": f"v1/edits/{job.id}"})

    @api.get("/v1/edits/{job_id}")
    async def status(self, job_id: str, request: Request) -> dict[str, Any]:
        self._auth(request)
        return self.table.get(job_id).public()

    @api.get("/v1/edits/{job_id}/result")
    async def result(self, job_id: str, request: Request) -> Response:
        self._auth(request)
        job = self.table.get(job_id)
        if job.state != SUCCEEDED or not job.result:
            raise RequestError(409, f"job {job_id} is {job.state}; the result exists once it has succeeded")
        data = await asyncio.to_thread(storage.read_bytes, job.result)
        return Response(
            data, media_type="video/mp4", headers={"Content-Disposition": f'inline; filename="{job.id}.mp4"'}
        )

    @api.delete("/v1/edits/{job_id}")
    async def cancel(self, job_id: str, request: Request) -> dict[str, Any]:
        self._auth(request)
        job = self.table.get(job_id)
        if not job.done and job.task is not None:
            job.task.cancel()
            await asyncio.wait({job.task})
        return job.public()

    @api.post("/v1/edit")
    async def edit_sync(self, request: Request) -> Response:
        req = await self._parse(request, sync=True)
        job = self._admit(req, "sync")
        done = await self._drive(job, req)
        if done is None:
            status = SYNC_STATUS.get(job.error_kind or "", 500)
            raise RequestError(
                status,
                job.error or "the edit failed",
                {"Retry-After": str(self.cfg.queue.retry_after_s)} if status == 503 else None,
            )
        return Response(done["video"], media_type="video/mp4", headers={"X-EditTask-Id": job.id})
