"""Pieces every Ray Data job here shares."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import ray

log = logging.getLogger(__name__)


def map_tasks(items: list[dict], fn: Callable[[dict], dict], cpus: float, label: str, **ray_args) -> list[dict]:
    """Run ``fn`` once per item as Ray Data tasks and return its results (dicts).

    ``fn`` returns ``{"result": <json string>}``: tasks' results are nested and ragged,
    which would not fit one Arrow type. Progress bars come from Ray Data.
    """
    if not items:
        return []
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    log.info("%s: %d tasks", label, len(items))
    return [json.loads(r["result"]) for r in ds.map(fn, num_cpus=cpus, **ray_args).take_all()]
