"""The editor deployment: one pipeline per replica, on one GPU or spread over
``gpus_per_replica`` (``sama.models.edit_group``; CPU processes for tests and demos).

``edit`` is a streaming method: it yields ``started`` once one of the replica's
``max_running`` slots is free (the replica may hold more requests than it runs, so the
next one is already there when a slot frees), then ``progress`` events (from a
forward hook on the transformer, so the pipeline needs no callback argument), then one
``done`` event with the mp4 bytes, or an ``error`` event. The pipeline runs in a worker
thread; cancelling the stream (client cancel, timeout) sets a flag the pipeline asks before
each step (every process of a group stops at the same one), which frees the replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import ray
from ray import serve

from sama.media import MediaError, encode_mp4, read_clip
from sama.models.edit_group import EditGroup, GroupConfig, load_editor

from .config import ModelConfig
from .inputs import EditRequest
from .metrics import EditorMetrics
from .video import local_file

log = logging.getLogger(__name__)


class Tracker:
    """Counts transformer calls of one edit (progress) and holds its cancel flag."""

    def __init__(self, total_calls: int, report):
        self.total = max(1, total_calls)
        self.calls = 0
        self.report = report
        self.cancelled = threading.Event()

    def on_call(self) -> None:
        self.calls += 1
        # Denoising is most of the work: 5% for decoding the source, 90% for the steps, 5% for encoding.
        self.report(0.05 + 0.9 * min(1.0, self.calls / self.total))


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Serve (direct use in tests)
        return f"pid-{os.getpid()}"


@serve.deployment(name="Editor")
class Editor:
    def __init__(self, model: ModelConfig, max_running: int = 1, group: GroupConfig = GroupConfig()):
        import torch

        device = model.device if model.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        t0 = time.time()
        self.pipe = load_editor(model, device, group)
        self.device = device
        self.max_side = max(max(b) for b in self.pipe.buckets)  # decode no larger than the largest bucket
        self._local = threading.local()  # the Tracker of the edit running in this thread
        self.pipe.transformer.register_forward_pre_hook(self._on_forward)
        self.metrics = EditorMetrics()
        self._slots = asyncio.Semaphore(max_running)  # edits running at once; the rest wait their turn
        if model.warmup:
            side = min(self.pipe.buckets, key=lambda b: b.area)
            clip = np.zeros((1, side.height, side.width, 3), np.uint8)
            self.pipe("warm-up", clip, num_inference_steps=1, guidance_scale=1.0)
        log.info("editor ready on %s in %.1fs", device, time.time() - t0)

    def _on_forward(self, module, args) -> None:
        tracker = getattr(self._local, "tracker", None)
        if tracker is not None:
            tracker.on_call()

    def check_health(self) -> None:
        """Serve's health check: a replica whose group lost a process is replaced."""
        if isinstance(self.pipe, EditGroup):
            self.pipe.check_health()

    def _calls(self, req: EditRequest) -> int:
        """Transformer calls this process will make: steps x its forwards per step."""
        per_step = self.pipe.forwards_per_step(req.guidance_scale, req.source_guidance_scale)
        return (req.steps or self.pipe.config.num_inference_steps) * per_step

    def _run(self, req: EditRequest, tracker: Tracker) -> dict[str, Any]:
        """Decode -> edit -> encode, in a worker thread."""
        t0 = time.time()
        n = min(req.num_frames or self.pipe.config.buckets.max_frames, self.pipe.config.buckets.max_frames)
        data = ray.get(req.source_ref) if req.source_ref is not None else req.source_bytes
        if data is not None:
            with local_file(data, req.source_suffix) as path:
                frames = read_clip(path, n, self.max_side)
        else:
            frames = read_clip(req.source_uri, n, self.max_side)
        self._local.tracker = tracker
        try:
            out = self.pipe(
                req.instruction,
                frames,
                height=req.height,
                width=req.width,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance_scale,
                source_guidance_scale=req.source_guidance_scale,
                seed=req.seed,
                stop=tracker.cancelled.is_set,
            )
        finally:
            self._local.tracker = None
        # The pipeline pads to 4k+1 frames by repeating the last one: give back as many as came in.
        video = out.video[0].cpu().numpy()[: len(frames)]
        data = encode_mp4(video, req.fps)
        seconds = time.time() - t0
        self.metrics.observe(seconds, len(video))
        t, h, w = video.shape[:3]
        return {
            "video": data,
            "frames": int(t),
            "height": int(h),
            "width": int(w),
            "fps": req.fps,
            "seconds": round(seconds, 3),
        }

    async def edit(self, req: EditRequest) -> AsyncIterator[dict[str, Any]]:
        # Waiting here is waiting at this replica: the next edit starts the moment one ends,
        # instead of when Serve's router next re-polls a full replica (backoff up to 0.5 s).
        async with self._slots:
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()
            tracker = Tracker(self._calls(req), lambda p: loop.call_soon_threadsafe(events.put_nowait, p))
            yield {"event": "started", "replica": _replica_id(), "pid": os.getpid()}
            work = loop.run_in_executor(None, self._run, req, tracker)
            try:
                while True:
                    if not events.empty():  # several steps since the last event: report the latest
                        latest = events.get_nowait()
                        while not events.empty():
                            latest = events.get_nowait()
                        yield {"event": "progress", "progress": latest}
                        continue
                    if work.done():
                        break
                    getter = asyncio.ensure_future(events.get())
                    done, _ = await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        yield {"event": "progress", "progress": getter.result()}
                    else:
                        getter.cancel()
                try:
                    result = work.result()
                except MediaError as e:
                    yield {"event": "error", "kind": "edit_error", "message": f"cannot read the source: {e.reason}"}
                    return
                except Exception as e:  # the edit failed; the replica is fine
                    log.exception("edit failed")
                    yield {"event": "error", "kind": "edit_error", "message": f"{type(e).__name__}: {e}"}
                    return
                yield {"event": "done", **result}
            finally:
                if not work.done():  # the stream was cancelled: stop the pipeline at its next step
                    tracker.cancelled.set()
                    await asyncio.wait({work})
