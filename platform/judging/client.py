"""The VLM judge over any OpenAI-compatible chat endpoint (OpenAI, Azure, a vLLM server).

One :class:`Judge` per worker keeps many requests in flight on one event loop,
bounded by ``concurrency``. Each request carries a few uniformly sampled frames of
source and target (JPEG data URLs) and the rubric; the reply must be one JSON object
(``response_format`` json_schema by default) that :func:`rubrics.parse_answer` validates.

Failures never vanish: 429 / 5xx / timeouts / connection errors are retried with
exponential backoff and jitter (a server's Retry-After is honoured); a malformed
reply is asked again; what still fails becomes an :class:`Outcome` with ``error``
set, which the job records as ``judge_error`` (and retries on the next run).
Valid answers are cached by (sample_id, rubric version, model), so reruns and
resumes never pay twice.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import email.utils
import io
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np

from sama import storage
from sama.media import sample_indices

from .rubrics import RUBRICS, Answer, KeepRule, MalformedAnswer, Rubric, decide, parse_answer

log = logging.getLogger(__name__)

NO_JUDGE_MODEL = "none:cheap-checks-only"


@dataclass
class VLLMConfig:
    """In-cluster judge through Ray Data's LLM processor (vLLM on GPU actors; see vllm_judge.py)."""

    model_source: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # a local folder or hub id the GPU nodes can read
    tensor_parallel_size: int = 1
    batch_size: int = 16  # prompts per engine batch
    concurrency: int = 1  # vLLM engine replicas (each tensor_parallel_size GPUs)
    max_model_len: int = 16384
    accelerator_type: Optional[str] = None  # e.g. H100: pin the engines to that GPU type
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # more vllm.EngineArgs


@dataclass
class JudgeConfig:
    backend: Literal["none", "openai", "vllm"] = "none"  # none: cheap checks only (no key, no model)
    model: str = "gpt-4o-mini"
    base_url: str | None = None  # null: the client's default (api.openai.com or $OPENAI_BASE_URL)
    api_key_env: str | None = "OPENAI_API_KEY"  # the env var holding the key; null: endpoint needs none
    frames: int = 4  # frames per side sent to the judge
    max_side: int = 448  # JPEG long side, pixels
    jpeg_quality: int = 85
    concurrency: int = 16  # requests in flight per worker
    timeout: float = 60.0  # seconds per request
    max_retries: int = 6  # transient failures (429, 5xx, timeouts) per sample
    malformed_retries: int = 2  # asks again after a reply that is not a valid answer
    backoff_base: float = 1.0  # seconds; attempt k waits ~ base * 2^k (with jitter)
    backoff_max: float = 60.0
    max_retry_after: float = 300.0  # cap on a server's Retry-After
    max_tokens: int = 400
    temperature: float = 0.0
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    cache: str | None = None  # verdict cache folder; null: <output>/_cache/judge
    keep: KeepRule = field(default_factory=KeepRule)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def validate(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if self.max_retries < 0 or self.malformed_retries < 0:
            raise ValueError("max_retries and malformed_retries must be >= 0")

    @property
    def model_label(self) -> str:
        if self.backend == "vllm":
            return f"vllm:{self.vllm.model_source}"
        return NO_JUDGE_MODEL if self.backend == "none" else f"{self.backend}:{self.model}"


class Secret:
    """A string that never prints itself (repr, str, logs, tracebacks, configs)."""

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


def api_key(cfg: JudgeConfig) -> Secret:
    """The key from the environment variable the config names (read once, by the driver)."""
    if cfg.api_key_env is None:
        return Secret("EMPTY")  # local vLLM servers accept any key
    value = os.environ.get(cfg.api_key_env)
    if not value:
        raise ValueError(
            f"judge.api_key_env: environment variable {cfg.api_key_env} is not set "
            "(set it, or api_key_env=null for an endpoint without auth)"
        )
    return Secret(value)


# --- cache -----------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] + "-" + storage.content_digest(text, n=6)


class JudgeCache:
    """One small JSON per answered sample: ``<root>/<model>/<rubric version>/<sample_id>.json``."""

    def __init__(self, root: str, model: str):
        self.root = storage.join(root, _slug(model))

    def _uri(self, sample_id: str, rubric: Rubric) -> str:
        return storage.join(self.root, rubric.version, f"{sample_id}.json")

    def get(self, sample_id: str, rubric: Rubric) -> Answer | None:
        try:
            data = json.loads(storage.read_text(self._uri(sample_id, rubric)))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # a damaged entry is re-asked, not trusted
            return None
        return Answer(data["scores"], data.get("flags", {}), data.get("reason", ""))

    def put(self, sample_id: str, rubric: Rubric, answer: Answer) -> None:
        storage.write_text(self._uri(sample_id, rubric), json.dumps(answer.to_json()))


# --- request building ------------------------------------------------------------------------------


def jpeg_data_urls(frames: np.ndarray, n: int, max_side: int, quality: int) -> list[str]:
    """``n`` uniformly picked frames of (T, H, W, 3) uint8 as base64 JPEG data URLs."""
    from PIL import Image

    out = []
    for i in sample_indices(len(frames), n):
        img = Image.fromarray(frames[i])
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def build_messages(rubric: Rubric, instruction: str, frames: dict[str, np.ndarray], cfg: JudgeConfig) -> list[dict]:
    src = jpeg_data_urls(frames["source"], cfg.frames, cfg.max_side, cfg.jpeg_quality) if "source" in frames else []
    tgt = jpeg_data_urls(frames["target"], cfg.frames, cfg.max_side, cfg.jpeg_quality)
    content: list[dict] = [{"type": "text", "text": rubric.prompt(instruction, len(src), len(tgt))}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in src + tgt]
    return [{"role": "system", "content": rubric.system}, {"role": "user", "content": content}]


def response_format(rubric: Rubric, kind: str) -> dict | None:
    if kind == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "name": rubric.version.replace("-", "_"),
                "strict": True,
                "schema": rubric.response_schema(),
            },
        }
    if kind == "json_object":
        return {"type": "json_object"}
    return None


# --- the judge -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    answer: Answer | None = None
    keep: bool | None = None
    overall: float | None = None
    reasons: list[str] = field(default_factory=list)
    error: str | None = None  # set when no valid answer was had: recorded as judge_error
    attempts: int = 0
    cached: bool = False


def retry_after(exc: Exception) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms`` or ``retry-after``: seconds or a date)."""
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None) or {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _transient(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    msg = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "") + (f": {msg}" if msg else "")


class CachedAnswers(abc.ABC):
    """What every judge shares: the answer cache, and decisions from cached answers."""

    def __init__(self, cfg: JudgeConfig, cache_root: str):
        self.cfg = cfg
        self.cache = JudgeCache(cache_root, cfg.model_label)
        self.requests = 0  # requests sent (for summaries and tests)

    async def cached(self, sample_id: str, rubric: Rubric) -> Outcome | None:
        answer = await asyncio.to_thread(self.cache.get, sample_id, rubric)
        if answer is None:
            return None
        keep, overall, reasons = decide(answer, rubric, self.cfg.keep)
        return Outcome(answer, keep, overall, reasons, cached=True)

    @abc.abstractmethod
    async def judge(
        self, sample_id: str, task: str | Rubric, instruction: str, frames: dict[str, np.ndarray]
    ) -> Outcome:
        """One sample's outcome: an answer and the keep decision, or an error."""

    def scrub(self, text: str) -> str:
        return text

    async def close(self) -> None:  # noqa: B027 - nothing to close unless a client was opened
        pass


class Judge(CachedAnswers):
    """Async judge for one worker. Build inside the worker; ``close()`` when done."""

    def __init__(self, cfg: JudgeConfig, key: Secret, cache_root: str):
        from openai import AsyncOpenAI

        super().__init__(cfg, cache_root)
        self._key = key
        # Retries are ours (to honour Retry-After, count attempts and record errors), so the client's are off.
        from openai.types.chat import ChatCompletion

        self.client = AsyncOpenAI(api_key=key.get(), base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout)
        self._completion = ChatCompletion
        self.slots = asyncio.Semaphore(cfg.concurrency)

    def scrub(self, text: str) -> str:
        """Defence in depth: an error text echoing the key never reaches a table or a log."""
        k = self._key.get()
        return text.replace(k, "***") if k and len(k) >= 4 else text

    def _backoff(self, attempt: int) -> float:
        d = min(self.cfg.backoff_max, self.cfg.backoff_base * (2**attempt))
        return d / 2 + random.uniform(0, d / 2)  # "equal jitter": grows, yet spreads retries apart

    async def _ask(self, messages: list[dict], rubric: Rubric) -> str | None:
        fmt = response_format(rubric, self.cfg.response_format)
        extra = {"response_format": fmt} if fmt else {}
        body = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            **extra,
        }
        async with self.slots:  # held only while a request is in flight, never while backing off
            self.requests += 1
            # client.post, not chat.completions.create: same auth, errors and response type, but the body
            # is sent as built; create() walks every node of messages + schema against its type hints,
            # which costs more CPU than the rest of a request (it capped one worker near 100 req/s).
            resp = await self.client.post("/chat/completions", cast_to=self._completion, body=body)
        return resp.choices[0].message.content if resp.choices else None

    async def judge(
        self, sample_id: str, task: str | Rubric, instruction: str, frames: dict[str, np.ndarray]
    ) -> Outcome:
        """``task`` names a filter rubric, or is a :class:`Rubric` (the evaluation job's)."""
        rubric = task if isinstance(task, Rubric) else RUBRICS[task]
        cached = await self.cached(sample_id, rubric)
        if cached is not None:
            return cached
        messages = await asyncio.to_thread(build_messages, rubric, instruction, frames, self.cfg)
        transient = malformed = attempts = 0
        last = ""
        while True:
            attempts += 1
            try:
                text = await self._ask(messages, rubric)
                answer = parse_answer(text, rubric)
            except MalformedAnswer as e:
                malformed += 1
                last = f"malformed answer: {e}"
                if malformed > self.cfg.malformed_retries:
                    break
                continue
            except Exception as e:  # noqa: BLE001 - classified below; nothing escapes unrecorded
                last = _describe(e)
                if not _transient(e) or transient >= self.cfg.max_retries:
                    break
                wait = retry_after(e)
                wait = min(wait, self.cfg.max_retry_after) if wait is not None else self._backoff(transient)
                transient += 1
                log.info("judge %s: %s; retry %d in %.2fs", sample_id, last, transient, wait)
                await asyncio.sleep(wait)
                continue
            await asyncio.to_thread(self.cache.put, sample_id, rubric, answer)
            keep, overall, reasons = decide(answer, rubric, self.cfg.keep)
            return Outcome(answer, keep, overall, reasons, attempts=attempts)
        return Outcome(error=self.scrub(f"{last} (after {attempts} attempt(s))"), attempts=attempts)

    async def close(self) -> None:
        await self.client.close()
