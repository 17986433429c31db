"""Dry runs: resolve, check and size without doing work (meta device, no weights)."""

import pytest

from sama.jobs.cli import main
from sama.jobs.demo import job_yaml
from sama.models.sizing import estimate_memory, meta_transformer
from sama.models.transformer import SamaModelConfig


@pytest.mark.parametrize("arch,billions", [("wan2.1-1.3b", 1.42), ("wan2.1-14b", 14.30)])
def test_meta_model_sizes(arch, billions):
    model, source = meta_transformer(SamaModelConfig(pretrained="s3://offline/never-read"), arch)
    assert all(p.is_meta for p in model.parameters())  # nothing allocated, nothing downloaded
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)
    assert source == f"architecture {arch}"


def test_memory_estimate_by_hand():
    n = 10 * 1024**3  # 10 Gi parameters
    e = estimate_memory(n, world=8, zero_stage=2, bf16=True, ema=True)
    assert e.per_gpu_gb == pytest.approx({"weights": 20, "grads": 20 / 8, "optimizer": 120 / 8, "ema": 40})
    e3 = estimate_memory(n, world=8, zero_stage=3)
    assert e3.total_gb == pytest.approx((20 + 20 + 120 + 40) / 8)


def test_precompute_cluster_recipe_dry_run(capsys):
    assert main(["run", job_yaml("precompute_wan"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "job: precompute" in out and "# dry run: nothing was run" in out
    assert "33600 target tokens" in out  # the largest bucket, 896x448, 81 frames: 21 x 56 x 28
    assert "8..64 actors x 1.0 GPU" in out


@pytest.mark.parametrize("recipe,params", [("train_stage0_wan14b", "14.30 B"), ("train_stage1_wan14b", "14.30 B"),
                                           ("train_stage0_wan1_3b", "1.42 B"), ("train_stage1_wan1_3b", "1.42 B")])
def test_train_cluster_recipes_dry_run(recipe, params, capsys):
    import tracemalloc

    tracemalloc.start()
    assert main(["run", job_yaml(recipe), "--dry-run"]) == 0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = capsys.readouterr().out
    assert f"parameters: {params}" in out and "per GPU with ZeRO-" in out
    assert "global batch 448" in out and "global batch 112" in out  # the paper's batches
    assert peak < 200 * 2**20  # the model was never materialised (14B fp32 would be 57 GB)


def test_train_dry_run_refuses_what_cannot_fit(capsys):
    # 14B without ZeRO sharding on 112 GPUs: ~250 GB of states per GPU
    assert main(["run", job_yaml("train_stage0_wan14b"), "train.engine.zero_stage=0", "--dry-run"]) == 2
    assert "raise engine.zero_stage" in capsys.readouterr().err
    assert main(["run", job_yaml("train_stage0_wan14b"), "train.workers.num_workers=100", "--dry-run"]) == 2
    assert "not divisible by workers.num_workers=100" in capsys.readouterr().err
