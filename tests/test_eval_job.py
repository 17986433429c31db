"""`sama run jobs/eval.yaml` end to end: tiny model on CPU, a local OpenAI-compatible judge, reruns, compare."""

from __future__ import annotations

import csv
import json
import os

import pandas as pd
import pytest

from sama import storage
from sama.jobs import launcher
from sama.jobs.demo import job_yaml
from sama.pipelines.evaluate.job import read_results
from sama.testing.media import write_video

pytestmark = pytest.mark.slow
KEY = "sk-eval-test-key-0123456789"
ITEMS = [
    ("a", "make the square red", "color"),
    ("b", "make it night", "color"),
    ("c", "add a hat", "add"),
    ("d", "remove the square", "remove"),
]


def write_set(root: str, items=ITEMS, extra: list[list[str]] = ()) -> str:
    rows = []
    for i, (item_id, instruction, category) in enumerate(items):
        src = os.path.join(root, f"{item_id}.mp4")
        if not os.path.exists(src):
            write_video(src, frames=5, width=64, height=64, seed=i)
        rows.append([f"{item_id}.mp4", instruction, category, item_id])
    path = os.path.join(root, f"set{len(items)}{'x' if extra else ''}.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["source", "instruction", "category", "id"], *rows, *extra])
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("bench"))


def run_eval(manifest: str, out: str, *extra: str) -> dict:
    return launcher.run(
        job_yaml("eval"), [f"output={out}", f"evaluate.manifest={manifest}", "evaluate.score.batch_size=4", *extra]
    )


def mtimes(out: str, sub: str) -> dict:
    return {p: os.path.getmtime(p) for p in storage.list_files(os.path.join(out, sub))}


def test_judged_run_tables_rerun_and_report(ray_cluster, bench, judge_server, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SAMA_EVAL_KEY", KEY)
    manifest, out = write_set(bench), str(tmp_path / "run")
    judge = [
        "evaluate.judge.backend=openai",
        f"evaluate.judge.base_url={judge_server.base_url}",
        "evaluate.judge.model=fake-vlm",
        "evaluate.judge.api_key_env=SAMA_EVAL_KEY",
        "evaluate.judge.malformed_retries=0",
        "evaluate.judge.backoff_base=0.01",
        "evaluate.judge.timeout=10",
    ]
    judge_server.reset_stats()
    judge_server.script(
        [("make it night", ["low"]), ("add a hat", ["malformed"]), ("remove the square", ["status:503", "ok"])]
    )
    # Each edit actor drives two processes (Ulysses over gloo), as a multi-GPU actor would.
    group = ["evaluate.edit.gpus_per_actor=2", "evaluate.edit.cfg_parallel=false", "evaluate.edit.num_cpus=0.25"]
    s = run_eval(manifest, out, *judge, *group)
    r = read_results(out).set_index("item_id").sort_index()
    assert list(r.index) == ["a", "b", "c", "d"] and set(r.judge_model) == {"openai:fake-vlm"}
    assert list(r.status) == ["ok", "ok", "error", "ok"] and r.at["c", "error_kind"] == "judge_error"
    assert set(r.at["a", "rubrics"]) == {"openve-v1", "reco-v1", "vie-v1"}
    top, low = dict(r.at["a", "judge_scores"]), dict(r.at["b", "judge_scores"])
    assert top == {
        "openve.instruction_compliance": 5,
        "openve.detail_fidelity": 5,
        "openve.visual_quality": 5,
        "openve.overall": 5,
        "reco.edit_accuracy": 10,
        "reco.naturalness": 10,
        "reco.quality": 10,
        "reco.overall": 10,
        "vie.instruction_following": 10,
        "vie.quality": 10,
    }
    assert low["openve.overall"] == 1 and low["reco.overall"] == 0 and low["vie.quality"] == 0
    assert r.at["d", "judge_attempts"] >= 4  # a 503 retried, nothing lost
    # every edit and its metrics are there; the tiny model's edits are noise, so fidelity is unmeasurable
    assert r.frames.eq(5).all() and r.height.eq(64).all() and r.temporal_consistency.notna().all()
    assert set(r.semantic_model) == {"none"} and r.semantic_score.isna().all()
    for p in list(r.edit_uri) + list(r.sheet_uri):
        assert os.path.getsize(p) > 500
    # per-category means by hand: color = mean(a, b); "overall" over the scored items
    t = pd.read_parquet(os.path.join(out, "by_category.parquet")).set_index("category")
    assert t.at["color", "openve.overall"] == pytest.approx(3.0) and t.at["color", "vie.quality"] == pytest.approx(5.0)
    assert t.at["overall", "n"] == 4 and t.at["overall", "errors"] == 1 and t.at["add", "errors"] == 1
    assert t.at["overall", "reco.overall"] == pytest.approx((10 + 0 + 10) / 3)
    assert s["items_run"] == 4 and s["errors"] == 1
    html = open(s["report"]).read()
    assert "make it night" in html and "sheets/" in html and "judge_error" in html
    printed = capfd.readouterr()
    assert "openve.overall" in printed.out and KEY not in printed.out + printed.err

    # rerun: only the failed item is scored again (its edit reused), its 3 rubrics asked once each
    edits = mtimes(out, "edits")
    judge_server.script([])
    judge_server.reset_stats()
    s = run_eval(manifest, out, *judge)
    assert s["items_run"] == 1 and judge_server.requests == 3 and s["errors"] == 0
    assert mtimes(out, "edits") == edits
    r2 = read_results(out)
    assert sorted(r2.item_id) == ["a", "b", "c", "d"] and len(storage.list_files(os.path.join(out, "results"))) == 4
    judge_server.reset_stats()
    assert run_eval(manifest, out, *judge)["items_run"] == 0 and judge_server.requests == 0

    # a smaller manifest: the dropped item's files go, nothing stale stays in the tables
    s = run_eval(write_set(bench, ITEMS[:3]), out, *judge)
    assert s["items_run"] == 0 and sorted(read_results(out).item_id) == ["a", "b", "c"]
    assert len(storage.list_files(os.path.join(out, "edits"), ".mp4")) == 3
    for d, _, files in os.walk(out):
        for f in files:
            assert KEY.encode() not in open(os.path.join(d, f), "rb").read(), f


def test_compare_two_checkpoints_metrics_only(ray_cluster, bench, tmp_path):
    from sama.models.tiny import save_tiny_checkpoint

    # + an item whose source is missing: that item's error, not the run's
    manifest = write_set(bench, extra=[["missing.mp4", "make it blue", "color", "gone"]])
    ckpt = save_tiny_checkpoint(str(tmp_path / "ckpt-seed1"), seed=1)
    a, b, cmp = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "cmp")
    sa = run_eval(manifest, a)  # the YAML's default: judge off, metrics only
    # the tiny checkpoint's semantic sizes (a real one keeps SigLIP so400m's 1152 / 1024)
    sb = run_eval(
        manifest,
        b,
        f"evaluate.model.checkpoint={ckpt}",
        "evaluate.model.transformer.semantic_dim=32",
        "evaluate.model.transformer.semantic_hidden_dim=32",
    )
    assert sa["judge_model"] == "none:off" and sb["model"] == "ckpt-seed1" and sa["edit_digest"] != sb["edit_digest"]
    ra = read_results(a).set_index("item_id")
    assert ra.judge_scores.isna().all() and set(ra.rubrics.map(len)) == {0}
    assert (ra.status == "ok").sum() == 4 and ra.at["gone", "error_kind"] == "source_error"
    assert "missing.mp4 does not exist" in ra.at["gone", "error"] and pd.isna(ra.at["gone", "edit_uri"])

    runs = f"compare.runs=[{a},{b}]"
    s = launcher.run(job_yaml("eval_compare"), [f"output={cmp}", runs])
    assert s["systems"] == ["tiny", "ckpt-seed1"] and s["items"] == {"tiny": 5, "ckpt-seed1": 5}
    assert s["errors"] == {"tiny": 1, "ckpt-seed1": 1}  # the missing source, in both
    board = pd.read_parquet(os.path.join(cmp, "leaderboard.parquet"))
    ta = pd.read_parquet(os.path.join(a, "by_category.parquet")).set_index("category")
    row = board[(board.system == "tiny") & (board.category == "overall") & (board.metric == "temporal_consistency")]
    assert row["mean"].iloc[0] == pytest.approx(ta.at["overall", "temporal_consistency"]) and row.n.iloc[0] == 4
    assert set(board.category) == {"color", "add", "remove", "overall"} and ta.at["color", "errors"] == 1
    wins = pd.read_parquet(os.path.join(cmp, "win_rates.parquet"))
    pair = wins[(wins.metric == "temporal_consistency")].set_index("system")
    assert pair.at["tiny", "win_rate"] == pytest.approx(1 - pair.at["ckpt-seed1", "win_rate"])
    assert (pair["items"] == 4).all()
    sheets = storage.list_files(os.path.join(cmp, "report", "sheets"), ".jpg")
    assert len(sheets) == 4 and "ckpt-seed1" in open(s["report"]).read()  # the missing one has no edits
    before = mtimes(cmp, "report/sheets")
    launcher.run(job_yaml("eval_compare"), [f"output={cmp}", runs])
    assert mtimes(cmp, "report/sheets") == before  # reused, not redrawn


def test_demo_step_metrics_only_with_a_semantic_encoder(ray_cluster, tmp_path):
    from test_eval_metrics import save_tiny_clip

    from sama.jobs.demo import run_eval_demo

    clip = save_tiny_clip(str(tmp_path / "clip"))
    res = run_eval_demo(str(tmp_path / "demo"), n=2, extra=[f"evaluate.metrics.semantic.model={clip}"])
    summary = json.loads(open(os.path.join(tmp_path, "demo", "outputs", "evaluate", "summary.json")).read())
    assert summary["judge_model"] == "none:off" and summary["items"] == 2 and summary["errors"] == 0
    assert os.path.exists(res["eval report"]) and os.path.exists(res["eval table"])
    r = read_results(res["eval results"].rsplit("/", 1)[0])
    assert set(r.semantic_model) == {clip} and r.semantic_score.between(-1, 1).all()


def test_bad_inputs_fail_clearly(ray_cluster, bench, tmp_path, monkeypatch):
    from sama.config import ConfigError
    from sama.pipelines.evaluate.manifest import ManifestError

    manifest = write_set(bench)
    with pytest.raises(ConfigError, match="unknown"):
        run_eval(manifest, str(tmp_path / "x"), "evaluate.rubrics=[openve,nope]")
    monkeypatch.delenv("NO_SUCH_EVAL_KEY", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_EVAL_KEY is not set"):
        run_eval(
            manifest,
            str(tmp_path / "k"),
            "evaluate.judge.backend=openai",
            "evaluate.judge.api_key_env=NO_SUCH_EVAL_KEY",
        )
    with pytest.raises(ManifestError, match="does not exist"):
        run_eval(str(tmp_path / "none.csv"), str(tmp_path / "n"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_model_retrained_into_the_same_folder_makes_new_edits(where, request, tmp_path):
    """The edit digest follows the weight files, not only the config's paths: rewriting a
    checkpoint's transformer (a rerun of training into the same export) means new edits; rewriting
    a file that holds no weights does not."""
    from sama.config import load
    from sama.models.tiny import save_tiny_checkpoint
    from sama.pipelines.evaluate.config import EvalJobConfig, edit_digest

    local = save_tiny_checkpoint(str(tmp_path / "ckpt"), seed=1)
    root = local if where == "local" else request.getfixturevalue("s3_bucket") + "/ckpt"

    def upload():
        if where == "s3":
            for d, _, files in os.walk(local):
                for f in files:
                    storage.upload_file(os.path.join(d, f), root + os.path.join(d, f)[len(local) :])

    def digest() -> str:
        cfg = load(EvalJobConfig, job_yaml("eval"), [f"evaluate.model.checkpoint={root}"])
        return edit_digest(cfg.evaluate)

    upload()
    before = digest()
    assert digest() == before  # stable while nothing changes
    with open(os.path.join(local, "transformer", "config.json"), "a") as f:
        f.write("\n")  # not a weight file
    upload()
    assert digest() == before
    save_tiny_checkpoint(str(tmp_path / "other"), seed=2)
    os.replace(
        tmp_path / "other" / "transformer" / "diffusion_pytorch_model.safetensors",
        os.path.join(local, "transformer", "diffusion_pytorch_model.safetensors"),
    )
    upload()
    assert digest() != before
