"""The VLM judge, shared by every job that asks one: the client for any OpenAI-compatible
endpoint (``client``), the rubrics and how answers decide (``rubrics``), and the API key
kept in memory only (``Secret``)."""

from .client import (
    NO_JUDGE_MODEL,
    CachedAnswers,
    Judge,
    JudgeCache,
    JudgeConfig,
    Outcome,
    Secret,
    VLLMConfig,
    api_key,
    build_messages,
)
from .rubrics import EVAL_RUBRICS, RUBRICS, Answer, KeepRule, MalformedAnswer, Rubric, decide, parse_answer

__all__ = [
    "NO_JUDGE_MODEL",
    "CachedAnswers",
    "Judge",
    "JudgeCache",
    "JudgeConfig",
    "Outcome",
    "Secret",
    "VLLMConfig",
    "api_key",
    "build_messages",
    "EVAL_RUBRICS",
    "RUBRICS",
    "Answer",
    "KeepRule",
    "MalformedAnswer",
    "Rubric",
    "decide",
    "parse_answer",
]
