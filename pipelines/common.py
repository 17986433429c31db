"""Pieces every Ray Data job here shares."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

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


def count_table(summary: Mapping[str, dict], columns: Mapping[str, Callable[[dict], float]], total: bool = True,
                note: Callable[[dict], str] = lambda s: "") -> str:
    """A job's end-of-run table: one line per dataset with its counts and its reasons
    (``s["reasons"]``: reason -> count), then the column totals."""
    widths = [max(len(h), 8) for h in columns]

    def line(name: str, cells: list, tail: str = "") -> str:
        cells = [f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells]
        return f"{name:<16} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)) + (f"  {tail}" if tail else "")

    lines = [line("dataset", list(columns), "reasons")]
    for name, s in summary.items():
        reasons = ", ".join(f"{k}={v}" for k, v in s.get("reasons", {}).items()) or "-"
        lines.append(line(name, [f(s) for f in columns.values()], reasons + note(s)))
    if total:
        lines.append(line("total", [sum(f(s) for s in summary.values()) for f in columns.values()]))
    return "\n".join(lines)
