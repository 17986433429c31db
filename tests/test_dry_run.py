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
    assert e.per_gpu_gb == pytest.approx({"weights": 20, "grads": 20 / 8, "optimizer": 120 / 8, "ema": 40 / 8})
    e3 = estimate_memory(n, world=8, zero_stage=3)
    assert e3.total_gb == pytest.approx((20 + 20 + 120 + 40) / 8)


def test_precompute_cluster_recipe_dry_run(capsys):
    assert main(["run", job_yaml("precompute_wan"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "job: precompute" in out and "# dry run: nothing was run" in out
    assert "33600 target tokens" in out  # the largest bucket, 896x448, 81 frames: 21 x 56 x 28
    assert "8..64 actors x 1.0 GPU" in out


@pytest.mark.parametrize(
    "recipe,params",
    [
        ("train_stage0_wan14b", "14.30 B"),
        ("train_stage1_wan14b", "14.30 B"),
        ("train_stage0_wan1_3b", "1.42 B"),
        ("train_stage1_wan1_3b", "1.42 B"),
    ],
)
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
    assert "not divisible by the 50 data-parallel groups (workers.num_workers=100" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recipe", ["train_stage0_wan14b", "train_stage1_wan14b", "train_stage0_wan1_3b", "train_stage1_wan1_3b"]
)
@pytest.mark.parametrize("cluster", ["infra/kuberay/raycluster.yaml", "infra/cluster-launcher/aws.yaml"])
def test_shipped_recipes_fit_h100_and_h200_and_place_on_the_shipped_clusters(recipe, cluster, capsys):
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert main(["run", job_yaml(recipe), "--dry-run", "--cluster", os.path.join(repo, cluster)]) == 0
    out = capsys.readouterr().out
    assert "H100 79.6: fits | H200 140.4: fits" in out
    assert "tokens per sample at the largest bucket (800x512, 81 frames): video 67,265" in out
    assert "cluster group gpu:" in out and "host RAM per worker" in out and "local disk per worker" in out


def test_dry_run_refuses_what_does_not_fit_or_place(tmp_path, capsys):
    y = job_yaml("train_stage0_wan1_3b")
    # 7 videos per GPU per micro-batch (no accumulation): ~470k tokens, over 100 GiB
    assert main(["run", y, "train.engine.grad_accum=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "more than a H100's 79.6" in err and "470,855 tokens" in err
    # the 14B without activation checkpointing
    assert (
        main(["run", job_yaml("train_stage0_wan14b"), "train.engine.activation_checkpointing=false", "--dry-run"]) == 2
    )
    assert "enable engine.activation_checkpointing" in capsys.readouterr().err
    # the old per-worker ask (12 CPU, 200 GiB) cannot be placed on 64-CPU / 512 GiB pods
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert (
        main(
            [
                "run",
                job_yaml("train_stage0_wan14b"),
                "train.workers.cpus_per_worker=12",
                "train.workers.memory_per_worker_gb=200",
                "--dry-run",
                "--cluster",
                os.path.join(repo, "infra/kuberay/raycluster.yaml"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot be placed" in err and "104 CPU > 64" in err and "1600 GiB > 358" in err
    # a cluster file that is neither kind
    bad = tmp_path / "x.yaml"
    bad.write_text("kind: Deployment\n")
    assert main(["run", y, "--dry-run", "--cluster", str(bad)]) == 2
    assert "neither a KubeRay RayCluster nor a Ray cluster launcher file" in capsys.readouterr().err
    assert main(["run", job_yaml("ingest"), "--dry-run", "--cluster", str(bad)]) == 2
