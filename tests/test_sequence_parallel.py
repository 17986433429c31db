"""Ulysses sequence parallelism on 2 CPU processes (gloo): the same outputs and, summed over the
group, the same gradients as the model without it, on an odd-length in-context sequence."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(n_sem: int) -> dict:
    g = torch.Generator().manual_seed(3)
    return dict(
        hidden_states=torch.randn(2, 16, 3, 8, 8, generator=g),
        timestep=torch.tensor([700.0, 250.0]),
        encoder_hidden_states=torch.randn(2, 6, 32, generator=g),
        source_latents=torch.randn(2, 16, 3, 8, 8, generator=g),
        semantic_tokens=torch.randn(2, n_sem, 32, generator=g),
    )


def _run(model, x: dict, mode: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**x, **mode)
    # A loss that weighs every output element differently, so a misplaced token would show.
    w_out = torch.linspace(-1, 1, out.sample.numel()).reshape(out.sample.shape)
    w_sem = torch.linspace(1, 2, out.semantic.numel()).reshape(out.semantic.shape)
    ((out.sample * w_out).sum() + (out.semantic * w_sem).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.sample.detach(), out.semantic.detach(), grads


def _worker(rank: int, port: int, results: str) -> None:
    from sama.models.sequence_parallel import SequenceParallel
    from sama.models.tiny import tiny_transformer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        report = {}
        model = tiny_transformer(seed=0, num_attention_heads=4, attention_head_dim=8).train()
        for name, mode, n_sem in [
            ("restricted+zero-t", dict(source_attention_mask=True, source_timestep="zero"), 5),
            ("full+shared-t", dict(source_attention_mask=False, source_timestep="shared"), 4),
        ]:
            x = _inputs(n_sem)
            model.enable_sequence_parallel(None)
            ref = _run(model, x, mode)
            model.enable_sequence_parallel(SequenceParallel())
            out, sem, grads = _run(model, x, mode)
            for g in grads.values():
                dist.all_reduce(g)  # each rank holds its tokens' share
            report[name] = {
                "length": 48 + 48 + n_sem,
                "out": (out - ref[0]).abs().max().item(),
                "sem": (sem - ref[1]).abs().max().item(),
                "grad": max(
                    ((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() for n, g in ref[2].items()
                ),
                "same_params": sorted(grads) == sorted(ref[2]),
            }
        if rank == 0:
            torch.save(report, results)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ulysses_matches_the_unparallel_model_forward_and_backward(tmp_path):
    results = str(tmp_path / "report.pt")
    mp.start_processes(_worker, args=(_free_port(), results), nprocs=WORLD, start_method="spawn")
    report = torch.load(results)
    assert {r["length"] % WORLD for r in report.values()} == {0, 1}  # with and without padding
    for name, r in report.items():
        assert r["same_params"], name
        assert r["out"] < 1e-5 and r["sem"] < 1e-5, (name, r)
        assert r["grad"] < 1e-4, (name, r)


def test_heads_must_divide_over_the_group():
    from sama.models.tiny import tiny_transformer

    class Three:
        world = 3

    with pytest.raises(ValueError, match="head count \\(2\\) to be a multiple"):
        tiny_transformer(seed=0).enable_sequence_parallel(Three())


def test_shard_pads_to_the_group_and_slices_by_rank(monkeypatch):
    from sama.models import sequence_parallel as S

    monkeypatch.setattr(S.dist, "get_world_size", lambda group=None: 2)
    x = torch.arange(5.0).reshape(1, 5, 1)
    monkeypatch.setattr(S.dist, "get_rank", lambda group=None: 1)
    assert S.SequenceParallel().shard(x, 5).flatten().tolist() == [3.0, 4.0, 0.0]
    monkeypatch.setattr(S.dist, "get_rank", lambda group=None: 0)
    assert S.SequenceParallel().shard(x, 5).flatten().tolist() == [0.0, 1.0, 2.0]
    assert S.SequenceParallel().padded(101) == 102
