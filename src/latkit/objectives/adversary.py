"""What the adversary minimises (targeted, untargeted) — or how it is replaced (random, none)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from latkit.objectives.forward import group_rows
from latkit.objectives.losses import cross_entropy, unlikelihood


class AdversaryObjective(BaseModel):
    """The adversary's loss on a collated batch of harmful triples.

    - ``targeted`` (Sheshadri et al.): ``toward · CE(harmful) + away · UL(refusal)``
      — make the harmful completion likely and the refusal unlikely.
    - ``untargeted`` (Casper et al.): ``−CE(desirable)`` — maximise the loss of the
      desirable completion (the ``desirable`` group, e.g. the refusal).
    - ``dpo`` (DPO-LAT, Sheshadri et al. §backdoors): DPO with chosen and rejected
      swapped — the adversary prefers the harmful answer over the refusal. Its β,
      loss type and reference come from ``defender.preference`` (the trainer builds
      the objective per batch; see :meth:`latkit.objectives.preference.PreferenceLoss.objective`).
    - ``random`` (RLP): no optimisation; δ is random with norm ε.
    - ``none``: no adversary (RT).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["targeted", "untargeted", "dpo", "random", "none"] = "targeted"
    toward: float = 1.0
    away: float = 1.0
    harmful_group: str = "harmful"
    refusal_group: str = "refusal"
    desirable_group: str = "refusal"

    @property
    def optimised(self) -> bool:
        return self.kind in ("targeted", "untargeted", "dpo")

    def __call__(self, logits, batch: dict, offset: int = 0):
        """Return ``(loss, parts)``; ``parts`` holds detached components for logging."""
        ids, mask = batch["input_ids"], batch["completion_mask"]

        if self.kind == "targeted":
            h = group_rows(batch, self.harmful_group)
            toward = cross_entropy(logits[h], ids[h], mask[h], offset)
            loss, parts = self.toward * toward, {"toward": toward.detach()}
            if self.away:
                r = group_rows(batch, self.refusal_group)
                away = unlikelihood(logits[r], ids[r], mask[r], offset)
                loss = loss + self.away * away
                parts["away"] = away.detach()
            return loss, parts
        if self.kind == "untargeted":
            d = group_rows(batch, self.desirable_group)
            ce = cross_entropy(logits[d], ids[d], mask[d], offset)
            return -ce, {"desirable_ce": ce.detach()}
        if self.kind == "dpo":
            raise ValueError("the dpo objective needs reference log-probs: build it with "
                             "PreferenceLoss.objective(reference) (the trainer does)")
        raise ValueError(f"objective kind {self.kind!r} is not optimised")
