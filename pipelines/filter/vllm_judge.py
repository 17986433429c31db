"""The judge in-cluster: Ray Data's LLM processor (vLLM on GPU actors) answers, the filter decides.

``filter.judge.backend=vllm`` runs the filter in two passes over the parts still to do:

1. :func:`prejudge` (here): every sample that passes the cheap checks and has no cached
   answer becomes one chat request, with the same frames, rubric and JSON schema as the
   HTTP judge's; the processor answers them in batches (structured output: the rubric's
   schema); valid answers go to the judge cache, and each sample left without one is
   named with the reason (engine error, malformed answer after ``malformed_retries``);
2. the usual per-part pass, whose judge (:class:`CachedJudge`) reads that cache: verdicts,
   filtered manifest, report. A sample without an answer becomes ``judge_error``, as with
   the HTTP judge, and is asked again on the next run.

Frames are decoded in both passes: next to a VLM call that is cheap, and it keeps pass 2
(CPU tasks) apart from the GPU actors. Reruns pay nothing for samples already answered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from sama.judging import (
    RUBRICS,
    CachedAnswers,
    JudgeCache,
    JudgeConfig,
    MalformedAnswer,
    Outcome,
    build_messages,
    parse_answer,
)
from sama.media import MediaError

from ..stage import Part
from .config import FilterConfig
from .samples import part_rows, screen

log = logging.getLogger(__name__)

# Ray Data's LLM processor, or anything with its contract: rows of to_request() in, rows of
# from_reply() out, or the request's row with ``__inference_error__`` set where it failed.
Engine = Callable[[Any], Any]
ERROR = "__inference_error__"


# --- pass 1: requests ------------------------------------------------------------------------------


def requests_of_part(row: dict, cfg: FilterConfig, cache_root: str) -> Iterator[dict]:
    """One request per sample of the part that passes the checks and has no cached answer.

    Samples that fail (bad media, failed checks, storage trouble) send nothing: pass 2
    decodes them again and records why."""
    cache = JudgeCache(cache_root, cfg.judge.model_label)
    part: Part = row["part"]
    rows = [r for r in part_rows(part.spec, cfg.datasets) if cache.get(r["sample_id"], RUBRICS[r["task"]]) is None]

    def request(row: dict) -> dict | None:
        try:
            result, frames = screen(row, cfg.checks, cfg.judge)
        except MediaError:
            return None
        except Exception as e:  # noqa: BLE001 - pass 2 meets the same trouble and records it
            log.warning("judge requests: %s: %s", row["sample_id"], e)
            return None
        if result is not None and result.failed:
            return None
        messages = build_messages(RUBRICS[row["task"]], row["instruction"], frames, cfg.judge)
        # As a JSON string: a chat's content parts mix shapes, which Arrow columns do not.
        return {"sample_id": row["sample_id"], "task": row["task"], "messages": json.dumps(messages)}

    with ThreadPoolExecutor(cfg.decode_threads) as pool:
        yield from (r for r in pool.map(request, rows) if r is not None)


def to_request(row: dict, cfg: JudgeConfig) -> dict:
    """The processor's preprocess: chat messages + sampling parameters (the rubric's JSON schema
    as structured output, so the engine can only write a parseable answer)."""
    params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    if cfg.response_format == "json_schema":
        params["structured_outputs"] = {"json": RUBRICS[row["task"]].response_schema()}
    elif cfg.response_format == "json_object":
        params["structured_outputs"] = {"json_object": True}
    return {
        "sample_id": row["sample_id"],
        "task": row["task"],
        "messages": json.loads(row["messages"]),
        "sampling_params": params,
    }


def from_reply(row: dict) -> dict:
    """The processor's postprocess: keep what identifies the sample, and the answer text."""
    return {"sample_id": row["sample_id"], "task": row["task"], "text": row.get("generated_text") or ""}


def record(row: dict, cache_root: str, model_label: str) -> dict:
    """Cache a valid answer; otherwise say why there is none (``error``: "" when answered)."""
    if row.get(ERROR):
        return {"sample_id": row["sample_id"], "error": f"engine error: {str(row[ERROR])[:300]}"}
    rubric = RUBRICS[row["task"]]
    try:
        answer = parse_answer(row["text"], rubric)
    except MalformedAnswer as e:
        return {"sample_id": row["sample_id"], "error": f"malformed answer: {e}"}
    JudgeCache(cache_root, model_label).put(row["sample_id"], rubric, answer)
    return {"sample_id": row["sample_id"], "error": ""}


def processor_config(cfg: JudgeConfig):
    """Ray Data's vLLM processor settings: GPU actors running the judge model, images as data URLs,
    a failed row marked (``should_continue_on_error``) instead of failing the job."""
    from ray.data.llm import vLLMEngineProcessorConfig

    v = cfg.vllm
    return vLLMEngineProcessorConfig(
        model_source=v.model_source,
        batch_size=v.batch_size,
        concurrency=v.concurrency,
        accelerator_type=v.accelerator_type,
        prepare_multimodal_stage=True,
        should_continue_on_error=True,
        engine_kwargs={
            "tensor_parallel_size": v.tensor_parallel_size,
            "max_model_len": v.max_model_len,
            "limit_mm_per_prompt": {"image": 2 * cfg.frames},
            **v.engine_kwargs,
        },
    )


def vllm_engine(cfg: JudgeConfig) -> Engine:
    import importlib.util

    from ray.data.llm import build_processor

    if importlib.util.find_spec("vllm") is None:  # the cluster's image is this one: fail before any work
        raise RuntimeError(
            "filter.judge.backend=vllm needs vllm (pip install vllm, in the image of the GPU "
            "workers too), or use backend=openai against a vLLM server (vllm serve MODEL) with "
            "base_url=http://HOST:8000/v1"
        )
    return build_processor(processor_config(cfg), preprocess=partial(to_request, cfg=cfg), postprocess=from_reply)


def prejudge(
    parts: list[Part], cfg: FilterConfig, cache_root: str, engine: Engine | None = None
) -> tuple[int, dict[str, str]]:
    """Answer every unanswered sample of ``parts`` into the cache. Returns (requests sent,
    {sample_id: why it has no answer}). A malformed answer is asked again, in up to
    ``malformed_retries`` more rounds over the samples still without one."""
    import ray

    engine = engine or vllm_engine(cfg.judge)
    label = cfg.judge.model_label
    sent, failures = 0, {}
    for round_ in range(1 + cfg.judge.malformed_retries):
        ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True  # parts as objects
        requests = ray.data.from_items([{"part": p} for p in parts]).flat_map(
            partial(requests_of_part, cfg=cfg, cache_root=cache_root), num_cpus=cfg.task_cpus
        )
        results = engine(requests).map(partial(record, cache_root=cache_root, model_label=label))
        asked, failures = 0, {}
        for r in results.iter_rows():  # streamed: only the failures stay in memory
            asked += 1
            if r["error"]:
                failures[r["sample_id"]] = r["error"]
        sent += asked
        log.info("judge (in-cluster) round %d: %d request(s), %d without an answer", round_ + 1, asked, len(failures))
        if asked and len(failures) == asked:  # recorded as judge_error by pass 2 and asked again next run
            log.warning(
                "judge (in-cluster, %s): none of %d request(s) got a valid answer; e.g. %s",
                cfg.judge.vllm.model_source,
                asked,
                next(iter(failures.items())),
            )
        if not any(e.startswith("malformed") for e in failures.values()):
            break
    return sent, failures


# --- pass 2: decisions from the cache ---------------------------------------------------------------


class CachedJudge(CachedAnswers):
    """The per-part judge of pass 2: answers only from the cache, sends nothing."""

    def __init__(self, cfg: JudgeConfig, cache_root: str, failures: dict[str, str]):
        super().__init__(cfg, cache_root)
        self.failures = failures

    async def judge(self, sample_id: str, task: str, instruction: str, frames: dict) -> Outcome:
        cached = await self.cached(sample_id, RUBRICS[task])
        if cached is not None:
            return cached
        why = self.failures.get(sample_id, "no answer from the in-cluster judge (its request was not made)")
        return Outcome(error=why, attempts=0)
