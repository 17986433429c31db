"""The training job end to end on 2 CPU workers (Ray Train + DeepSpeed over gloo):
stage 0 then stage 1 from stage 0's checkpoint, the export loaded back, an interrupted
run resumed from S3 with a worker killed on the way, matching the uninterrupted losses."""

import json
import os

import pytest
import torch

from sama import storage
from sama.jobs import launcher
from sama.jobs.demo import job_yaml
from sama.pipelines.train import checkpoint as checkpoints

pytestmark = pytest.mark.slow

STAGE0 = ["train.steps=6", "train.checkpoint.every=3", "train.debug.nan_at_steps=[2]"]


@pytest.fixture(scope="module")
def latents(lookalikes_manifest, tmp_path_factory):
    """Precompute of every task (small shards so each worker gets files of each source)."""
    root = tmp_path_factory.mktemp("train-data")
    launcher.run(
        job_yaml("precompute"),
        [f"precompute.manifest={lookalikes_manifest}", f"output={root}/pc", "precompute.shard_size=2"],
    )
    return f"{root}/pc/latents"


def sources(uri: str, stage: int) -> str:
    if stage == 0:
        return (
            f"train.data.sources=[{{name: image_edit, uri: {uri}, tasks: [image_edit]}}, "
            f"{{name: t2v, uri: {uri}, tasks: [t2v]}}]"
        )
    return (
        f"train.data.sources=[{{name: video_edit, uri: {uri}, tasks: [video_edit], weight: 0.8}}, "
        f"{{name: image_edit, uri: {uri}, tasks: [image_edit], weight: 0.2}}]"
    )


def train(stage: int, latents: str, output: str, *extra: str) -> dict:
    return launcher.run(job_yaml(f"train_stage{stage}"), [f"output={output}", sources(latents, stage), *extra])


def losses(output: str, run: str) -> dict[int, dict]:
    """The last logged metrics of every step (a restarted attempt re-logs the steps it repeats)."""
    out = {}
    for line in storage.read_text(storage.join(output, run, "metrics", "metrics.jsonl")).splitlines():
        m = json.loads(line)
        out[m["step"]] = m
    return out


@pytest.fixture(scope="module")
def stage0(latents, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("stage0"))
    summary = train(0, latents, out, *STAGE0)
    return out, summary


def test_stage0_then_stage1_and_the_export_loads(stage0, latents, tmp_path):
    out0, summary = stage0
    m = losses(out0, "stage0")
    assert sorted(m) == list(range(1, 7))
    assert m[6]["skipped_steps"] == 1 and m[2]["grad_norm"] != m[2]["grad_norm"]  # step 2 skipped (NaN)
    first, last = [m[s]["loss_fm"] for s in (1, 3)], [m[s]["loss_fm"] for s in (5, 6)]
    assert sum(last) / 2 < sum(first) / 2  # learning
    for s in m.values():
        assert {"loss", "loss_fm", "loss_sa", "lr", "samples_per_s", "tokens_per_s", "data_wait_frac"} <= s.keys()
        assert s["loss"] != s["loss"] or s["loss"] == pytest.approx(s["loss_fm"] + 0.1 * s["loss_sa"], rel=1e-5)
    assert m[1]["lr"] == pytest.approx(5e-4) and m[6]["lr"] == pytest.approx(1e-3)  # warmup 2 steps
    assert storage.list_files(storage.join(out0, "stage0", "metrics"), ".jsonl")
    assert any("tfevents" in f for f in storage.list_files(storage.join(out0, "stage0", "metrics")))
    ckpt = checkpoints.resolve(storage.join(out0, "stage0"))
    assert ckpt.endswith("step_00000006") and checkpoints.read_meta(ckpt)["world_size"] == 2

    # stage 1 (ZeRO-3, activation checkpointing) from stage 0's newest checkpoint
    out1 = str(tmp_path / "stage1")
    mlruns = f"file:{tmp_path}/mlruns"  # MLflow's local file store: works offline
    extra = ("train.steps=4", "train.checkpoint.every=2", f"train.init_from={out0}/stage0")
    train(1, latents, out1, *extra, f"train.tracking.mlflow_uri={mlruns}")
    m1 = losses(out1, "stage1")
    assert sorted(m1) == [1, 2, 3, 4] and all(v["loss"] == v["loss"] for v in m1.values())
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # as start_mlflow does for a file: URI
    client = MlflowClient(mlruns)
    (run,) = client.search_runs([client.get_experiment_by_name("sama").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss_fm")
    assert [h.step for h in history] == [1, 2, 3, 4] and history[-1].value == pytest.approx(m1[4]["loss_fm"])
    assert run.data.params["stage"] == "1" and run.data.params["optim.lr"] == "0.0005"
    assert run.info.run_name == "stage1"
    # stage 1 started from stage 0's weights: its EMA (decay 0.9998) is still next to stage 0's
    ema0, ema1 = checkpoints.ema_weights(ckpt), checkpoints.ema_weights(checkpoints.resolve(f"{out1}/stage1"))
    assert max((ema0[k] - ema1[k]).abs().max().item() for k in ema0) < 1e-3

    # the export: EMA weights in SAMA, in plain diffusers Wan, and through the job config the pipeline uses
    from diffusers import WanTransformer3DModel

    from sama.models.loading import load_transformer
    from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel

    export = f"{out1}/export"
    sama = SamaTransformer3DModel.from_pretrained(export, subfolder="transformer")
    for k, v in ema1.items():
        torch.testing.assert_close(sama.state_dict()[k], v)
    wan = WanTransformer3DModel.from_pretrained(f"{export}/transformer")
    torch.testing.assert_close(wan.state_dict()["proj_out.weight"], ema1["proj_out.weight"])
    model = load_transformer(SamaModelConfig(pretrained=export, semantic_dim=32, semantic_hidden_dim=32))
    out = model(
        torch.randn(1, 16, 1, 6, 10),
        torch.tensor([500.0]),
        torch.randn(1, 4, 32),
        source_latents=torch.randn(1, 16, 1, 6, 10),
        semantic_tokens=torch.randn(1, 10, 32),
    )
    assert out.sample.shape == (1, 16, 1, 6, 10) and out.semantic.shape == (1, 10, 32)


def test_interrupted_run_resumes_on_s3_through_a_worker_failure(stage0, latents, s3_bucket):
    """Stop after step 3 (checkpoint on S3), rerun: Ray Train resumes from it, a worker dies at
    step 5 and the group restarts from that checkpoint; the losses equal the uninterrupted run's."""
    ref = losses(stage0[0], "stage0")
    out = f"{s3_bucket}/train"
    train(0, latents, out, *STAGE0, "train.debug.stop_after_step=3", "train.export.enabled=false")
    first = losses(out, "stage0")
    assert sorted(first) == [1, 2, 3]
    assert checkpoints.resolve(f"{out}/stage0").endswith("step_00000003")
    train(0, latents, out, *STAGE0, "train.debug.fail_at_step=5", "train.debug.record_fetches=true")
    assert storage.exists(f"{out}/stage0/debug_failed_at_step_5")  # the worker did die once
    # every resume (the rerun at step 3, the restart at step 5) fetched only the rank's own files
    # (ZeRO-2: its optimizer shard + the replicated module file every rank loads)
    for r in range(2):
        got = json.loads(storage.read_text(f"{out}/stage0/debug/resume_rank_{r:05d}.json"))
        assert sorted(got["files"]) == sorted(
            [
                f"ds/zero_pp_rank_{r}_mp_rank_00_optim_states.pt",
                "ds/mp_rank_00_model_states.pt",
                f"ema/rank_{r:05d}.safetensors",
                f"state/rank_{r:05d}.pt",
                "meta.json",
                "model_config.json",
            ]
        )
    got = losses(out, "stage0")
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        for k in ("loss", "loss_fm", "loss_sa", "lr"):
            a, b = got[step][k], ref[step][k]
            assert (a != a and b != b) or a == pytest.approx(b, rel=1e-6, abs=1e-7), (step, k, a, b)
    # the exported EMA equals the uninterrupted run's
    ema_ref, ema = (
        checkpoints.ema_weights(checkpoints.resolve(f"{stage0[0]}/stage0")),
        checkpoints.ema_weights(checkpoints.resolve(f"{out}/stage0")),
    )
    for k in ema_ref:
        torch.testing.assert_close(ema[k], ema_ref[k], rtol=1e-6, atol=1e-7)
    assert storage.list_files(f"{out}/export/transformer")


def test_sequence_parallel_run_matches_one_worker(latents, tmp_path):
    """Stage 1 (video edits: the longest in-context sequences) on 2 workers that form one Ulysses
    group follows, step by step, the same run on one worker: same batches, same noise, and the
    group's gradient shares add up to the whole."""
    common = ["train.steps=3", "train.checkpoint.every=3", "train.export.enabled=false", "train.init_from=null"]
    one = str(tmp_path / "one")
    train(1, latents, one, *common, "train.workers.num_workers=1")
    two = str(tmp_path / "sp2")
    train(1, latents, two, *common, "train.workers.num_workers=2", "train.engine.sequence_parallel=2")
    m1, m2 = losses(one, "stage1"), losses(two, "stage1")
    assert sorted(m1) == sorted(m2) == [1, 2, 3]
    for step in m1:
        for k in ("loss_fm", "loss_sa", "grad_norm"):
            assert m2[step][k] == pytest.approx(m1[step][k], rel=1e-4), (step, k)
        assert m2[step]["samples_per_s"] > 0


ZERO3 = [
    "train.engine.zero_stage=3",
    "train.engine.precision=bf16",
    "train.engine.grad_accum=2",
    "train.data.video_batch=4",
    "train.data.image_batch=4",
    "train.init_from=null",
    "train.checkpoint.every=2",
]


def test_bf16_zero3_accumulation_then_a_same_layout_init_reads_only_rank_files(latents, tmp_path):
    """bf16 on CPU with gradient accumulation under ZeRO-3: the modules diffusers keeps in fp32
    stay fp32 (outside DeepSpeed); the streamed export equals the gathered EMA bit for bit; and
    stage 1 started from that checkpoint (same world size, stage, precision) fetches only each
    rank's own files and starts exactly from its weights."""
    from safetensors.torch import load_file

    from sama.models.tiny import tiny_transformer
    from sama.pipelines.train.weights import fp32_kept_names
    from sama.training.ema import assemble

    out_a = str(tmp_path / "a")
    train(1, latents, out_a, *ZERO3, "train.steps=2")
    m = losses(out_a, "stage1")
    assert sorted(m) == [1, 2] and all(v["loss"] == v["loss"] for v in m.values())
    assert m[2]["lr"] == pytest.approx(5e-4)  # warmup of 2 optimizer steps: the schedule moves once per step
    ckpt = checkpoints.resolve(f"{out_a}/stage1")
    meta = checkpoints.read_meta(ckpt)
    assert (meta["world_size"], meta["zero_stage"], meta["precision"]) == (2, 3, "bf16")
    kept = checkpoints.fp32_params(ckpt)["params"]
    assert sorted(kept) == sorted(fp32_kept_names(tiny_transformer())) and kept
    assert {t.dtype for t in kept.values()} == {torch.float32}

    # the streamed export == the EMA gathered in memory, bit for bit
    shards = []
    for r in range(2):
        path = storage.join(ckpt, checkpoints.rank_file("ema", r))
        from sama.tensorfiles import safetensors_header

        layout = json.loads(safetensors_header(path)[1]["sama_ema"])
        shards.append({**layout, "shadow": load_file(path)})
    gathered = assemble(shards)
    exported = load_file(f"{out_a}/export/transformer/diffusion_pytorch_model.safetensors")
    assert exported.keys() == gathered.keys()
    for k in gathered:
        assert torch.equal(exported[k], gathered[k]), k

    # stage 1 again from that checkpoint with LR 0: every rank reads only its own files
    out_b = str(tmp_path / "b")
    train(
        1,
        latents,
        out_b,
        *ZERO3,
        f"train.init_from={out_a}/stage1",
        "train.steps=1",
        "train.optim.lr=0.0",
        "train.debug.record_fetches=true",
        "train.export.enabled=false",
    )
    for r in range(2):
        got = json.loads(storage.read_text(f"{out_b}/stage1/debug/init_rank_{r:05d}.json"))
        assert got["checkpoint"] == ckpt
        assert sorted(got["files"]) == sorted(
            [
                "ds/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt".format(r=r),
                "ds/zero_pp_rank_{r}_mp_rank_00_model_states.pt".format(r=r),
                f"ema/rank_{r:05d}.safetensors",
                "fp32/params.pt",
                "meta.json",
                "model_config.json",
            ]
        )
    # ... and starts from its weights (LR 0 keeps them): stage 1's raw weights are stage 0's
    before, after = checkpoints.raw_weights(ckpt), checkpoints.raw_weights(checkpoints.resolve(f"{out_b}/stage1"))
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_a_stalled_rank_fails_the_run_with_a_readable_timeout(latents, tmp_path):
    with pytest.raises(Exception) as err:
        train(
            0,
            latents,
            str(tmp_path / "t"),
            "train.steps=3",
            "train.debug.stall_at_step=2",
            "train.engine.collective_timeout_s=8",
            "train.checkpoint.max_failures=0",
            "train.export.enabled=false",
        )
    assert "train.engine.collective_timeout_s" in str(err.value)
