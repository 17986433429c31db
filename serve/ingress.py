"""The HTTP front (no GPU, 0 CPUs reserved): auth, input checks, job records, the web page.

Endpoints (all under the application's route prefix; ``/v1/*`` need the bearer token)::

    GET    /                      the web page
    GET    /healthz               liveness + queue depth (no auth: for probes)
    GET    /v1/model              the served checkpoint and its model card (data, licenses, evaluations)
    POST   /v1/edits              multipart: video (file) or uri, instruction, options -> 202 {id, ...}
    GET    /v1/edits/{id}         state, progress, error
    GET    /v1/edits/{id}/result  the edited mp4 (409 until it succeeded)
    DELETE /v1/edits/{id}         cancel
    POST   /v1/edit               synchronous, short clips: the mp4 in the response

An accepted edit is handed to the editor deployment at once; the handle queues it
until a replica is free (which is also what the autoscaler counts). A driver task
per job follows the editor's event stream and applies timeouts and cancellation; an
edit whose replica died before starting it is handed to another replica. Every state
change is written to the job's record on the results storage (serve/jobstore.py).

Request bodies stream through a size cap into spooled temporary files (never whole in
memory), at most ``limits.max_concurrent_uploads`` at once; an accepted upload then sits
in Ray's object store, not in this process, until its edit ends.
"""

# No `from __future__ import annotations`: FastAPI must see real types (Request) on the routes.
import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from importlib import resources
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from python_multipart.multipart import parse_options_header
from ray import serve
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from sama import media, storage

from .inputs import FIELDS, EditRequest, check_media, parse_params, upload_suffix
from .jobstore import JobStore
from .metrics import IngressMetrics, rejected
from .security import RequestError, bearer_ok, resolve_source_uri
from .settings import IngressSettings
from .state import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, EditTask, EditTasks

log = logging.getLogger(__name__)

api = FastAPI(title="SAMA video edit", docs_url=None, redoc_url=None, openapi_url=None)

# HTTP status of a failed synchronous edit, by what went wrong.
SYNC_STATUS = {
    "timeout": 504,
    "busy": 503,
    "replica_died": 502,
    "storage_error": 502,
    "edit_error": 422,
    "cancelled": 499,
}
MAX_ATTEMPTS = 3  # hand a queued edit to the editor this often when replicas die under it
PROGRESS_SAVE_S = 5.0  # progress reaches the stored record at most this often
REPLICA_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, RequestCancelledError)


@api.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    rejected().inc(tags={"status": str(exc.status)})
    return JSONResponse({"error": exc.message, "status": exc.status}, exc.status, headers=exc.headers)


@api.exception_handler(Exception)
async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    rejected().inc(tags={"status": "500"})
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500}, 500)


class EventStream:
    """The editor's event stream, awaited in slices without losing an event between them."""

    def __init__(self, stream):
        self.stream = stream
        self._next: asyncio.Future | None = None

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None after ``timeout`` (the pending read carries over)."""
        if self._next is None:
            self._next = asyncio.ensure_future(self.stream.__anext__())
        done, _ = await asyncio.wait({self._next}, timeout=timeout)
        if not done:
            return None
        fut, self._next = self._next, None
        return fut.result()

    def cancel(self) -> None:
        if self._next is not None:
            self._next.cancel()
        self.stream.cancel()


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Serve (direct use in tests)
        return f"pid-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class BodyMeter:
    """The ASGI ``receive`` of a request, counted: refuses a body over ``cap`` while it streams
    (a lying or absent Content-Length cannot get past it) and keeps its last bytes."""

    def __init__(self, receive, cap: int, limit_mb: float):
        self.receive, self.cap, self.limit_mb = receive, cap, limit_mb
        self.received = 0
        self.tail = b""

    async def __call__(self):
        message = await self.receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self.cap:
                raise RequestError(413, f"the upload is larger than {self.limit_mb:g} MB")
            self.tail = (self.tail + chunk)[-1024:]
        return message

    def multipart_complete(self, content_type: str) -> bool:
        boundary = parse_options_header(content_type)[1].get(b"boundary", b"")
        return bool(boundary) and b"--" + boundary + b"--" in self.tail


def _page(cfg: IngressSettings) -> str:
    """The web page, showing the served sampling defaults (a user may ask for fewer steps)."""
    html = resources.files("sama.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return html.replace("__STEPS__", str(cfg.steps)).replace("__GUIDANCE__", f"{cfg.guidance_scale:g}")


@serve.deployment(name="Ingress", num_replicas=1)
@serve.ingress(api)
class Ingress:
    def __init__(self, editor: DeploymentHandle, cfg: IngressSettings, token: str | None):
        self.editor = editor.options(stream=True)
        self.cfg = cfg
        self.token = token
        self.table = EditTasks(cfg.queue.max_pending, cfg.queue.keep_finished)
        self.results = cfg.results or os.path.join(tempfile.gettempdir(), f"sama-serve-{cfg.name}")
        self.store = JobStore(self.results, _replica_id(), cfg.records.lease_s)
        self.page = _page(cfg)
        self.metrics = IngressMetrics()
        self._receiving = 0  # request bodies being received now
        self.store.heartbeat()
        threading.Thread(target=self._housekeep, name="sama-ingress-housekeeping", daemon=True).start()

    def _housekeep(self) -> None:
        """Renew this replica's lease; delete records and results past their retention."""
        rec = self.cfg.records
        beat, sweep_every = rec.lease_s / 3, min(600.0, max(1.0, rec.retention_s / 4))
        next_sweep = time.monotonic()
        while True:
            try:
                self.store.heartbeat()
                if time.monotonic() >= next_sweep:
                    gone = self.store.sweep(rec.retention_s)
                    if gone:
                        log.info("retention: deleted %d finished job(s) and their results", gone)
                    next_sweep = time.monotonic() + sweep_every
            except Exception:  # storage hiccups: try again next beat
                log.exception("ingress housekeeping on %s", self.results)
            time.sleep(beat)

    # ------------------------------------------------------------------ plumbing

    def _auth(self, request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), self.token):
            raise RequestError(
                401, "missing or wrong bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"}
            )

    async def _parse(self, request: Request, sync: bool) -> EditRequest:
        """Auth -> a free upload slot -> the streamed form -> parameters -> the source vetted and probed."""
        self._auth(request)
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise RequestError(415, "send the edit as multipart/form-data (fields: video or uri, instruction, ...)")
        lim = self.cfg.limits
        if self._receiving >= lim.max_concurrent_uploads:
            raise RequestError(
                503,
                f"{self._receiving} uploads are in progress (the limit is {lim.max_concurrent_uploads}); retry later",
                {"Retry-After": str(self.cfg.queue.retry_after_s)},
            )
        self._receiving += 1
        try:
            return await self._parse_body(request, ctype, sync)
        finally:
            self._receiving -= 1

    async def _parse_body(self, request: Request, ctype: str, sync: bool) -> EditRequest:
        lim = self.cfg.limits
        cap = lim.max_upload_bytes + 64 * 1024  # room for the other form fields
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            raise RequestError(413, f"the upload is larger than {lim.max_upload_mb:g} MB")
        meter = BodyMeter(request.receive, cap, lim.max_upload_mb)
        body = Request(request.scope, meter)  # Starlette spools file parts to disk past 1 MB
        try:
            form = await body.form(max_files=1, max_fields=len(FIELDS))
        except RequestError:
            raise
        except ClientDisconnect:
            raise RequestError(400, f"the client went away after {meter.received} bytes of the body") from None
        except Exception as e:  # Starlette raises its own (multipart) errors for malformed bodies
            raise RequestError(400, f"malformed form body: {getattr(e, 'detail', e)}") from None
        try:
            if ctype.startswith("multipart/") and not meter.multipart_complete(ctype):
                raise RequestError(
                    400, f"the multipart body is cut short: no closing boundary after {meter.received} bytes"
                )
            req = parse_params(form, self.cfg, sync)
            upload, uri = form.get("video"), form.get("uri")
            if (upload is None) == (uri is None):
                raise RequestError(400, "give exactly one source: a 'video' file or a 'uri'")
            if upload is not None:
                if not isinstance(upload, UploadFile):
                    raise RequestError(400, "'video' must be a file part")
                req.source_suffix = upload_suffix(upload.filename)
                info, req.source_ref = await asyncio.to_thread(self._take_upload, upload, req.source_suffix)
            else:
                if not isinstance(uri, str):
                    raise RequestError(400, "'uri' must be a plain form field")
                req.source_uri = resolve_source_uri(uri, lim)
                info = await asyncio.to_thread(self._probe_uri, req.source_uri)
        finally:
            await form.close()  # spooled upload parts
        check_media(info, self.cfg)
        req.fps = info.fps if info.fps > 0 else 16.0
        return req

    def _take_upload(self, upload: UploadFile, suffix: str) -> tuple[media.MediaInfo, ray.ObjectRef]:
        """The spooled upload -> a file to probe -> Ray's object store (for the editor)."""
        upload.file.seek(0)
        fd, path = tempfile.mkstemp(prefix="sama-upload-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(upload.file, f, 1 << 20)
            n = os.path.getsize(path)
            if n == 0:
                raise RequestError(400, "the uploaded file is empty")
            if n > self.cfg.limits.max_upload_bytes:
                raise RequestError(413, f"the upload is larger than {self.cfg.limits.max_upload_mb:g} MB")
            try:
                info = media.probe(path)
            except media.MediaError as e:
                raise RequestError(422, f"not a readable video or image ({e.reason})") from None
            with open(path, "rb") as f:
                return info, ray.put(f.read())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def _probe_uri(self, uri: str) -> media.MediaInfo:
        try:
            if storage.size(uri) > self.cfg.limits.max_upload_bytes:
                raise RequestError(413, f"the source is larger than {self.cfg.limits.max_upload_mb:g} MB")
            return media.probe(uri)
        except FileNotFoundError:
            raise RequestError(404, f"no such source object: {uri}") from None
        except media.MediaError as e:
            status = 404 if e.reason == "missing_file" else 422
            raise RequestError(status, f"not a readable video or image: {uri} ({e.reason})") from None
        except RequestError:
            raise
        except Exception as e:  # storage unreachable, access denied, ...: the storage's fault, not the client's
            raise RequestError(502, f"cannot read {uri}: {_short(e)}") from None

    async def _save(self, job: EditTask) -> None:
        try:
            await asyncio.to_thread(self.store.save, job)
        except Exception as e:
            log.error("job %s: cannot write its record under %s: %s", job.id, self.results, _short(e))

    async def _finish(self, job: EditTask, state: str, error: str | None = None, kind: str | None = None) -> None:
        if not self.table.finish(job, state, error, kind):
            return
        await self._save(job)
        self.metrics.finished.inc(tags={"state": state})
        self.metrics.total_seconds.observe(job.finished - job.created)
        self.metrics.pending.set(self.table.pending)
        if error:
            log.info("job %s %s: %s", job.id, state, error)

    async def _next_event(self, job: EditTask, events: EventStream, deadline: float) -> dict[str, Any] | None:
        """The editor's next event; None at the deadline. With several ingress replicas, a cancel
        asked of another replica (a marker on storage) is checked every few seconds."""
        several = self.cfg.ingress.num_replicas > 1
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            event = await events.next(min(left, 2.0) if several else left)
            if event is not None:
                return event
            if several and await asyncio.to_thread(self.store.cancel_requested, job.id):
                raise asyncio.CancelledError()

    async def _drive(self, job: EditTask, req: EditRequest) -> dict[str, Any] | None:
        """Follow one edit on the editor to its end; the job always ends terminal (never lost)."""
        q = self.cfg.queue
        deadline, phase = time.monotonic() + q.queue_timeout_s, "waiting for a free replica"
        last_save = time.monotonic()
        while True:
            job.attempts += 1
            stream = EventStream(self.editor.edit.remote(req))
            try:
                while True:
                    try:
                        event = await self._next_event(job, stream, deadline)
                    except StopAsyncIteration:
                        await self._finish(job, FAILED, "the editor ended the stream without a result", "edit_error")
                        return None
                    if event is None:
                        stream.cancel()
                        await self._finish(job, FAILED, f"timed out {phase}", "timeout")
                        return None
                    kind = event["event"]
                    if kind == "started":
                        job.state, job.started, job.replica = RUNNING, time.time(), event["replica"]
                        self.metrics.queue_seconds.observe(job.started - job.created)
                        deadline, phase = time.monotonic() + q.run_timeout_s, f"running (limit {q.run_timeout_s:g}s)"
                        await self._save(job)
                    elif kind == "progress":
                        job.progress = max(job.progress, float(event["progress"]))
                        if time.monotonic() - last_save > PROGRESS_SAVE_S:
                            last_save = time.monotonic()
                            await self._save(job)
                    elif kind == "error":
                        await self._finish(job, FAILED, event["message"], event.get("kind", "edit_error"))
                        return None
                    elif kind == "done":
                        job.video = {k: event[k] for k in ("frames", "height", "width", "fps", "seconds")}
                        if job.mode == "async":
                            job.result = storage.join(self.results, f"{job.id}.mp4")
                            try:
                                await asyncio.to_thread(storage.write_bytes, job.result, event["video"])
                            except Exception as e:
                                error = f"cannot store the result at {job.result}: {_short(e)}"
                                await self._finish(job, FAILED, error, "storage_error")
                                return None
                        await self._finish(job, SUCCEEDED)
                        return event
            except asyncio.CancelledError:  # DELETE, or the client of a synchronous call went away
                stream.cancel()
                await self._finish(job, CANCELLED, "cancelled", "cancelled")
                return None
            except BackPressureError:
                await self._finish(job, FAILED, "the editor queue is full; retry later", "busy")
                return None
            except REPLICA_DIED as e:
                if job.state == QUEUED and job.attempts < MAX_ATTEMPTS:
                    # It was waiting at that replica, never started: another replica takes it.
                    log.warning("job %s: its editor replica died before starting it; handing it on", job.id)
                    continue
                # The replica died mid-edit (Serve starts a new one); say so instead of losing the job.
                await self._finish(
                    job,
                    FAILED,
                    f"the editor replica running this edit died ({type(e).__name__}); resubmit it",
                    "replica_died",
                )
                return None
            except Exception as e:
                log.exception("job %s", job.id)
                await self._finish(job, FAILED, f"{type(e).__name__}: {e}", "edit_error")
                return None

    async def _lookup(self, job_id: str) -> EditTask:
        """The job, from this replica's memory or from its record on storage."""
        job = self.table.get(job_id)
        if job is None:
            try:
                job = await asyncio.to_thread(self.store.load, job_id)
            except Exception as e:
                raise RequestError(
                    502, f"cannot read the record of job {job_id} under {self.results}: {_short(e)}"
                ) from None
        if job is None:
            raise RequestError(404, f"no edit job {job_id!r} (unknown, or deleted after its retention)")
        return job

    async def _admit(self, req: EditRequest, mode: str) -> EditTask:
        job = self.table.admit(req.instruction, mode, self.cfg.queue.retry_after_s)
        job.owner, job.params = self.store.owner, req.describe()
        try:  # no record, no job: a client must never hold an id nobody can answer for
            await asyncio.to_thread(self.store.save, job)
        except Exception as e:
            self.table.drop(job)
            raise RequestError(502, f"cannot write the job record under {self.results}: {_short(e)}") from None
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
        return {
            "status": "ok",
            "replica": self.store.owner,
            "pending": self.table.pending,
            "max_pending": self.table.max_pending,
            "uploads": self._receiving,
        }

    @api.get("/v1/model")
    async def model(self, request: Request) -> dict[str, Any]:
        """The served checkpoint and its model card's key facts (data, licenses, evaluations)."""
        self._auth(request)
        return self.cfg.model

    @api.post("/v1/edits", status_code=202)
    async def submit(self, request: Request) -> JSONResponse:
        req = await self._parse(request, sync=False)
        job = await self._admit(req, "async")
        job.task = asyncio.create_task(self._drive(job, req))
        # Absolute (RFC 9110), from the URL the client used, route prefix included.
        return JSONResponse(job.public(), 202, headers={"Location": f"{request.base_url}v1/edits/{job.id}"})

    @api.get("/v1/edits/{job_id}")
    async def status(self, job_id: str, request: Request) -> dict[str, Any]:
        self._auth(request)
        return (await self._lookup(job_id)).public()

    @api.get("/v1/edits/{job_id}/result")
    async def result(self, job_id: str, request: Request) -> Response:
        self._auth(request)
        job = await self._lookup(job_id)
        if job.state != SUCCEEDED or not job.result:
            raise RequestError(409, f"job {job_id} is {job.state}; the result exists once it has succeeded")
        try:
            data = await asyncio.to_thread(storage.read_bytes, job.result)
        except FileNotFoundError:
            raise RequestError(410, f"the result of job {job_id} is gone from {job.result}") from None
        except Exception as e:
            raise RequestError(502, f"cannot read {job.result}: {_short(e)}") from None
        return Response(
            data, media_type="video/mp4", headers={"Content-Disposition": f'inline; filename="{job.id}.mp4"'}
        )

    @api.delete("/v1/edits/{job_id}")
    async def cancel(self, job_id: str, request: Request) -> dict[str, Any]:
        self._auth(request)
        job = await self._lookup(job_id)
        if job.done:
            return job.public()
        if job.task is not None:  # driven here
            job.task.cancel()
            await asyncio.wait({job.task})
            return job.public()
        # Driven by another ingress replica: leave it a marker and wait a little for it to act.
        await asyncio.to_thread(self.store.request_cancel, job_id)
        deadline = time.monotonic() + 10.0
        while not job.done and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            job = await self._lookup(job_id)
        return job.public()

    @api.post("/v1/edit")
    async def edit_sync(self, request: Request) -> Response:
        req = await self._parse(request, sync=True)
        job = await self._admit(req, "sync")
        done = await self._drive(job, req)
        if done is None:
            status = SYNC_STATUS.get(job.error_kind or "", 500)
            raise RequestError(
                status,
                job.error or "the edit failed",
                {"Retry-After": str(self.cfg.queue.retry_after_s)} if status == 503 else None,
            )
        return Response(done["video"], media_type="video/mp4", headers={"X-EditTask-Id": job.id})
