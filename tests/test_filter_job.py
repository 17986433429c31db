"""`sama run jobs/filter.yaml` end to end on the ingest output of every look-alike dataset."""

import json
import os

import pytest

from sama import storage
from sama.jobs import launcher
from sama.jobs.demo import job_yaml
from sama.schemas import MANIFEST, VERDICTS, read_table

pytestmark = pytest.mark.slow
KEY = "sk-job-test-key-9876543210"


@pytest.fixture(scope="module")
def ingested(lookalikes_manifest):
    return lookalikes_manifest


def run_filter(manifest: str, out: str, *extra: str) -> dict:
    return launcher.run(
        job_yaml("filter"),
        [f"output={out}", f"filter.input={manifest}", "filter.shard_size=4", "filter.checks.min_short_side=32", *extra],
    )


def outcome(out: str, manifest: str):
    """Verdicts and filtered manifest, checked for the invariants every run must hold."""
    v = read_table(storage.join(out, "verdicts"), VERDICTS).to_pandas()
    ids = read_table(manifest, MANIFEST)["sample_id"].to_pylist()
    assert sorted(v.sample_id) == sorted(ids)  # every sample exactly one verdict: nothing lost, nothing twice
    kept = read_table(storage.join(out, "manifest"), MANIFEST)["sample_id"].to_pylist()
    assert sorted(kept) == sorted(v.sample_id[v.verdict == "keep"])
    return v.set_index("sample_id")


def mtimes(out: str) -> dict:
    return {
        p: os.path.getmtime(p)
        for p in storage.list_files(out)
        if "/_work/" in p or "/verdicts/" in p or "/manifest/" in p
    }


def test_cheap_checks_only_rerun_resume(ingested, tmp_path):
    out = str(tmp_path / "f")
    s = run_filter(ingested, out, "filter.checks.min_frames=12")
    v = outcome(out, ingested)
    assert set(v.judge_model) == {"none:cheap-checks-only"} and v.rubric_version.isna().all()
    short = v[v.verdict == "drop"]
    assert set(short.dataset) == {"motionbench", "reco"} and len(short) == 9  # 9-frame clips
    assert all(r.tolist() == ["too_short"] for r in short.reasons) and all("9 frames" in d for d in short.detail)
    assert s["datasets"]["reco"] == {"keep": 0, "drop": 8, "error": 0, "reasons": {"too_short": 8}}
    assert v.sharpness.notna().all() and v.edit_diff[v.task != "t2v"].gt(0.01).all()
    report = open(os.path.join(out, "report", "index.html")).read()
    assert "koala36m" in report and "hist-koala36m-motion.png" in report
    assert "drop: too_short <span class=n>(8)</span>" in report and "all 8 samples" in report
    assert "ingest rejected: " in report  # the ingest job's rejects, found beside its manifest
    assert os.path.getsize(os.path.join(out, "report", "hist-koala36m-motion.png")) > 100

    before = mtimes(out)
    assert run_filter(ingested, out, "filter.checks.min_frames=12")["parts_run"] == 0
    assert mtimes(out) == before  # nothing redone

    # a run killed after a part's verdicts but before its marker: only that part is redone
    done = sorted(p for p in before if "/_work/done/" in p)
    os.remove(done[0])
    assert run_filter(ingested, out, "filter.checks.min_frames=12")["parts_run"] == 1
    outcome(out, ingested)

    # new settings redo everything; a new part size leaves no stale part behind
    first = s["provenance"]
    s = run_filter(ingested, out, "filter.shard_size=3")
    # The threshold changed (min_frames 12 -> 9): the recorded config digest changes, the input's does not.
    assert s["provenance"]["config_digest"] != first["config_digest"]
    assert s["provenance"]["inputs"] == first["inputs"] == [{"uri": ingested, "digest": first["inputs"][0]["digest"]}]
    assert s["provenance"]["judge_model"] == "none:cheap-checks-only" and s["provenance"]["rubric_versions"]
    assert s["parts_run"] == s["parts"] and sum(d["keep"] for d in s["datasets"].values()) == len(v)
    outcome(out, ingested)


def test_judge_over_http_errors_retry_cache_and_no_key_leak(ingested, tmp_path, judge_server, monkeypatch, capfd):
    monkeypatch.setenv("SAMA_JUDGE_KEY", KEY)
    out = str(tmp_path / "j")
    args = [
        "filter.judge.backend=openai",
        f"filter.judge.base_url={judge_server.base_url}",
        "filter.judge.model=fake-vlm",
        "filter.judge.api_key_env=SAMA_JUDGE_KEY",
        "filter.judge.malformed_retries=1",
        "filter.judge.backoff_base=0.01",
        "filter.judge.timeout=5",
    ]
    judge_server.reset_stats()
    judge_server.script(
        [("watercolor", ["low"]), ("snowy", ["malformed"]), ("sky purple", ["status:429:0.2", "status:500", "ok"])]
    )
    s = run_filter(ingested, out, *args)
    v = outcome(out, ingested)
    assert set(v.judge_model) == {"openai:fake-vlm"}
    assert set(v.rubric_version) == {"video_edit-v1", "image_edit-v1", "t2v-v1"}
    assert set(v[v.dataset == "ditto1m"].verdict) == {"drop"}
    assert all("judge:overall<0.6" in r for r in v[v.dataset == "ditto1m"].reasons)
    err = v[v.dataset == "pico_banana"]
    assert set(err.verdict) == {"error"} and all(r.tolist() == ["judge_error"] for r in err.reasons)
    assert all(e.startswith("malformed answer") for e in err.error)
    ok = v[~v.dataset.isin(["ditto1m", "pico_banana"])]
    assert set(ok.verdict) == {"keep"} and ok.overall.eq(1.0).all()
    assert v[v.dataset == "x2edit"].judge_attempts.max() >= 2  # a 429 and a 500 retried, nothing lost
    assert s["datasets"]["pico_banana"]["error"] == 2
    first = judge_server.requests

    # rerun: only the parts holding errors run, and only their errors are asked again (the rest is cached)
    judge_server.script([])
    judge_server.reset_stats()
    s = run_filter(ingested, out, *args)
    assert judge_server.requests == 2 and s["parts_run"] == 1
    assert set(outcome(out, ingested).loc[err.index].verdict) == {"keep"}
    judge_server.reset_stats()
    assert run_filter(ingested, out, *args)["judge_requests"] == 0 and judge_server.requests == 0

    # the key went to the server, and nowhere else
    assert first > 24 and {x.auth for x in judge_server.seen} <= {f"Bearer {KEY}"}
    logs = capfd.readouterr()
    assert KEY not in logs.out and KEY not in logs.err
    for d, _, files in os.walk(out):
        for f in files:
            assert KEY.encode() not in open(os.path.join(d, f), "rb").read(), f
    import ray

    log_dir = ray._private.worker.global_worker.node.get_logs_dir_path()
    for d, _, files in os.walk(log_dir):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                assert KEY.encode() not in fh.read(), f


def fake_vlm(jc, log_dir: str, rules: dict[str, list[str]]):
    """An engine with the vLLM processor's contract, answering by script (like the HTTP judge server):
    the first rule whose text is in the prompt gives the n-th behaviour on its n-th request (the last
    repeats): ok (top scores), low (bottom scores) or malformed. Every request is logged as a file."""
    import uuid

    from sama.pipelines.filter.vllm_judge import from_reply, to_request

    def generate(row: dict) -> dict:
        req = to_request(row, jc)
        user = req["messages"][-1]["content"]
        prompt = user[0]["text"]
        key = next((k for k in rules if k in prompt), None)
        with open(os.path.join(log_dir, f"{row['sample_id']}.{uuid.uuid4().hex}.json"), "w") as f:
            json.dump({"images": sum(p["type"] == "image_url" for p in user), "params": req["sampling_params"]}, f)
        n = sum(name.startswith(row["sample_id"] + ".") for name in os.listdir(log_dir))
        behaviour = rules[key][min(n, len(rules[key])) - 1] if key else "ok"
        schema = req["sampling_params"]["structured_outputs"]["json"]["properties"]
        pick = "maximum" if behaviour == "ok" else "minimum"
        answer = {
            "scores": {k: v[pick] for k, v in schema["scores"]["properties"].items()},
            "reason": behaviour,
            **({"flags": {k: False for k in schema["flags"]["properties"]}} if "flags" in schema else {}),
        }
        text = "I think it is fine" if behaviour == "malformed" else json.dumps(answer)
        return from_reply({**req, "generated_text": text})

    return lambda ds: ds.map(generate)


def test_judge_in_cluster_through_the_llm_processor_contract(ingested, tmp_path):
    """backend=vllm: pass 1 answers into the cache through an engine with Ray Data LLM's contract,
    pass 2 decides from it; malformed answers get another round, then become judge_error."""
    cfg, entry = launcher.resolve(
        job_yaml("filter"),
        [
            f"output={tmp_path / 'v'}",
            f"filter.input={ingested}",
            "filter.shard_size=4",
            "filter.checks.min_short_side=32",
            "filter.judge.backend=vllm",
            "filter.judge.vllm.model_source=fake/vlm",
            "filter.judge.malformed_retries=1",
        ],
    )
    log_dir = str(tmp_path / "requests")
    os.makedirs(log_dir)
    engine = fake_vlm(
        cfg.filter.judge, log_dir, {"watercolor": ["low"], "snowy": ["malformed"], "sky purple": ["malformed", "ok"]}
    )
    s = entry(cfg, engine=engine)
    v = outcome(cfg.output, ingested)
    assert set(v.judge_model) == {"vllm:fake/vlm"} and s["judge_model"] == "vllm:fake/vlm"
    requests = [json.load(open(os.path.join(log_dir, f))) for f in os.listdir(log_dir)]
    assert s["judge_requests"] == len(requests) > 24
    assert {r["images"] for r in requests} == {2, 4, 8}  # image edit: 1 + 1; t2v: 4 of the clip; video edit: 4 + 4
    assert all(r["params"]["structured_outputs"]["json"]["required"][0] == "scores" for r in requests)
    assert set(v[v.dataset == "ditto1m"].verdict) == {"drop"}
    assert all("judge:overall<0.6" in r for r in v[v.dataset == "ditto1m"].reasons)
    err = v[v.dataset == "pico_banana"]
    assert set(err.verdict) == {"error"} and all(e.startswith("malformed answer") for e in err.error)
    x2 = v[v.dataset == "x2edit"]
    assert set(x2.verdict) == {"keep"}  # malformed once, answered in the second round
    assert sum(f.split(".")[0] in set(x2.index) for f in os.listdir(log_dir)) == 2 * len(x2)

    # rerun where every sample asked stays malformed: recorded again, nothing lost, the job goes on
    before = len(os.listdir(log_dir))
    s = entry(cfg, engine=fake_vlm(cfg.filter.judge, log_dir, {"snowy": ["malformed"]}))
    assert len(os.listdir(log_dir)) - before == 2 * len(err) == s["judge_requests"]  # two rounds
    assert set(outcome(cfg.output, ingested).loc[err.index].verdict) == {"error"}

    # rerun: only the parts with errors run, and only their samples are asked again
    before = len(os.listdir(log_dir))
    s = entry(cfg, engine=fake_vlm(cfg.filter.judge, log_dir, {}))
    assert len(os.listdir(log_dir)) - before == len(err) == s["judge_requests"]
    assert set(outcome(cfg.output, ingested).loc[err.index].verdict) == {"keep"}


def test_bad_config_fails_clearly(ingested, tmp_path, monkeypatch):
    from sama.config import ConfigError

    with pytest.raises(RuntimeError, match="backend=vllm needs vllm"):
        run_filter(ingested, str(tmp_path / "v"), "filter.judge.backend=vllm")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR is not set"):
        run_filter(
            ingested, str(tmp_path / "k"), "filter.judge.backend=openai", "filter.judge.api_key_env=NO_SUCH_KEY_VAR"
        )
    with pytest.raises(ConfigError, match="filter.checks.skip"):
        run_filter(ingested, str(tmp_path / "c"), "filter.checks.skip=[nonsense]")
    with pytest.raises(FileNotFoundError, match="no manifest Parquet files"):
        run_filter(str(tmp_path / "empty"), str(tmp_path / "e"))
