"""How the processes of one editor share an edit: CFG parallelism across groups, Ulysses inside.

A 14B edit at 480p x 49 frames is 40k tokens and 2-3 guidance branches per step: one GPU
spends ~8 minutes on it. With W processes (one GPU each) split as ``cfg`` groups of
``W / cfg`` ranks:

- the guidance branches of a step (text, null, and the source-free one of dual CFG) are
  dealt round robin over the ``cfg`` groups, each group evaluates its own, and one
  all-gather over the ranks that hold the same slice hands every rank all the velocities
  (xDiT's CFG parallelism: no communication inside a forward);
- inside a group, the ranks split the in-context sequence (``sama.models.sequence_parallel``,
  the training's Ulysses), so a forward's work falls by the group size.

Every rank runs the same pipeline call on the same inputs, sees the same velocities and so
steps the same latents: decisions taken on them (the step cache) agree without messages.
What only one rank knows, a cancelled request, is agreed on once per step (``agree``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from sama.models.sequence_parallel import SequenceParallel


@dataclass(frozen=True)
class EditParallel:
    cfg_world: int = 1  # groups that split the guidance branches
    cfg_rank: int = 0  # this process's group
    cfg_group: Optional[dist.ProcessGroup] = None  # the ranks holding the same sequence slice, one per group
    sp: Optional[SequenceParallel] = None  # this group's sequence split (None: one rank per group)

    @classmethod
    def build(cls, cfg_degree: int) -> "EditParallel":
        """The layout over the default process group: ``cfg_degree`` groups of consecutive ranks.
        Collective: every rank calls it, in the same order as its other ``new_group`` calls."""
        world, rank = dist.get_world_size(), dist.get_rank()
        if cfg_degree < 1 or world % cfg_degree:
            raise ValueError(f"cfg_degree {cfg_degree} must divide the {world} processes of the editor")
        sp_degree = world // cfg_degree
        c, s = divmod(rank, sp_degree)
        sp = cfg_group = None
        if sp_degree > 1:  # every rank makes every group, members or not
            sp_groups = [dist.new_group(list(range(g * sp_degree, (g + 1) * sp_degree))) for g in range(cfg_degree)]
            sp = SequenceParallel(sp_groups[c])
        if cfg_degree > 1:
            cfg_groups = [dist.new_group(list(range(i, world, sp_degree))) for i in range(sp_degree)]
            cfg_group = cfg_groups[s]
        return cls(cfg_degree, c, cfg_group, sp)

    def mine(self, n: int) -> list[int]:
        """The branches (of ``n``) this group evaluates; without guidance (one branch) every group
        runs it, so the groups idle-duplicate rather than wait on each other."""
        return list(range(self.cfg_rank, n, self.cfg_world)) if n > 1 else [0]

    def exchange(self, mine: list[torch.Tensor], n: int) -> list[torch.Tensor]:
        """Every branch's tensor from each group's own (``mine``, in ``self.mine(n)`` order)."""
        if n == 1 or self.cfg_world == 1:
            return mine
        per = -(-n // self.cfg_world)
        stacked = torch.stack(mine + [torch.zeros_like(mine[0])] * (per - len(mine)))
        parts = [torch.empty_like(stacked) for _ in range(self.cfg_world)]
        dist.all_gather(parts, stacked.contiguous(), group=self.cfg_group)
        return [parts[j % self.cfg_world][j // self.cfg_world] for j in range(n)]

    @staticmethod
    def agree(flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any (e.g. the request was cancelled at rank 0)."""
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def layout(processes: int, cfg_parallel: bool) -> int:
    """The CFG degree for ``processes`` per editor: 2 when asked for and it divides them (text
    CFG has two branches), else 1 (all of them split the sequence)."""
    return 2 if cfg_parallel and processes >= 2 and processes % 2 == 0 else 1
