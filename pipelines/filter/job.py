"""The filter job: a manifest -> verdicts table + filtered manifest (+ summary and report).

One Ray Data task per part (``shard_size`` rows of one input manifest file). In a
task, every sample is decoded once (a thread pool), cheap checks run on the frames,
and only the samples that pass go to the judge, many requests in flight on one
event loop. Per-sample problems become verdicts, never exceptions:

- ``keep`` / ``drop``: decided, with reasons (failed checks, judge rules, decode errors);
- ``error``: no decision could be had (``judge_error`` after retries, ``check_error``
  for a storage failure). Such samples are in neither the kept nor the dropped
  set; the next run redoes their parts (``retry_errors``), paying only for them
  thanks to the judge cache.

With ``judge.backend=vllm`` a first pass (vllm_judge.py) answers every sample the judge
would see through Ray Data's LLM processor into that cache; the parts then decide from it.

Output layout under ``output`` (parts named after their input, so reruns overwrite
instead of duplicating; a part is done once its marker is written)::

    verdicts/<dataset>/<part>.parquet   # schemas.VERDICTS
    manifest/<dataset>/<part>.parquet   # schemas.MANIFEST, kept samples only
    summary.json, report/index.html     # counts; histograms and contact sheets
    _work/done/<dataset>/<part>.json    # completion markers (config digest, counts)
    _cache/judge/...                    # judge answers by (model, rubric version, sample_id)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import posixpath
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from sama import storage
from sama.config import JobConfig
from sama.media import MediaError, read_frames
from sama.schemas import MANIFEST, VERDICTS, validate

from ..common import count_table, map_tasks
from .checks import CheckResult, ChecksConfig, run_checks
from .judge import CachedAnswers, Judge, JudgeConfig, Secret, api_key
from .rubrics import RUBRICS

if TYPE_CHECKING:
    from .vllm_judge import Engine

log = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    enabled: bool = True
    examples: int = 4  # samples per contact sheet (best, worst, borderline)


@dataclass
class FilterConfig:
    input: str = "outputs/ingest/manifest"  # a manifest folder (the ingest job's) or one Parquet file
    datasets: list[str] = field(default_factory=list)  # only these datasets; empty: all
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    shard_size: int = 512  # rows per part: the unit of resume
    decode_threads: int = 4  # concurrent decodes per task
    task_cpus: float = 1.0
    retry_errors: bool = True  # a rerun redoes parts holding "error" verdicts

    def validate(self) -> None:
        if self.shard_size < 1 or self.decode_threads < 1:
            raise ValueError("shard_size and decode_threads must be >= 1")


@dataclass
class FilterJobConfig(JobConfig):
    job: str = "filter"
    output: str = "outputs/filter"
    filter: FilterConfig = field(default_factory=FilterConfig)


def config_digest(cfg: FilterConfig) -> str:
    """What decides a verdict (not throughput knobs): a change redoes the parts."""
    j = cfg.judge
    decisive = {"checks": dataclasses.asdict(cfg.checks), "datasets": cfg.datasets, "judge": [
        j.backend, j.model_label, j.base_url, j.frames, j.max_side, dataclasses.asdict(j.keep),
        sorted(r.version for r in RUBRICS.values())]}
    return storage.content_digest(json.dumps(decisive, sort_keys=True, default=str), n=12)


# --- one sample ------------------------------------------------------------------------------------


def _verdict(row: dict, verdict: str, reasons: list[str], judge_model: str, digest: str, **kw) -> dict:
    out = {"sample_id": row["sample_id"], "dataset": row["dataset"], "category": row.get("category"), "task": row["task"],
           "verdict": verdict, "reasons": reasons, "judge_model": judge_model, "source_uri": row.get("source_uri"),
           "target_uri": row["target_uri"], "config_digest": digest}
    out.update(kw)
    return out


def decode(row: dict, n: int, max_side: int) -> dict[str, np.ndarray]:
    frames = {"target": read_frames(row["target_uri"], n, max_side)}
    if row.get("source_uri"):
        frames["source"] = read_frames(row["source_uri"], n, max_side)
    return frames


def screen(row: dict, cfg: FilterConfig, judging: bool) -> tuple[CheckResult | None, dict[str, np.ndarray]]:
    """Decode a sample once for both consumers (as many frames and pixels as the larger asks
    for) and run the cheap checks on a downscaled copy; raises MediaError for bad media."""
    jc, cc = cfg.judge, cfg.checks
    n_frames = max(cc.frames if cc.enabled else 0, jc.frames if judging else 0, 2)
    side = max(cc.max_side if cc.enabled else 0, jc.max_side if judging else 0)
    frames = decode(row, n_frames, side)
    if not cc.enabled:
        return None, frames
    small = {k: _downscale(v, cc.max_side) for k, v in frames.items()}
    return run_checks(row, small, cc), frames


async def filter_rows(rows: list[dict], cfg: FilterConfig, judge: CachedAnswers | None, digest: str) -> list[dict]:
    """Verdicts for ``rows`` (same order): decode + checks in threads, the judge on the event loop."""
    loop = asyncio.get_running_loop()
    jc, cc = cfg.judge, cfg.checks
    label = jc.model_label
    checks = partial(screen, cfg=cfg, judging=judge is not None)
    # Bounds decoded frames held in memory: a few samples beyond those the judge has in flight.
    window = asyncio.Semaphore((jc.concurrency if judge else 0) + 2 * cfg.decode_threads)

    with ThreadPoolExecutor(cfg.decode_threads) as pool:

        async def one(row: dict) -> dict:
            async with window:
                try:
                    result, frames = await loop.run_in_executor(pool, checks, row)
                except MediaError as e:
                    return _verdict(row, "drop", [e.reason], label, digest, detail=e.detail)
                except Exception as e:  # noqa: BLE001 - storage trouble: retried next run, not a decision
                    return _verdict(row, "error", ["check_error"], label, digest, error=f"{row['target_uri']}: {e}"[:500])
                m = result.metrics if result else {}
                kw = {k: m.get(k) for k in ("motion", "blank_fraction", "scene_cuts", "sharpness", "edit_diff")}
                if result and result.failed:
                    return _verdict(row, "drop", result.failed, label, digest, detail="; ".join(result.details), **kw)
                if judge is None:
                    return _verdict(row, "keep", [], label, digest, **kw)
                o = await judge.judge(row["sample_id"], row["task"], row["instruction"], frames)
                del frames
                kw.update(rubric_version=RUBRICS[row["task"]].version, judge_attempts=o.attempts)
                if o.error:
                    return _verdict(row, "error", ["judge_error"], label, digest, error=o.error, **kw)
                a = o.answer
                return _verdict(row, "keep" if o.keep else "drop", o.reasons, label, digest, scores=a.scores,
                                flags=[k for k, v in a.flags.items() if v], overall=o.overall,
                                judge_reason=judge.scrub(a.reason)[:1000], **kw)

        return await asyncio.gather(*(one(r) for r in rows))


def _downscale(frames: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = frames.shape[1:3]
    if max(h, w) <= max_side:
        return frames
    s = max_side / max(h, w)
    size = (max(2, round(w * s)), max(2, round(h * s)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


# --- one part --------------------------------------------------------------------------------------


def part_uris(output: str, name: str) -> dict[str, str]:
    return {"verdicts": storage.join(output, "verdicts", f"{name}.parquet"),
            "manifest": storage.join(output, "manifest", f"{name}.parquet"),
            "done": storage.join(output, "_work", "done", f"{name}.json")}


def part_done(output: str, name: str, digest: str, retry_errors: bool) -> bool:
    try:
        done = json.loads(storage.read_text(part_uris(output, name)["done"]))
    except FileNotFoundError:
        return False
    return done.get("config_digest") == digest and not (retry_errors and done.get("error", 0))


def part_rows(item: dict, cfg: FilterConfig) -> list[dict]:
    """The manifest rows of one part (``item`` = {file, offset, rows, name}), of the chosen datasets."""
    fs, path = storage.filesystem(item["file"])
    table = validate(pq.read_table(path, filesystem=fs), MANIFEST, where=item["file"])
    rows = table.slice(item["offset"], item["rows"]).to_pylist()
    return [r for r in rows if r["dataset"] in cfg.datasets] if cfg.datasets else rows


def make_judge(cfg: FilterConfig, key: Secret | None, cache_root: str, failures: dict[str, str]) -> CachedAnswers | None:
    if cfg.judge.backend == "vllm":  # pass 1 (vllm_judge.prejudge) has answered into the cache
        from .vllm_judge import CachedJudge

        return CachedJudge(cfg.judge, cache_root, failures)
    return Judge(cfg.judge, key, cache_root) if key is not None else None


async def _run_part(rows: list[dict], cfg: FilterConfig, key: Secret | None, cache_root: str, digest: str,
                    failures: dict[str, str]):
    judge = make_judge(cfg, key, cache_root, failures)
    try:
        verdicts = await filter_rows(rows, cfg, judge, digest)
    finally:
        if judge is not None:
            await judge.close()
    return verdicts, (judge.requests if judge else 0)


def filter_part(item: dict, output: str, cfg: FilterConfig, key: Secret | None, cache_root: str, digest: str,
                failures: dict[str, str] | None = None) -> dict:
    """One Ray task: ``item`` = {file, offset, rows, name}; writes verdicts, kept manifest, marker."""
    uris = part_uris(output, item["name"])
    rows = part_rows(item, cfg)
    verdicts, requests = asyncio.run(_run_part(rows, cfg, key, cache_root, digest, failures or {}))
    kept = {v["sample_id"] for v in verdicts if v["verdict"] == "keep"}
    counts = Counter(v["verdict"] for v in verdicts)
    storage.write_parquet(uris["verdicts"], VERDICTS.table(verdicts))
    storage.write_parquet(uris["manifest"], MANIFEST.table([r for r in rows if r["sample_id"] in kept]))
    done = {"name": item["name"], "config_digest": digest, "requests": requests, **{k: counts.get(k, 0) for k in ("keep", "drop", "error")}}
    storage.write_text(uris["done"], json.dumps(done))  # last: marks the part complete
    return {"result": json.dumps(done)}


# --- the job ---------------------------------------------------------------------------------------


def plan_parts(input_uri: str, shard_size: int) -> list[dict]:
    """One item per ``shard_size`` rows of every input Parquet file, named after the file."""
    fs, root = storage.filesystem(input_uri)
    info = fs.get_file_info(root)
    files = [input_uri] if info.type.name == "File" else storage.list_files(input_uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"filter.input: no manifest Parquet files under {input_uri}")
    items = []
    for f in files:
        path = storage.filesystem(f)[1]
        if f == input_uri:
            rel = posixpath.splitext(posixpath.basename(path))[0]
        else:
            rel = posixpath.splitext(posixpath.relpath(path, root))[0]
        n = pq.read_metadata(path, filesystem=fs).num_rows
        for off in range(0, max(n, 1), shard_size):
            items.append({"file": f, "offset": off, "rows": shard_size, "name": f"{rel}-{off:07d}"})
    return items


def sweep(output: str, names: set[str]) -> int:
    """Delete parts no longer planned (input changed, shard_size changed): no stale duplicates."""
    removed = 0
    for kind, suffix in (("verdicts", ".parquet"), ("manifest", ".parquet"), ("_work/done", ".json")):
        base = storage.join(output, *kind.split("/"))
        for f in storage.list_files(base, suffix):
            rel = posixpath.relpath(storage.filesystem(f)[1], storage.filesystem(base)[1])[: -len(suffix)]
            if rel not in names:
                storage.delete(f)
                removed += 1
    return removed


def summarize(output: str) -> dict:
    table = storage.read_parquet(storage.join(output, "verdicts"), columns=["dataset", "verdict", "reasons"])
    out: dict[str, dict] = {}
    for ds in sorted(set(table["dataset"].to_pylist())):
        out[ds] = {"keep": 0, "drop": 0, "error": 0, "reasons": Counter()}
    for ds, verdict, reasons in zip(table["dataset"].to_pylist(), table["verdict"].to_pylist(), table["reasons"].to_pylist()):
        out[ds][verdict] += 1
        if verdict != "keep":
            out[ds]["reasons"].update(reasons)
    for s in out.values():
        s["reasons"] = dict(sorted(s["reasons"].items()))
    return out


def format_summary(summary: dict) -> str:
    return count_table(summary, {"kept": lambda s: s["keep"], "dropped": lambda s: s["drop"],
                                 "errors": lambda s: s["error"]})


def run(cfg: FilterJobConfig, engine: Engine | None = None) -> dict:
    """``engine``: what answers the in-cluster judge's requests (backend=vllm); None: vLLM."""
    fc = cfg.filter
    key = None
    if fc.judge.backend == "openai":
        key = api_key(fc.judge)  # read once here; workers get it in memory, never on disk or in logs
    digest = config_digest(fc)
    cache_root = fc.judge.cache or storage.join(cfg.output, "_cache", "judge")
    items = plan_parts(fc.input, fc.shard_size)
    removed = sweep(cfg.output, {i["name"] for i in items})
    if removed:
        log.info("filter: removed %d stale part file(s)", removed)
    todo = [i for i in items if not part_done(cfg.output, i["name"], digest, fc.retry_errors)]
    asked, failures = 0, {}
    if fc.judge.backend == "vllm" and todo:
        from .vllm_judge import prejudge

        asked, failures = prejudge(todo, fc, cache_root, engine)
    done = map_tasks(todo, partial(filter_part, output=cfg.output, cfg=fc, key=key, cache_root=cache_root, digest=digest,
                                   failures=failures), fc.task_cpus, "filter")
    summary = {"datasets": summarize(cfg.output), "judge_model": fc.judge.model_label, "config_digest": digest,
               "parts": len(items), "parts_run": len(todo), "judge_requests": asked + sum(d["requests"] for d in done)}
    storage.write_text(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2))
    if fc.report.enabled:
        from .report import write_report

        summary["report"] = write_report(cfg.output, fc.report, fc.judge.keep)
    print(format_summary(summary["datasets"]))
    print(f"judge: {summary['judge_model']}  requests this run: {summary['judge_requests']}  "
          f"parts run: {len(todo)}/{len(items)}")
    print(f"verdicts: {storage.join(cfg.output, 'verdicts')}\nmanifest: {storage.join(cfg.output, 'manifest')}")
    return summary


def read_verdicts(uri: str):
    """The verdicts table under ``uri``, validated against the schema."""
    return validate(storage.read_parquet(uri), VERDICTS, where=uri)
