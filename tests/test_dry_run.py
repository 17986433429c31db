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
