"""Where the edits under evaluation come from: made by a checkpoint (an actor pool, GPUs), or
brought by the user (another system's outputs: only probed here, never loaded into a model).

Either way an item leaves with its edit's file, size, frame count and fps, or with a
per-item error (``source_error``, ``edit_error``, ``edit_missing``) that names the file."""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from sama import storage
from sama.media import MediaError, probe, read_clip, write_mp4
from sama.models.edit_group import GroupConfig, load_editor

from ..stage import Part
from .config import EvalConfig, uris

log = logging.getLogger(__name__)


class EditStage:
    """Actor: edits items with the checkpoint. The model loads on the first edit actually needed,
    so a rerun that only rescores never pays for it."""

    def __init__(self, cfg: EvalConfig, output: str):
        self.cfg, self.output, self.pipe = cfg, output, None

    def _load(self):
        import torch

        e = self.cfg.edit
        gpu = e.num_gpus > 0 and torch.cuda.is_available()
        t0 = time.time()
        group = GroupConfig(e.gpus_per_actor, e.cfg_parallel, e.num_gpus, e.num_cpus)
        self.pipe = load_editor(self.cfg.model, "cuda" if gpu else "cpu", group)
        log.info("evaluate: %s loaded on %s in %.1fs", self.cfg.model.name, self.pipe.device, time.time() - t0)

    def edit(self, item: dict) -> dict:
        u = uris(self.output, item["key"])
        if storage.exists(u["meta"]):  # written after the mp4: the edit is complete
            return {**item, **json.loads(storage.read_text(u["meta"])), "edit_uri": u["edit"]}
        e = self.cfg.edit
        if self.pipe is None:
            self._load()  # a checkpoint that does not load stops the job: no item could be edited
        try:
            buckets = self.cfg.model.pipeline.buckets
            side = max(max(b) for b in self.pipe.buckets)  # decode no larger than the largest bucket
            frames = read_clip(item["source_uri"], e.max_frames or buckets.max_frames, side)
            fps = e.fps or (probe(item["source_uri"]).fps if len(frames) > 1 else 0.0) or 16.0
        except MediaError as err:
            return {**item, "error_kind": "source_error", "error": str(err)[:500]}
        except Exception as err:  # noqa: BLE001 - storage trouble: retried on the next run
            return {**item, "error_kind": "source_error", "error": f"{type(err).__name__}: {err}"[:500]}
        t0 = time.time()
        try:
            out = self.pipe(item["instruction"], frames, num_inference_steps=e.steps, seed=e.seed)
            # The pipeline pads to 4k+1 frames by repeating the last one: keep as many as came in.
            video = out.video[0].cpu().numpy()[: len(frames)]
            write_mp4(u["edit"], video, fps, e.crf)
        except Exception as err:  # noqa: BLE001 - recorded per item (e.g. out of memory on a huge clip)
            return {**item, "error_kind": "edit_error", "error": f"{type(err).__name__}: {err}"[:500]}
        t, h, w = video.shape[:3]
        meta = {
            "frames": int(t),
            "height": int(h),
            "width": int(w),
            "fps": float(fps),
            "edit_seconds": round(time.time() - t0, 3),
        }
        storage.write_text(u["meta"], json.dumps(meta))
        return {**item, **meta, "edit_uri": u["edit"]}

    def __call__(self, batch: dict) -> dict:
        return {"part": np.array([Part(p.name, self.edit(p.spec)) for p in batch["part"]], dtype=object)}


def bring(item: dict) -> dict:
    """A brought edit: its file probed (a video or an image), nothing made."""
    if not item.get("edit_uri"):
        where = item.get("edits_folder") or "the manifest's edit column"
        return {**item, "error_kind": "edit_missing", "error": f"{item['item_id']}: no edit in {where}"}
    try:
        info = probe(item["edit_uri"])
    except MediaError as err:
        return {**item, "error_kind": "edit_error", "error": f"edit {err.detail}"[:500]}
    except Exception as err:  # noqa: BLE001 - storage trouble: retried on the next run
        return {**item, "error_kind": "edit_error", "error": f"{item['edit_uri']}: {type(err).__name__}: {err}"[:500]}
    return {**item, "frames": info.frames, "height": info.height, "width": info.width, "fps": info.fps}


def bring_batch(batch: dict) -> dict:
    """Ray Data task (CPU): brought edits probed, a batch of parts at a time."""
    return {"part": np.array([Part(p.name, bring(p.spec)) for p in batch["part"]], dtype=object)}
