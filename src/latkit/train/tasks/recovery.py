"""Refusal training with safety-recovery augmentation: the jailbreak task whose refusal rows follow a
random-length prefix of the harmful answer (see :mod:`latkit.train.recovery`)."""
from __future__ import annotations

import torch

from latkit.data.recovery import prefix_refusals
from latkit.train.tasks.base import MicroBatch, TaskContext
from latkit.train.tasks.jailbreak import JailbreakTask


class RecoveryTask(JailbreakTask):
    """Harmful batches as :class:`JailbreakTask`'s, each refusal row rewritten by
    :func:`~latkit.data.recovery.prefix_refusals`; the draws are a function of the seed and how many
    batches came before (the checkpointed state), so a resumed run draws the same prefixes."""

    def __init__(self, recipe):
        super().__init__(recipe)
        self.settings = recipe.recovery
        self.draws = 0

    def start(self, ctx: TaskContext) -> None:
        super().start(ctx)
        self._rank, self._pad = ctx.rank, self.harmful_collate.pad_id

    def prefix_lengths(self, batch: dict) -> list[int]:
        """How many harmful tokens each example's refusal follows (0: none) for the next batch."""
        s = self.settings
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + self.draws * 7_919 + self._rank)
        self.draws += 1
        B = batch["input_ids"].shape[0] // len(batch["groups"])
        chosen = torch.rand(B, generator=g) < s.probability
        lengths = torch.randint(1, s.max_prefix_tokens + 1, (B,), generator=g)
        return [int(n) if c else 0 for c, n in zip(chosen, lengths)]

    def micro_batches(self, ctx: TaskContext, model, step: int, stats: dict) -> list[MicroBatch]:
        out = []
        micro = super().micro_batches(ctx, model, step, stats)
        for hb, bb in micro:
            if hb is not None:
                hb = prefix_refusals(hb, self.prefix_lengths(hb), self._pad, self.recipe.data.padding_side)
                used = hb.pop("prefix_lengths")
                stats["recovery/prefixed"] = stats.get("recovery/prefixed", 0.0) + (
                    sum(1 for n in used if n) / len(used) / len(micro))
            out.append((hb, bb))
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "recovery_draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.draws = int(state.get("recovery_draws", 0))
