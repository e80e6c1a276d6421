"""One packed all-reduce for every metric and every control flag.

A sync point adds, over all ranks, a single float64 vector laid out as
``[sum_1 … sum_M, count_1 … count_M, flag_1 … flag_F]``.  Sums and counts
give global sample-weighted means; flags are 0/1 per rank, so a total above
zero means "some rank raised it".  All ranks learn everything at the same
step with one collective, whatever the number of metrics.  float64 keeps
counts exact and long sums stable; NCCL and gloo both reduce it.

This is a collective: every rank must call :meth:`PackedReducer.reduce` at
the same steps (sync points are chosen from the step count only).
"""

from __future__ import annotations

import dataclasses
import enum

import torch
import torch.distributed as dist

from drytorch.distributed import ranks

__all__ = ['Flag', 'PackedReducer', 'Reduced']


class Flag(enum.IntEnum):
    """Control flags that ride in the packed tensor."""

    terminate = 0
    non_finite = 1
    preempt = 2


@dataclasses.dataclass(frozen=True)
class Reduced:
    """Global sums, counts and raised flags after a reduction."""

    sums: list[float]
    counts: list[float]
    flags: frozenset[Flag]
    extras: list[float] = dataclasses.field(default_factory=list)

    def means(self, names: tuple[str, ...]) -> dict[str, float]:
        """Sample-weighted global mean of each metric."""
        return {
            name: (s / c if c else float('nan'))
            for name, s, c in zip(names, self.sums, self.counts, strict=True)
        }


class PackedReducer:
    """Reduces metric sums, counts and flags in one collective.

    Attributes:
        calls: how many reductions ran a collective (tests count them).

    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.calls = 0

    def reduce(
        self,
        sums: torch.Tensor,
        count: int,
        flags: set[Flag],
        extras: tuple[float, ...] = (),
    ) -> Reduced:
        """Global totals; a collective when a process group is up.

        ``extras`` are further numbers to add over ranks in the same
        collective (the loop uses one for its step time).
        """
        m = sums.numel()
        host = [float(count)] * m + [
            1.0 if flag in flags else 0.0 for flag in Flag
        ]
        host += list(extras)
        if not ranks.is_distributed():
            values = sums.tolist() + host
        else:
            packed = torch.cat(
                [
                    sums.detach().to(self.device, torch.float64),
                    torch.tensor(
                        host, dtype=torch.float64, device=self.device
                    ),
                ]
            )
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            self.calls += 1
            values = packed.tolist()
        raised = frozenset(
            flag for flag in Flag if values[2 * m + flag.value] > 0
        )
        return Reduced(
            values[:m], values[m : 2 * m], raised, values[2 * m + len(Flag) :]
        )
