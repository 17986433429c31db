"""Training pieces without a cluster: mixing, bucket streams and their resume position,
the derived DeepSpeed config, the sharded EMA, the LR schedule, the per-rank data plan."""

from collections import Counter

import pyarrow as pa
import pytest
import torch

from sama import config as C
from sama import storage
from sama.latents import batch_key
from sama.pipelines.train.config import TrainConfig, TrainJobConfig
from sama.pipelines.train.data import plan_files
from sama.pipelines.train.deepspeed_config import deepspeed_config
from sama.training.ema import ShardedEMA, assemble, deal_by_size
from sama.training.mixing import BucketStream, SourceConfig, passes_needed, pick_source
from sama.training.schedule import LRLambda, ScheduleConfig


def rows(n: int, seed: int = 0) -> list[dict]:
    buckets = ["1x48x80", "1x64x64", "1x80x48"]
    return [
        {
            "sample_id": f"s{i:03d}",
            "task": "image_edit",
            "bucket": buckets[(i * 7 + seed) % 3],
            "src_latent_shape": [16, 1, 6, 10],
        }
        for i in range(n)
    ]


def opener(data: list[dict], passes: int):
    """open_rows for a list: rows of ``passes`` epochs from (epoch, start), annotated like the reader's."""

    def open_rows(epoch: int, start: int):
        for e in range(epoch, epoch + passes):
            for i in range(start if e == epoch else 0, len(data)):
                yield {**data[i], "_e": e, "_i": i}

    return open_rows


def stream(data: list[dict], position=(0, 0), passes=1, seed=0, batch=4) -> BucketStream:
    return BucketStream("img", data, opener(data, passes), batch, seed, rank=0, shuffle_buffer=8, position=position)


def ids(batch: list[dict]) -> list[str]:
    return [r["sample_id"] for r in batch]


def test_mixing_follows_the_weights_and_is_the_same_on_every_rank():
    names, weights = ["image_edit", "t2v"], [0.25, 0.75]
    picks = [pick_source(names, weights, seed=3, step=s) for s in range(1, 4001)]
    share = Counter(picks)["t2v"] / len(picks)
    assert abs(share - 0.75) < 0.03
    assert picks == [pick_source(names, weights, seed=3, step=s) for s in range(1, 4001)]  # any rank, any rerun
    assert picks != [pick_source(names, weights, seed=4, step=s) for s in range(1, 4001)]


def test_bucket_batches_share_one_shape_cover_each_epoch_and_are_deterministic():
    data = rows(30)
    s = stream(data)
    epoch0 = []
    while s.epoch == 0 or s.taken == 0:
        b = next(s)
        if s.epoch > 0:
            break
        assert len({batch_key(r) for r in b}) == 1 and 1 <= len(b) <= 4
        epoch0 += ids(b)
    assert sorted(epoch0) == sorted(r["sample_id"] for r in data)  # every row once per epoch
    assert epoch0 != [r["sample_id"] for r in data]  # shuffled
    a, b = stream(data), stream(data)
    assert [ids(next(a)) for _ in range(25)] == [ids(next(b)) for _ in range(25)]
    other, ref = stream(data, seed=1), stream(data)
    assert [ids(next(other)) for _ in range(8)] != [ids(next(ref)) for _ in range(8)]  # the seed matters
    s = stream(data)
    epochs: dict[int, list[str]] = {}
    for _ in range(40):
        b = next(s)
        epochs.setdefault(s.epoch, []).extend(ids(b))
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])  # each epoch its own shuffle


@pytest.mark.parametrize("passes", [1, 3])
def test_stream_resumes_exactly_from_its_position(passes):
    data = rows(22)
    full = stream(data, passes=passes)
    seen = [ids(next(full)) for _ in range(40)]
    for k in (0, 3, 7, 12, 21):
        ref = stream(data, passes=passes)
        for _ in range(k):
            next(ref)
        resumed = stream(data, position=ref.position, passes=passes)
        assert [ids(next(resumed)) for _ in range(40 - k)] == seen[k:], k


def test_resume_seeks_instead_of_replaying():
    """Resuming deep into an epoch reads the rows still needed, not every row before them."""
    data = rows(400)
    ref = stream(data)
    for _ in range(80):  # ~320 rows into the 400-row epoch
        next(ref)
    assert ref.rows_read >= 300
    resumed = stream(data, position=ref.position)
    nxt = ids(next(resumed))
    assert nxt == ids(next(ref))
    # re-read: the span from the oldest row still waiting (in the shuffle buffer or a partial
    # bucket batch) to the stream's position, not the 300+ rows before it
    assert resumed.rows_read <= 40, resumed.rows_read
    assert [ids(next(resumed)) for _ in range(30)] == [ids(next(ref)) for _ in range(30)]  # into the next epoch


def test_passes_needed():
    assert passes_needed(steps=10_000, share=0.5, batch_per_rank=8, rows_per_epoch=10**7) == 1
    assert passes_needed(steps=8, share=0.5, batch_per_rank=2, rows_per_epoch=4) == 3
    assert passes_needed(steps=10**6, share=1.0, batch_per_rank=8, rows_per_epoch=4) == 16  # capped


def train_cfg(**over) -> TrainConfig:
    data = {
        "train": {
            "data": {
                "sources": [
                    {"name": "i", "uri": "x", "tasks": ["image_edit"]},
                    {"name": "v", "uri": "x", "tasks": ["t2v"]},
                ],
                "image_batch": 448,
                "video_batch": 112,
            },
            **over,
        }
    }
    return C.load(TrainJobConfig, data=data).train


def test_deepspeed_config_is_derived_from_the_typed_config():
    t = train_cfg(
        engine={"zero_stage": 3, "offload_optimizer": True, "extra": {"zero_optimization": {"sub_group_size": 7}}},
        optim={"lr": 3e-4, "grad_clip": 0.5, "betas": [0.9, 0.95]},
        workers={"num_workers": 16},
    )
    gpu = deepspeed_config(t, 16, use_gpu=True)
    assert gpu["bf16"] == {"enabled": True} and gpu["gradient_clipping"] == 0.5
    assert gpu["train_micro_batch_size_per_gpu"] == 28 and gpu["train_batch_size"] == 448
    z = gpu["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["sub_group_size"] == 7
    assert z["stage3_gather_16bit_weights_on_model_save"] is False
    assert gpu["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.01},
    }
    cpu = deepspeed_config(train_cfg(engine={"zero_stage": 2}, workers={"num_workers": 2}), 2, use_gpu=False)
    assert cpu["bf16"] == {"enabled": False} and cpu["optimizer"]["params"]["torch_adam"] is True
    assert cpu["zero_optimization"]["stage"] == 2 and cpu["zero_optimization"]["overlap_comm"] is False
    assert "scheduler" not in cpu  # ours, handed to deepspeed.initialize


def test_gradient_buckets_fit_the_model():
    """A small model's buckets shrink to its size (DeepSpeed allocates them whole every micro
    step); a large model keeps the configured 5e8; ZeRO-3 has no all-gather bucket to add."""
    from sama.pipelines.train.deepspeed_config import fit_buckets

    two = deepspeed_config(train_cfg(engine={"zero_stage": 2}, workers={"num_workers": 2}), 2, use_gpu=False)
    small, large = fit_buckets(two, 1_234_567), fit_buckets(two, 14_000_000_000)
    assert small["zero_optimization"]["reduce_bucket_size"] == 1_234_567
    assert small["zero_optimization"]["allgather_bucket_size"] == 1_234_567
    assert (
        large["zero_optimization"] == two["zero_optimization"] and two["zero_optimization"]["reduce_bucket_size"] == 5e8
    )
    three = deepspeed_config(train_cfg(engine={"zero_stage": 3}, workers={"num_workers": 2}), 2, use_gpu=False)
    assert "allgather_bucket_size" not in fit_buckets(three, 10)["zero_optimization"]
    assert {k: v for k, v in small.items() if k != "zero_optimization"} == {
        k: v for k, v in two.items() if k != "zero_optimization"
    }


def test_config_rejects_bad_values_naming_the_key():
    with pytest.raises(C.ConfigError, match="image_batch=448 is not divisible by workers.num_workers=5"):
        train_cfg(workers={"num_workers": 5})
    with pytest.raises(C.ConfigError, match="zero_stage"):
        train_cfg(engine={"zero_stage": 4})
    with pytest.raises(C.ConfigError, match="mixes image and video"):
        C.load(
            TrainJobConfig,
            data={"train": {"data": {"sources": [{"name": "a", "uri": "x", "tasks": ["image_edit", "t2v"]}]}}},
        )
    with pytest.raises(C.ConfigError, match="unknown key 'train.optim.lrr'"):
        train_cfg(optim={"lrr": 1.0})


def test_lr_schedule_warms_up_then_decays():
    f = LRLambda(ScheduleConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.1), total_steps=14)
    assert [f(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1)
    assert LRLambda(ScheduleConfig(warmup_steps=0), 10)(5) == 1.0


def model_params(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3), torch.nn.LayerNorm(3))


def test_sharded_ema_matches_a_full_ema_replicated_params():
    model = model_params()
    full = {n: p.detach().clone() for n, p in model.named_parameters()}
    shards = [ShardedEMA(model.named_parameters(), 0.9, rank=r, world=2) for r in range(2)]
    assert not set(shards[0].shadow) & set(shards[1].shadow)  # each parameter on one rank
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        for s in shards:
            s.update()
        for n, p in model.named_parameters():
            full[n] = 0.9 * full[n] + 0.1 * p.detach()
    got = assemble([s.state_dict() for s in shards])
    assert got.keys() == full.keys()
    for n in full:
        torch.testing.assert_close(got[n], full[n])


def test_sharded_ema_on_zero3_partitions_drops_the_padding():
    weights = {"a": torch.arange(5.0), "b": torch.arange(6.0).view(2, 3)}
    shards = []
    for rank in range(2):
        params = []
        for n, w in weights.items():
            p = torch.nn.Parameter(torch.empty(0))
            size = -(-w.numel() // 2)
            flat = torch.cat([w.flatten(), torch.zeros(2 * size - w.numel())])
            p.ds_tensor, p.ds_shape = flat[rank * size : (rank + 1) * size].clone(), w.shape
            params.append((n, p))
        ema = ShardedEMA(params, 0.5, rank=rank, world=2)
        assert ema.partitioned
        shards.append(ema.state_dict())
    got = assemble(shards)
    for n, w in weights.items():
        torch.testing.assert_close(got[n], w)
    # and back: a full state dict loads into the partitions (stage 1 starting from stage 0's EMA)
    ema = ShardedEMA(params, 0.5, rank=1, world=2)
    ema.load_full({n: w * 2 for n, w in weights.items()})
    torch.testing.assert_close(ema.shadow["a"], torch.tensor([6.0, 8.0, 0.0]))


def test_deal_by_size_balances():
    owner = deal_by_size([10, 1, 1, 8, 2], 2)
    load = [sum(s for s, o in zip([10, 1, 1, 8, 2], owner) if o == r) for r in range(2)]
    assert sorted(load) == [11, 11]


def test_data_plan_gives_every_rank_its_own_files(tmp_path):
    def shard(name, tasks):
        table = pa.table(
            {
                "task": tasks,
                "bucket": ["1x4x4"] * len(tasks),
                "src_latent_shape": [[1]] * len(tasks),
                "sample_id": [f"{name}{i}" for i in range(len(tasks))],
            }
        )
        storage.write_parquet(str(tmp_path / "latents" / f"{name}.parquet"), table)

    shard("a", ["image_edit"] * 3)
    shard("b", ["image_edit", "t2v"])
    shard("c", ["t2v"] * 2)
    shard("d", ["image_edit"] * 2)
    uri = str(tmp_path / "latents")
    srcs = [SourceConfig("img", uri, ["image_edit"]), SourceConfig("vid", uri, ["t2v"])]
    plan = plan_files(srcs, world=2, steps=10, batch_per_rank={"img": 2, "vid": 1})
    img = plan["img"]
    assert sorted(f for r in img for f in r.files) == sorted(str(tmp_path / "latents" / f"{x}.parquet") for x in "abd")
    assert sorted(r.rows for r in img) == [3, 3] and all(r.passes >= 1 for r in img)
    assert not set(img[0].files) & set(img[1].files)
    assert sorted(r.rows for r in plan["vid"]) == [1, 2]
    # fewer files than workers: split by rows, every rank keeps every world-th matching row
    with pytest.raises(ValueError, match="every worker needs at least one"):
        plan_files(srcs, world=4, steps=10, batch_per_rank={"img": 2, "vid": 1})
    split = plan_files([srcs[1]], world=3, steps=10, batch_per_rank={"vid": 1})["vid"]
    assert [r.rows for r in split] == [1, 1, 1] and all(r.offsets == [0, 1] for r in split)
    from sama.pipelines.train.data import rank_index
    from sama.pipelines.train.reading import read_row_groups

    got = []
    for r in split:
        _, groups = rank_index(r, ["t2v"])
        items = pa.table(
            {
                "path": [g[0] for g in groups],
                "row_group": [g[1] for g in groups],
                "rows": [g[2] for g in groups],
                "first": [g[3] for g in groups],
                "epoch": [0] * len(groups),
            }
        )
        got.append(read_row_groups(items)["sample_id"].to_pylist())
    assert sorted(sum(got, [])) == ["b1", "c0", "c1"] and all(len(g) == 1 for g in got)


def test_sequence_parallel_config_checks_groups_heads_and_batches(capsys):
    from sama.jobs.cli import main
    from sama.jobs.demo import job_yaml
    from sama.pipelines.train.deepspeed_config import deepspeed_config

    y = job_yaml("train_stage1_wan14b")
    assert (
        main(
            [
                "run",
                "--dry-run",
                y,
                "train.engine.sequence_parallel=4",
                "train.workers.num_workers=448",
                "train.engine.grad_accum=1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "video steps: global batch 112 = 1 per group x 112 data-parallel group(s) of 4 sequence-parallel ranks" in out
    )
    assert (
        main(
            [
                "run",
                "--dry-run",
                y,
                "train.engine.sequence_parallel=3",
                "train.workers.num_workers=336",
                "train.engine.grad_accum=1",
            ]
        )
        == 2
    )
    assert "sequence_parallel=3 must divide the model's 40 attention heads" in capsys.readouterr().err
    assert main(["run", "--dry-run", y, "train.engine.sequence_parallel=5", "train.workers.num_workers=112"]) == 2
    assert "num_workers=112 is not divisible by engine.sequence_parallel=5" in capsys.readouterr().err
    assert main(["run", "--dry-run", y, "train.engine.sequence_parallel=2", "train.workers.num_workers=6"]) == 2
    assert "image_batch=448 is not divisible by the 3 data-parallel groups" in capsys.readouterr().err

    from sama.jobs.launcher import resolve

    cfg, _ = resolve(
        y, ["train.engine.sequence_parallel=2", "train.workers.num_workers=224", "train.engine.grad_accum=1"]
    )
    ds = deepspeed_config(cfg.train, 224, use_gpu=True)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["train_batch_size"] == 4 * 224  # 448 images / 112 groups
    # the shipped recipe: 56 groups x 2 micro-batches of 4 images
    cfg, _ = resolve(y, [])
    ds = deepspeed_config(cfg.train, 112, use_gpu=True)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (4, 2)
    assert ds["train_batch_size"] == 4 * 2 * 112


def test_ema_shard_files_rebuild_any_parameter_and_any_rank_slice(tmp_path):
    """Shards written by 2 ranks (ZeRO-3 partitions + replicated parameters dealt by size) rebuild
    every full parameter, and a 3-rank run reads only the slices it keeps (byte ranges)."""
    from sama.training.ema import EmaShards

    weights = {
        "a": torch.arange(7.0),
        "b": torch.arange(6.0).view(2, 3),
        "c": torch.arange(4.0) + 10,
        "d": torch.arange(5.0) - 3,
    }
    partitioned = {"a", "b"}

    def params_of(rank, world):
        out = []
        for n, w in weights.items():
            if n in partitioned:
                p = torch.nn.Parameter(torch.empty(0))
                size = -(-w.numel() // world)
                flat = torch.cat([w.flatten(), torch.zeros(world * size - w.numel())])
                p.ds_tensor, p.ds_shape = flat[rank * size : (rank + 1) * size].clone(), w.shape
            else:
                p = torch.nn.Parameter(w.clone())
            out.append((n, p))
        return out

    files = []
    for rank in range(2):
        ema = ShardedEMA(params_of(rank, 2), 0.5, rank=rank, world=2)
        assert ema.partitioned == partitioned
        path = str(tmp_path / f"rank_{rank}.safetensors")
        ema.save(path)
        files.append(path)
        again = ShardedEMA(params_of(rank, 2), 0.5, rank=rank, world=2)
        with torch.no_grad():
            for t in again.shadow.values():
                t.zero_()
        again.load(path)
        for n in ema.shadow:
            assert torch.equal(again.shadow[n], ema.shadow[n])
    shards = EmaShards(files[::-1])  # any order
    for n, w in weights.items():
        torch.testing.assert_close(shards[n], w)
    assert torch.equal(shards.flat_range("a", 2, 6), torch.tensor([2.0, 3, 4, 5]))
    # a 3-rank ZeRO-3 run starting from these shards keeps exactly its slice of each parameter
    for rank in range(3):
        target = ShardedEMA(params_of(rank, 3), 0.5, rank=rank, world=3)
        target.load_full(shards)
        for n, p in target.params.items():
            expected = p.ds_tensor if n in partitioned else weights[n]
            torch.testing.assert_close(target.shadow[n], expected.float(), msg=n)
    shards.close()


def test_rank_index_reads_light_columns_and_locates_row_groups(tmp_path):
    """A rank's epoch in stream order: matching rows only, their row groups, and the row-split
    fallback's share; what row_opener reads from any stream index."""
    from sama.pipelines.train.data import RankData, rank_index
    from sama.pipelines.train.reading import read_row_groups

    def shard(name, tasks):
        table = pa.table(
            {
                "task": tasks,
                "bucket": ["1x4x4"] * len(tasks),
                "src_latent_shape": [[16, 1, 1, 1]] * len(tasks),
                "sample_id": [f"{name}{i}" for i in range(len(tasks))],
            }
        )
        path = str(tmp_path / f"{name}.parquet")
        storage.write_parquet(path, table, row_group_size=2)
        return path

    a = shard("a", ["image_edit", "t2v", "image_edit", "image_edit", "t2v"])  # row groups [0,1] [2,3] [4]
    b = shard("b", ["image_edit", "image_edit"])
    records, groups = rank_index(RankData([a, b], rows=5, passes=1), ["image_edit"])
    assert len(records) == 5 and records[0] == {
        "task": "image_edit",
        "bucket": "1x4x4",
        "src_latent_shape": [16, 1, 1, 1],
    }
    assert groups == [(a, 0, [0], 0), (a, 1, [0, 1], 1), (b, 0, [0, 1], 3)]
    # reading a group returns its rows, numbered within the epoch
    t = read_row_groups(pa.table({"path": [a], "row_group": [1], "rows": [[1]], "first": [2], "epoch": [3]}))
    assert t["sample_id"].to_pylist() == ["a3"] and t["_i"].to_pylist() == [2] and t["_e"].to_pylist() == [3]
    # row-split fallback: rank 1 of 2 keeps every other matching row
    records, groups = rank_index(RankData([a, b], rows=2, passes=1, offsets=[0, 3], world=2, rank=1), ["image_edit"])
    assert groups == [(a, 1, [0], 0), (b, 0, [0], 1)]  # matching rows #1 (a2) and #3 (b0)


def test_rows_read_in_the_worker_are_the_ray_data_streams_rows(ray_cluster, tmp_path):
    """``data.read_in_worker`` swaps the per-rank Ray Data pipeline for plain reads in the worker:
    the same rows in the same order, numbered alike, from any epoch and position (a resume)."""
    from sama.pipelines.train.data import row_opener

    table = pa.table({"sample_id": [f"s{i}" for i in range(7)], "x": list(range(7))})
    path = str(tmp_path / "s.parquet")
    storage.write_parquet(path, table, row_group_size=3)  # row groups [0..2] [3..5] [6]
    groups = [(path, 0, [0, 2], 0), (path, 1, [0, 1, 2], 2), (path, 2, [0], 5)]
    keys = ("sample_id", "_e", "_i")
    for epoch, start in ((0, 0), (1, 3)):
        streamed = [tuple(r[k] for k in keys) for r in row_opener(groups, 2, 0.25)(epoch, start)]
        local = [tuple(r[k] for k in keys) for r in row_opener(groups, 2, 0.25, in_worker=True)(epoch, start)]
        assert local == streamed and len(local) == 12 - start
    assert local[0] == ("s4", 1, 3)  # epoch 1 from its 4th row: the second row group's second row


def test_what_ray_unpickles_outside_the_workers_does_not_import_torch():
    """Ray Train's controller unpickles the worker function and its config, and Ray Data's read
    tasks run the row reader in fresh processes: importing torch, DeepSpeed and diffusers there
    cost every run ~10 s of start-up on 2 cores."""
    import subprocess
    import sys

    from ray import cloudpickle

    from sama.pipelines.train.entry import pack, train_fn
    from sama.pipelines.train.reading import read_row_groups

    packed = pack({"train": TrainConfig(), "output": "/tmp/x", "plan": {}})
    blob = cloudpickle.dumps((train_fn, packed, read_row_groups))
    code = (
        "import sys; from ray import cloudpickle; cloudpickle.loads(sys.stdin.buffer.read()); "
        "print(sorted(m for m in ('torch', 'deepspeed', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120, check=True)
    assert out.stdout.decode().strip() == "[]"
    # ... and the worker gets the config back whole
    assert cloudpickle.loads(packed["packed"])["train"] == TrainConfig()


def test_cpu_training_starts_deepspeed_without_building_its_shared_memory_kernel(tmp_path):
    """On CPUs DeepSpeed would JIT-compile its shm all-reduce op (minutes on a fresh machine) that
    training never uses: the communication comes up on gloo with nothing built."""
    import os
    import subprocess
    import sys

    script = (
        "import os, torch.distributed as dist\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/pg', rank=0, world_size=1)\n"
        "from sama.pipelines.train.loop import init_distributed\n"
        "init_distributed(use_gpu=False)\n"
        "from deepspeed import comm\n"
        "assert comm.comm.cdb.shm_comm_op is None and comm.get_world_size() == 1\n"
        "print('up on', dist.get_backend())\n"
    )
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
    }
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "up on gloo" in res.stdout, res.stderr[-2000:]
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").rglob("*.so"))
