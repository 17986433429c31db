"""One part of the filter job: its manifest rows -> one verdict each.

Every sample is decoded once (a thread pool), cheap checks run on the frames, and only
the samples that pass go to the judge, many requests in flight on one event loop.
Per-sample problems become verdicts, never exceptions: ``drop`` with the reason for bad
media or failed checks, ``error`` (retried on the next run) when no decision could be had.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from sama import storage
from sama.judging import RUBRICS, CachedAnswers, JudgeConfig
from sama.media import MediaError, read_frames
from sama.schemas import MANIFEST, validate

from .checks import CheckResult, ChecksConfig, run_checks

METRICS = ("motion", "blank_fraction", "scene_cuts", "sharpness", "edit_diff")


@dataclass(frozen=True)
class Slice:
    """``rows`` rows of one manifest file from ``offset``: a part's input."""

    file: str
    offset: int
    rows: int


def part_rows(piece: Slice, datasets: list[str]) -> list[dict]:
    """The manifest rows of ``piece`` that belong to ``datasets`` (empty: all)."""
    fs, path = storage.filesystem(piece.file)
    table = validate(pq.read_table(path, filesystem=fs), MANIFEST, where=piece.file)
    rows = table.slice(piece.offset, piece.rows).to_pylist()
    return [r for r in rows if r["dataset"] in datasets] if datasets else rows


def decode(row: dict, n: int, max_side: int) -> dict[str, np.ndarray]:
    frames = {"target": read_frames(row["target_uri"], n, max_side)}
    if row.get("source_uri"):
        frames["source"] = read_frames(row["source_uri"], n, max_side)
    return frames


def screen(
    row: dict, checks: ChecksConfig, judge: Optional[JudgeConfig]
) -> tuple[CheckResult | None, dict[str, np.ndarray]]:
    """Decode a sample once for both consumers (as many frames and pixels as the larger asks
    for; ``judge`` None: nobody judges it) and run the cheap checks on a downscaled copy.
    Raises MediaError for bad media."""
    n_frames = max(checks.frames if checks.enabled else 0, judge.frames if judge else 0, 2)
    side = max(checks.max_side if checks.enabled else 0, judge.max_side if judge else 0)
    frames = decode(row, n_frames, side)
    if not checks.enabled:
        return None, frames
    small = {k: downscale(v, checks.max_side) for k, v in frames.items()}
    return run_checks(row, small, checks), frames


def downscale(frames: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = frames.shape[1:3]
    if max(h, w) <= max_side:
        return frames
    scale = max_side / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


@dataclass(frozen=True)
class Verdicts:
    """How one part's rows are decided: the checks, the judge (if any), and what to stamp."""

    checks: ChecksConfig
    judge_cfg: JudgeConfig
    decode_threads: int
    digest: str

    def verdict(self, row: dict, verdict: str, reasons: list[str], **fields) -> dict:
        return {
            "sample_id": row["sample_id"],
            "dataset": row["dataset"],
            "category": row.get("category"),
            "task": row["task"],
            "verdict": verdict,
            "reasons": reasons,
            "judge_model": self.judge_cfg.model_label,
            "source_uri": row.get("source_uri"),
            "target_uri": row["target_uri"],
            "config_digest": self.digest,
            **fields,
        }

    async def decide(self, rows: list[dict], judge: CachedAnswers | None) -> list[dict]:
        """Verdicts for ``rows`` (same order): decode + checks in threads, the judge on the event loop."""
        loop = asyncio.get_running_loop()
        checks = partial(screen, checks=self.checks, judge=self.judge_cfg if judge is not None else None)
        # Bounds decoded frames held in memory: a few samples beyond those the judge has in flight.
        window = asyncio.Semaphore((self.judge_cfg.concurrency if judge else 0) + 2 * self.decode_threads)

        with ThreadPoolExecutor(self.decode_threads) as pool:

            async def one(row: dict) -> dict:
                async with window:
                    try:
                        result, frames = await loop.run_in_executor(pool, checks, row)
                    except MediaError as e:
                        return self.verdict(row, "drop", [e.reason], detail=e.detail)
                    except Exception as e:  # noqa: BLE001 - storage trouble: retried next run, not a decision
                        return self.verdict(row, "error", ["check_error"], error=f"{row['target_uri']}: {e}"[:500])
                    measured = result.metrics if result else {}
                    fields = {k: measured.get(k) for k in METRICS}
                    if result and result.failed:
                        return self.verdict(row, "drop", result.failed, detail="; ".join(result.details), **fields)
                    if judge is None:
                        return self.verdict(row, "keep", [], **fields)
                    outcome = await judge.judge(row["sample_id"], row["task"], row["instruction"], frames)
                    del frames
                    fields.update(rubric_version=RUBRICS[row["task"]].version, judge_attempts=outcome.attempts)
                    if outcome.error:
                        return self.verdict(row, "error", ["judge_error"], error=outcome.error, **fields)
                    answer = outcome.answer
                    return self.verdict(
                        row,
                        "keep" if outcome.keep else "drop",
                        outcome.reasons,
                        scores=answer.scores,
                        flags=[k for k, v in answer.flags.items() if v],
                        overall=outcome.overall,
                        judge_reason=judge.scrub(answer.reason)[:1000],
                        **fields,
                    )

            return await asyncio.gather(*(one(r) for r in rows))
