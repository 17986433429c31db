"""Ulysses sequence parallelism for the in-context SAMA transformer.

The in-context sequence [source][semantic][target] of a 480p x 81-frame edit is ~65k
tokens on Wan2.1-14B: one GPU's activations do not hold it. With a sequence-parallel
group of P ranks that all work on the same sample:

- the whole sequence (semantic tokens included) is padded to a multiple of P and each
  rank keeps one contiguous slice of S/P tokens, with the matching slices of the RoPE
  tables and the per-token timestep modulation; every per-token layer (norms, FFN,
  modulation, cross-attention to the unsharded text) then runs on the slice alone;
- self-attention is the only place tokens meet: queries, keys and values are swapped
  by one all-to-all from (S/P tokens, all H heads) to (all S tokens, H/P heads), attention
  runs on whole sequences for those heads (the source-attention restriction keeps its
  global indices; padded keys are cut off, so padding changes nothing), and a second
  all-to-all swaps back (DeepSpeed-Ulysses, arXiv:2309.14509);
- after the last block the semantic head and the target read-out (both per token) run
  on each slice, and only their outputs are gathered.

Gradients: the gather's backward hands each rank the gradient of its own slice, and
nothing after the gather has parameters, so a rank's parameter gradients are its tokens'
share of the full gradient; summed over the group they are exactly the unparallel
gradients (tested on 2 gloo processes). Data-parallel training that averages gradients
over all ranks therefore wants the loss scaled by P.

Needs H % P == 0. Communication per block: 4 all-to-alls (q, k, v, out), each moving about
B x S x D / P elements per rank, so the volume per rank falls as the group grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass(frozen=True)
class SequenceParallel:
    """A process group whose ranks share one sample and split its sequence."""

    group: dist.ProcessGroup | None = None  # None: the default (world) group

    @property
    def world(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def padded(self, length: int) -> int:
        return -(-length // self.world) * self.world

    def shard(self, x: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
        """This rank's slice of ``x`` along ``dim`` (``length`` long), padded with zeros to a
        multiple of the group size. Plain slicing: its backward already is the right one."""
        pad = self.padded(length) - length
        if pad:
            spec = [0, 0] * (x.ndim - 1 - dim) + [0, pad]
            x = F.pad(x, spec)
        return x.chunk(self.world, dim=dim)[self.rank]

    def gather(self, x: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
        """The whole sequence from every rank's slice, padding removed."""
        return _Gather.apply(x, dim, self.group).narrow(dim, 0, length)

    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S/P, H, D) -> (B, S, H/P, D)."""
        return _AllToAll.apply(x, 2, 1, self.group)

    def heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H/P, D) -> (B, S/P, H, D)."""
        return _AllToAll.apply(x, 1, 2, self.group)


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    world = dist.get_world_size(group)
    inputs = [c.contiguous() for c in x.chunk(world, dim=scatter_dim)]
    outputs = [torch.empty_like(c) for c in inputs]
    dist.all_to_all(outputs, inputs, group=group)
    return torch.cat(outputs, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank computes the same loss from the gathered sequence: its own slice's
        # gradient is all it needs (a reduce-scatter would count the loss P times).
        world, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(world, dim=ctx.dim)[rank].contiguous(), None, None
