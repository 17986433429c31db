"""The VLM judge over real HTTP (the openai client) against a scriptable local server."""

import asyncio
import time

import pytest

from sama.judging import RUBRICS, Answer, Judge, JudgeConfig, KeepRule, MalformedAnswer, Secret, decide, parse_answer
from sama.testing.media import frames_array

KEY = "sk-test-0123456789-secret"
FRAMES = {"source": frames_array(6, 64, 48, seed=1), "target": frames_array(6, 64, 48, seed=2)}


@pytest.fixture
def fake(judge_server):
    judge_server.script([])
    judge_server.reset_stats()
    judge_server.latency = 0.0
    return judge_server


def cfg(server, **kw) -> JudgeConfig:
    base = dict(
        backend="openai",
        model="fake-vlm",
        base_url=server.base_url,
        concurrency=8,
        timeout=2.0,
        max_retries=3,
        malformed_retries=1,
        backoff_base=0.05,
        backoff_max=1.0,
    )
    base.update(kw)
    return JudgeConfig(**base)


def judge_all(c: JudgeConfig, cache: str, instructions: list[str], task: str = "video_edit"):
    async def go():
        j = Judge(c, Secret(KEY), cache)
        try:
            return await asyncio.gather(
                *(j.judge(f"s{i}", task, text, FRAMES) for i, text in enumerate(instructions))
            ), j.requests
        finally:
            await j.close()

    return asyncio.run(go())


def gaps(server, text: str) -> list[float]:
    t = [s.at for s in server.seen if text in s.prompt]
    return [b - a for a, b in zip(t, t[1:])]


def test_good_answers_kept_low_dropped_key_sent(fake, tmp_path):
    fake.script([("dull", ["low"])])
    outs, n = judge_all(cfg(fake), str(tmp_path), ["make it snowy", "dull edit", "paint it red"])
    assert n == 3 and [o.keep for o in outs] == [True, False, True]
    assert outs[0].answer.scores == {"instruction_compliance": 5.0, "fidelity": 5.0, "visual_quality": 5.0}
    assert outs[0].overall == 1.0 and outs[1].overall == 0.0
    assert "judge:overall<0.6" in outs[1].reasons and "judge:instruction_compliance<0.5" in outs[1].reasons
    prompt = fake.seen[0].prompt
    assert "Edit instruction:" in prompt and "SOURCE" in prompt and "video_edit" not in prompt
    assert all(s.auth == f"Bearer {KEY}" for s in fake.seen)


def test_every_task_and_fenced_json_object_format(fake, tmp_path):
    fake.script([], default="fenced")
    for task in RUBRICS:
        frames = FRAMES if task != "t2v" else {"target": FRAMES["target"]}
        c = cfg(fake, response_format="json_object")

        async def go(c=c, task=task, frames=frames):
            j = Judge(c, Secret(KEY), str(tmp_path))
            try:
                return await j.judge(f"x-{task}", task, "a cat walks", frames)
            finally:
                await j.close()

        o = asyncio.run(go())
        assert o.keep and o.error is None, (task, o)
    assert "Caption: a cat walks" in fake.seen[-1].prompt


def test_concurrency_is_bounded_and_used(fake, tmp_path):
    fake.latency = 0.1
    t0 = time.monotonic()
    outs, n = judge_all(cfg(fake, concurrency=4), str(tmp_path), [f"edit {i}" for i in range(20)])
    elapsed = time.monotonic() - t0
    assert n == 20 and all(o.keep for o in outs)
    assert fake.peak_in_flight == 4
    assert elapsed < 20 * 0.1 / 2  # parallel, not one at a time


def test_retries_with_backoff_and_retry_after(fake, tmp_path):
    fake.script(
        [("five", ["status:500", "status:503", "ok"]), ("rate", ["status:429:1", "ok"]), ("slow", ["sleep:5", "ok"])]
    )
    outs, n = judge_all(cfg(fake, timeout=0.5), str(tmp_path), ["five hundred", "rate limited", "slow server"])
    assert [o.keep for o in outs] == [True, True, True] and [o.attempts for o in outs] == [3, 2, 2]
    g5 = gaps(fake, "five")
    assert g5[0] >= 0.025 and g5[1] >= 0.05  # equal jitter: at least half of base * 2^k
    assert gaps(fake, "rate")[0] >= 1.0  # Retry-After honoured
    assert n == 7


def test_failures_end_as_recorded_errors(fake, tmp_path):
    fake.script(
        [
            ("gibberish", ["malformed"]),
            ("partial", ["wrong"]),
            ("down", ["status:500"]),
            ("bad request", ["status:400"]),
            ("once", ["malformed", "ok"]),
        ]
    )
    outs, _ = judge_all(
        cfg(fake, max_retries=2, malformed_retries=2),
        str(tmp_path),
        ["gibberish", "partial", "down", "bad request", "once malformed"],
    )
    g, p, d, b, once = outs
    assert g.keep is None and g.error.startswith("malformed answer: not JSON") and g.attempts == 3
    assert "score 'instruction_compliance' missing" in p.error
    assert "InternalServerError (HTTP 500)" in d.error and d.attempts == 3
    assert "BadRequestError (HTTP 400)" in b.error and b.attempts == 1  # not retried
    assert once.keep and once.attempts == 2
    assert not any(KEY in (o.error or "") for o in outs)


def test_cache_by_sample_rubric_and_model(fake, tmp_path):
    texts = [f"edit {i}" for i in range(6)]
    fake.script([("edit 5", ["malformed"])])
    first, n1 = judge_all(cfg(fake, malformed_retries=0), str(tmp_path), texts)
    assert n1 == 6 and first[5].error
    again, n2 = judge_all(cfg(fake, malformed_retries=0), str(tmp_path), texts)
    assert n2 == 1  # only the error is asked again; answers come from the cache
    assert [o.cached for o in again[:5]] == [True] * 5 and [o.keep for o in again[:5]] == [o.keep for o in first[:5]]
    _, n3 = judge_all(cfg(fake, model="other-vlm"), str(tmp_path), texts[:2])
    assert n3 == 2  # another model is another cache entry
    strict = cfg(fake, keep=KeepRule(min_overall={"video_edit": 1.0}))
    fake.script([])
    outs, n4 = judge_all(strict, str(tmp_path), texts[:5])
    assert n4 == 0 and all(o.keep for o in outs)  # the keep rule applies to cached answers without asking


def test_parse_and_decide():
    r = RUBRICS["video_edit"]
    good = (
        '{"scores": {"instruction_compliance": 2, "fidelity": 5, "visual_quality": 4}, '
        '"flags": {"artifacts": false, "heavy_text": false, "flicker": true}, "reason": "ok"}'
    )
    a = parse_answer(good, r)
    keep, overall, reasons = decide(a, r, KeepRule())
    assert overall == pytest.approx(0.25)  # fidelity and quality capped by compliance (OpenVE rule)
    assert not keep and "judge_flag:flicker" in reasons
    for bad, why in [
        ("", "empty"),
        ("[1]", "scores"),
        ('{"scores": {"instruction_compliance": 6}}', "outside"),
        ('{"scores": {"instruction_compliance": 2.5}}', "integer"),
        (good.replace('"flicker": true', '"flicker": "yes"'), "flag 'flicker'"),
        (good.replace('"fidelity"', '"fidelity": 3, "extra"'), "unknown"),
    ]:
        with pytest.raises(MalformedAnswer, match=why):
            parse_answer(bad, r)
    img = RUBRICS["image_edit"]
    a = Answer(
        {"instruction_compliance": 10, "realism": 0, "preservation": 10, "technical_quality": 10},
        {"artifacts": False, "heavy_text": False},
    )
    assert decide(a, img, KeepRule())[1] == pytest.approx(0.75)  # weights 40/25/20/15


def test_config_and_key_handling(monkeypatch):
    from sama.config import ConfigError, from_dict
    from sama.judging import api_key

    with pytest.raises(ConfigError, match="thresholds are on normalised"):
        from_dict(JudgeConfig, {"keep": {"min_overall": {"t2v": 3}}})
    monkeypatch.delenv("SAMA_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="SAMA_TEST_KEY is not set"):
        api_key(JudgeConfig(api_key_env="SAMA_TEST_KEY"))
    monkeypatch.setenv("SAMA_TEST_KEY", KEY)
    s = api_key(JudgeConfig(api_key_env="SAMA_TEST_KEY"))
    assert s.get() == KEY and KEY not in repr(s) and KEY not in str(s) and KEY not in f"{[s]}"


# --- the in-cluster judge (Ray Data LLM + vLLM): what we hand the processor, and what we make of its rows


def test_in_cluster_requests_carry_the_rubric_schema_and_replies_land_in_the_cache(tmp_path):
    import json

    from sama.judging import JudgeCache, build_messages
    from sama.pipelines.filter.vllm_judge import ERROR, from_reply, record, to_request

    jc = JudgeConfig(backend="vllm", frames=3, max_tokens=123)
    frames = {"source": frames_array(5, 40, 32, seed=1), "target": frames_array(5, 40, 32, seed=2)}
    row = {
        "sample_id": "s1",
        "task": "video_edit",
        "messages": json.dumps(build_messages(RUBRICS["video_edit"], "make it red", frames, jc)),
    }
    req = to_request(row, jc)
    system, user = req["messages"]
    assert system["role"] == "system" and "make it red" in user["content"][0]["text"]
    assert [p["type"] for p in user["content"][1:]] == ["image_url"] * 6
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in user["content"][1:])
    assert req["sampling_params"] == {
        "temperature": 0.0,
        "max_tokens": 123,
        "structured_outputs": {"json": RUBRICS["video_edit"].response_schema()},
    }
    assert to_request(row, JudgeConfig(response_format="none"))["sampling_params"].keys() == {
        "temperature",
        "max_tokens",
    }

    good = json.dumps(
        {
            "scores": {c.name: c.hi for c in RUBRICS["video_edit"].criteria},
            "flags": {n: False for n, _ in RUBRICS["video_edit"].flags},
            "reason": "fine",
        }
    )
    label = jc.model_label
    assert label == "vllm:Qwen/Qwen2.5-VL-7B-Instruct"
    assert record(from_reply({**req, "generated_text": good}), str(tmp_path), label) == {"sample_id": "s1", "error": ""}
    assert JudgeCache(str(tmp_path), label).get("s1", RUBRICS["video_edit"]).reason == "fine"
    bad = record(from_reply({**req, "sample_id": "s2", "generated_text": "{oops"}), str(tmp_path), label)
    assert bad["error"].startswith("malformed answer")
    failed = record({**req, "sample_id": "s3", ERROR: "CUDA out of memory"}, str(tmp_path), label)
    assert failed == {"sample_id": "s3", "error": "engine error: CUDA out of memory"}
    assert JudgeCache(str(tmp_path), label).get("s2", RUBRICS["video_edit"]) is None


def test_in_cluster_processor_is_ray_data_llm_on_vllm(ray_cluster):
    """The processor builds (no GPU needed to build it): multimodal prep, chat template, tokenizer,
    the vLLM engine on GPU actors with our engine settings, detokenizer."""
    from ray.data.llm import build_processor

    from sama.judging import VLLMConfig
    from sama.pipelines.filter.vllm_judge import from_reply, processor_config

    jc = JudgeConfig(
        backend="vllm",
        frames=4,
        vllm=VLLMConfig(
            model_source="/models/judge",
            tensor_parallel_size=1,
            batch_size=8,
            concurrency=3,
            engine_kwargs={"gpu_memory_utilization": 0.8},
        ),
    )
    config = processor_config(jc)
    assert (config.model_source, config.batch_size, config.concurrency) == ("/models/judge", 8, 3)
    assert config.should_continue_on_error
    assert (
        config.engine_kwargs.items()
        >= {
            "tensor_parallel_size": 1,
            "max_model_len": 16384,
            "limit_mm_per_prompt": {"image": 8},
            "gpu_memory_utilization": 0.8,
        }.items()
    )
    proc = build_processor(config, preprocess=lambda r: r, postprocess=from_reply)
    assert proc.list_stage_names() == [
        "PrepareMultimodalStage",
        "ChatTemplateStage",
        "TokenizeStage",
        "vLLMEngineStage",
        "DetokenizeStage",
    ]
    engine = proc.get_stage_by_name("vLLMEngineStage")
    assert engine.map_batches_kwargs["num_gpus"] == 1 and engine.map_batches_kwargs["compute"].max_size == 3
    assert engine.fn_constructor_kwargs["should_continue_on_error"]
    assert engine.fn_constructor_kwargs["engine_kwargs"]["limit_mm_per_prompt"] == {"image": 8}
