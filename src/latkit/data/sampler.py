"""A deterministic, resumable, rank-sharded stream of example indices."""
from __future__ import annotations

import torch


class IndexStream:
    """Infinite stream over ``n`` examples, reshuffled every epoch from ``seed``.

    Global batch ``k`` is stream positions ``[k·B·W, (k+1)·B·W)``; rank ``r`` of
    ``W`` takes its contiguous ``B``. The only state is ``consumed`` (global
    batches taken), so resuming is exact.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.consumed = 0
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def next(self) -> list[int]:
        start = (self.consumed * self.world + self.rank) * self.batch_size
        self.consumed += 1
        out = []
        for p in range(start, start + self.batch_size):
            out.append(int(self._perm(p // self.n)[p % self.n]))
        return out

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
